"""Decoding only the top rows of a baseline JPEG, by lowering the frame height in its header.

Why: the dataset canvas (KITTI's 352x1216, aspect 3.5) keeps a centred band of an ordinary photo: 39 % of the
rows of a 4:3 photo, 43 % of a 3:2 one. A sequential JPEG codes its rows top to bottom in one scan, so a
decoder told that the frame ends below the band stops there: the rows under it are never entropy-decoded,
inverse-transformed or colour-converted (measured on 1167x905 photos: 3.7-3.9 ms instead of 4.9-6.0 ms per
decode). Rows above the band must still be decoded (each block's DC value is coded as a difference from the
previous one), so this saves the bottom part only.

The rows kept are bit-identical to a full decode's: the last two MCU rows above the new bottom edge are kept
as a margin, because chroma upsampling looks one chroma row past a row (tests/test_images.py compares against
full decodes for every subsampling, orientation and DCT scale). Only single-scan sequential frames qualify
(SOF0/SOF1 whose first scan holds every component): a progressive or multi-scan frame codes every row in each
scan, so a lower height would misread the later scans.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

_SOF_SEQUENTIAL = (0xC0, 0xC1)
_SOF_OTHER = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field (TEM, RSTn)


@dataclass(frozen=True)
class SequentialFrame:
    """What row cropping needs from a single-scan sequential JPEG's header."""

    height_offset: int  # byte offset of the frame header's 16-bit height
    height: int
    mcu_rows: int  # pixel rows per MCU row (8 x the largest vertical sampling factor)
    scan_start: int  # byte offset of the entropy-coded data of the (only) scan


def sequential_frame(data: bytes) -> SequentialFrame | None:
    """The header facts of a single-scan sequential JPEG; None for anything else (progressive, lossless,
    arithmetic-coded, multi-scan, a height defined later by DNL, or a header that does not parse)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    frame: tuple[int, int, int, int] | None = None  # (height offset, height, components, mcu rows)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2 or i + 2 + length > n:
            return None
        if marker in _SOF_OTHER:
            return None
        if marker in _SOF_SEQUENTIAL:
            if length < 8:
                return None
            height = struct.unpack_from(">H", data, i + 5)[0]
            components = data[i + 9]
            if height == 0 or components == 0 or length < 8 + 3 * components:
                return None
            v_max = max(data[i + 10 + 3 * c + 1] & 0x0F for c in range(components))
            frame = (i + 5, height, components, 8 * max(1, v_max))
        if marker == 0xDA:  # start of scan: the header ends here
            if frame is None or data[i + 4] != frame[2]:
                return None  # no frame header, or a scan without every component (a multi-scan frame)
            return SequentialFrame(height_offset=frame[0], height=frame[1], mcu_rows=frame[3],
                                   scan_start=i + 2 + length)
        i += 2 + length
    return None


def rows_kept(frame: SequentialFrame, last_row: int) -> int:
    """Frame height that still decodes stored rows [0, last_row) exactly as a full decode does: rounded up
    to a whole MCU row, plus a margin of two MCU rows for the chroma upsampling context."""
    rows = -(-last_row // frame.mcu_rows) * frame.mcu_rows + 2 * frame.mcu_rows
    return min(frame.height, rows)


def with_height(data: bytes, frame: SequentialFrame, rows: int) -> bytes:
    """The same JPEG with its frame height set to ``rows``: a decoder stops after that many rows."""
    if not 0 < rows <= frame.height:
        raise ValueError(f"rows must be in 1..{frame.height}, got {rows}")
    o = frame.height_offset
    return b"".join((data[:o], struct.pack(">H", rows), data[o + 2:]))


def has_end_of_image(data: bytes, frame: SequentialFrame) -> bool:
    """Whether the scan is followed by an EOI marker. Inside entropy-coded data a 0xFF byte is always followed
    by 0x00 or a restart marker, so 0xFFD9 after the scan start is the end of the image: a file cut short
    (the common damage) has none. A decoder that stops early never reaches the cut, so it is checked here."""
    return data.find(b"\xff\xd9", frame.scan_start) >= 0
