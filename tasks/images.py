"""Input photos: load + validate to uint8 RGB, fit to the dataset canvas, canvas intrinsics.

Every rejection is an ``InputError`` whose one-line message names the file and the reason, so the build
flow can quarantine the sample and report why.
"""
from __future__ import annotations

import contextlib
import io
import math
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.errors import InputError
from tasks.jpeg_rows import has_end_of_image, rows_kept, sequential_frame, with_height

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow modes that hold more than 8 bits per sample (single channel); DMD3C's teacher wants 8-bit RGB.
HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "F"}
GRAY_MODES = {"1", "L", "LA", "La"}


_CV2_LOCK = threading.Lock()
_cv2_users = 0
_cv2_threads_before = 0


@contextlib.contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """Run OpenCV on one thread while the caller's own threads or processes are the parallelism (the build's
    teacher-decoding threads, shard tasks running in threads).

    Why: each resize would otherwise fan out to OpenCV's pool of one thread per core, from every calling thread
    at once; measured on 2 cores, two threads decoding photos to the teacher's 196x672: 4.63 against 5.26 ms
    of CPU per image (medians of 4 alternating runs). OpenCV's thread count is one setting per process, so this
    is reference-counted: concurrent and nested users share it, and the last one to leave restores the value
    found by the first.
    """
    import cv2

    global _cv2_users, _cv2_threads_before
    with _CV2_LOCK:
        if _cv2_users == 0:
            _cv2_threads_before = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv2_users += 1
    try:
        yield
    finally:
        with _CV2_LOCK:
            _cv2_users -= 1
            if _cv2_users == 0:
                cv2.setNumThreads(_cv2_threads_before)


def _read(path_or_bytes: str | Path | bytes | bytearray | memoryview, name: str) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), name or "<bytes>"
    path = Path(path_or_bytes)
    label = name or str(path)
    if not path.is_file():
        raise InputError(f"{label}: no such image file")
    try:
        return path.read_bytes(), label
    except OSError as exc:
        raise InputError(f"{label}: cannot read ({exc.strerror or exc})") from exc


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from a PNG IHDR: Pillow silently narrows 16-bit RGB PNGs to 8 bits, so check the header."""
    if data[:8] == PNG_SIGNATURE and len(data) >= 26 and data[12:16] == b"IHDR":
        return data[24]
    return None


def _open_checked(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Open (header only) and run every check that needs no pixel: size, bit depth, colour."""
    if not data:
        raise InputError(f"{label}: zero-byte file")
    try:
        with warnings.catch_warnings():
            # We apply our own pixel limit below; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InputError(f"{label}: image too large ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{label}: not an image (unrecognised or damaged header)") from exc

    width, height = im.size
    if width * height > max_pixels:
        raise InputError(f"{label}: image too large ({width}x{height} = {width * height} pixels > {max_pixels})")
    if width == 0 or height == 0:
        raise InputError(f"{label}: image has zero size ({width}x{height})")
    bits = _png_bit_depth(data)
    if im.mode in HIGH_BIT_MODES or (bits is not None and bits > 8):
        raise InputError(f"{label}: {bits or 16}-bit image (mode {im.mode}); expected 8-bit RGB")
    if im.mode in GRAY_MODES:
        raise InputError(f"{label}: grayscale image (mode {im.mode}); a colour RGB photo is required")
    return im


def _decode_rgb(im: Image.Image, label: str) -> Image.Image:
    """Decode the pixels (at whatever draft scale was set), apply EXIF orientation, convert to RGB."""
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{label}: truncated or corrupt image data ({exc})") from exc
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency must go through RGBA to convert cleanly
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _as_rgb_array(im: Image.Image, label: str) -> np.ndarray:
    array = np.asarray(im, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"{label}: decoded to shape {array.shape}, expected HxWx3")
    return np.ascontiguousarray(array)


def load_image(
    path_or_bytes: str | Path | bytes | bytearray | memoryview,
    *,
    name: str = "",
    max_pixels: int = 80_000_000,
) -> np.ndarray:
    """Decode one photo to uint8 (H,W,3) RGB with EXIF orientation applied.

    Rejected (InputError naming the file): zero-byte, not an image, truncated/corrupt data, 16-bit or
    float samples, grayscale (DMD3C needs colour), more than ``max_pixels`` (checked from the header,
    before any pixel is decoded). Palette, RGBA, CMYK and other colour modes are converted to RGB
    (alpha is dropped, not composited).
    """
    data, label = _read(path_or_bytes, name)
    im = _open_checked(data, label, max_pixels)
    return _as_rgb_array(_decode_rgb(im, label), label)


# EXIF orientation -> numpy view that shows the stored pixels upright (what ImageOps.exif_transpose does).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
# Remaining reduction (after libjpeg's DCT scaling) from which the area filter is worth its cost; below it
# bilinear barely aliases and is 5x faster.
_AREA_FROM = 1.5


def area_reduce(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Reduce ``image`` (uint8 (h, w, c), at least ~1.5x larger) to (out_h, out_w) with area averaging.

    OpenCV's INTER_AREA at a non-integer ratio is its slow general path (~3 ms CPU for a 1167x337 crop to
    672x196, ~7 ms for a 12 MP photo's crop at half scale to a 352x1216 canvas); at an integer ratio it is a
    fast box average. So: bilinear to k times the output, k = the ratio rounded (at least 2, so that step stays
    within 0.75-1.25x of 1:1 and barely aliases), then the k x k box average: 2-3x less CPU, 47-57 dB PSNR
    against INTER_AREA on the bench and demo photos (bilinear alone: 30-46 dB; tests/test_images.py checks it).
    """
    import cv2

    h, w = image.shape[:2]
    k = max(2, round(min(w / out_w, h / out_h)))
    upsampled = cv2.resize(image, (out_w * k, out_h * k), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(upsampled, (out_w, out_h), interpolation=cv2.INTER_AREA)  # integer ratio: box average


def canvas_box(src_w: float, src_h: float, height: int, width: int) -> tuple[float, float, float, float]:
    """The centred region of a src_w x src_h image that a height x width canvas covers when the image is
    scaled to cover the canvas (aspect preserved): (left, top, right, bottom) in source pixels."""
    scale = max(height / src_h, width / src_w)
    bw, bh = width / scale, height / scale
    left, top = (src_w - bw) / 2.0, (src_h - bh) / 2.0
    return left, top, left + bw, top + bh


def _canvas_rows(h: int, w: int, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    """The canvas region of an upright h x w image in whole pixels: (x0, x1, y0, y1)."""
    left, top, right, bottom = canvas_box(w, h, *canvas)
    x0, x1 = max(0, int(round(left))), min(w, max(int(round(right)), int(round(left)) + 1))
    y0, y1 = max(0, int(round(top))), min(h, max(int(round(bottom)), int(round(top)) + 1))
    return x0, x1, y0, y1


def _crop_resize(a: np.ndarray, canvas: tuple[int, int], size: tuple[int, int], *, full_height: int | None = None,
                 row_offset: int = 0) -> np.ndarray:
    """Crop the canvas region (rounded to whole pixels) out of an upright image and resample it to size.
    ``a`` may be a band of rows of the whole image (``full_height`` rows, ``a`` starting at ``row_offset``)."""
    import cv2

    h, w = a.shape[:2]
    x0, x1, y0, y1 = _canvas_rows(full_height or h, w, canvas)
    if not (0 <= y0 - row_offset and y1 - row_offset <= h):  # a bug, not bad input: the band was computed here
        raise AssertionError(f"canvas rows {y0}..{y1} outside the decoded band {row_offset}..{row_offset + h}")
    crop = a[y0 - row_offset:y1 - row_offset, x0:x1]
    out_h, out_w = size
    if crop.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(crop)
    if min((x1 - x0) / out_w, (y1 - y0) / out_h) >= _AREA_FROM:
        return area_reduce(crop, out_h, out_w)
    return cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR)  # OpenCV reads the crop view in place


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 (h, w, 3) image (a canvas) resampled to ``size`` = (h, w) the way :func:`load_fitted` resamples a
    photo's canvas region: the area filter for reductions of 1.5x or more, else bilinear. The build makes the
    teacher's input this way from the canvas it has decoded, so each photo is decoded once."""
    return _crop_resize(image, image.shape[:2], size)


def _dct_factor(need: float) -> int:
    """Largest libjpeg reduction 1/f (f = 1, 2, 4, 8) that still gives at least ``need`` x the full size.
    Only powers of two: the other M/8 factors decode no faster than full size (measured)."""
    for f in (8, 4, 2):
        if 1.0 / f >= need:
            return f
    return 1


def load_fitted(
    data: bytes,
    *,
    name: str,
    canvas: tuple[int, int],
    size: tuple[int, int] | None = None,
    max_pixels: int = 80_000_000,
) -> np.ndarray:
    """Decode a photo straight to the dataset canvas: uint8 (h, w, 3) RGB of the centred region that a
    ``canvas`` = (H, W) covers (cover + centre crop, as :func:`fit_to_canvas`), resampled to
    ``size`` = (h, w) (default: the canvas itself; the teacher asks for its network size).

    Same checks and rejections as :func:`load_image`. Why it is cheap: colour JPEGs are decoded by
    libjpeg-turbo (simplejpeg) at 1/2, 1/4 or 1/8 scale when the output needs no more (DCT scaling) and, for
    single-scan sequential JPEGs, only down to the canvas band (tasks.jpeg_rows); the crop is a view, and only
    the cropped region is resampled by OpenCV (area filter for real reductions, bilinear otherwise); other
    formats go through Pillow. No full-size RGB copy is made twice. Deterministic: the same bytes give the same
    pixels.
    """
    height, width = canvas
    out_h, out_w = size or canvas
    if min(height, width, out_h, out_w) <= 0:
        raise InputError(f"canvas size must be positive, got {height}x{width} -> {out_h}x{out_w}")
    label = name or "<bytes>"
    im = _open_checked(data, label, max_pixels)
    w, h = im.size
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: exif_transpose ignores it the same way
        orientation = 1
    if orientation not in _ORIENT:
        orientation = 1
    dw, dh = (h, w) if orientation in _TRANSPOSING_ORIENTATIONS else (w, h)  # upright size
    cover = max(height / dh, width / dw)
    need = max(out_w / (width / cover), out_h / (height / cover))  # output pixels per source pixel
    factor = _dct_factor(need)
    if im.format == "JPEG" and im.mode == "RGB":
        import simplejpeg

        # Stored rows below the canvas band need not be decoded (tasks.jpeg_rows) when stored rows are upright
        # rows, top down (orientations 1, 2) or bottom up (3, 4).
        frame = sequential_frame(data) if orientation in (1, 2, 3, 4) else None
        rows = h
        if frame is not None and frame.height == h:
            _, _, y0, y1 = _canvas_rows(h, w, (height, width))
            last = y1 if orientation in (1, 2) else h - y0  # stored rows [0, last) hold the band
            rows = rows_kept(frame, last)
        try:
            if rows < h:
                if not has_end_of_image(data, frame):
                    raise ValueError("no end-of-image marker after the scan")
                # Not strict: a decoder stopped above the end warns about the data it did not read. The cut
                # file (the common damage) is caught just above instead; libjpeg's other warnings on
                # damaged data inside the band pass unnoticed here, where the full decode raised on them.
                a = simplejpeg.decode_jpeg(with_height(data, frame, rows), colorspace="RGB",
                                           min_width=-(-w // factor), min_height=-(-rows // factor), strict=False)
            else:
                # min_width/min_height pick libjpeg's scale (the largest reduction keeping at least that size).
                a = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-w // factor),
                                           min_height=-(-h // factor), strict=True)
        except (ValueError, RuntimeError, OSError) as exc:  # libjpeg-turbo's errors on damaged data
            raise InputError(f"{label}: truncated or corrupt image data ({exc})") from exc
        if orientation != 1:
            a = _ORIENT[orientation](a)
        if rows < h:  # a band of the image decoded at 1/factor: at the top, or at the bottom once flipped
            full_height = -(-h // factor)
            offset = 0 if orientation in (1, 2) else full_height - a.shape[0]
            return _crop_resize(a, (height, width), (out_h, out_w), full_height=full_height, row_offset=offset)
    else:
        if factor > 1:
            im.draft(None, (-(-w // factor), -(-h // factor)))
        a = _as_rgb_array(_decode_rgb(im, label), label)
    return _crop_resize(a, (height, width), (out_h, out_w))


def fit_to_canvas(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize to cover height x width (aspect preserved) then centre-crop.

    Returns ``(canvas, scale, (off_x, off_y))``: source pixel centre ``u`` lands at canvas coordinate
    ``(u + 0.5) * scale - 0.5 - off_x`` (same for v with off_y), so intrinsics transform as
    ``fx' = fx * scale``, ``cx' = (cx + 0.5) * scale - 0.5 - off_x``.
    """
    if height <= 0 or width <= 0:
        raise InputError(f"canvas size must be positive, got {height}x{width}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"fit_to_canvas expects uint8 HxWx3, got {image.dtype} {image.shape}")
    src_h, src_w = image.shape[:2]
    scale = max(height / src_h, width / src_w)
    # Round to the nearest pixel but never below the canvas: the crop must stay inside the image.
    new_h = max(height, int(math.floor(src_h * scale + 0.5)))
    new_w = max(width, int(math.floor(src_w * scale + 0.5)))
    if (new_h, new_w) != (src_h, src_w):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    off_x = (new_w - width) // 2
    off_y = (new_h - height) // 2
    canvas = np.ascontiguousarray(image[off_y:off_y + height, off_x:off_x + width])
    return canvas, float(scale), (off_x, off_y)


def intrinsics_for_canvas(height: int, width: int, *, fx: float) -> np.ndarray:
    """Pinhole K (3x3 float32) with fx = fy and the principal point at the canvas centre.

    Pixel coordinates follow the OpenCV convention (integer coordinates at pixel centres), so the
    centre of an H x W canvas is ((W - 1) / 2, (H - 1) / 2).
    """
    if height <= 0 or width <= 0:
        raise InputError(f"canvas size must be positive, got {height}x{width}")
    if not (np.isfinite(fx) and fx > 0):
        raise InputError(f"focal length must be a positive number, got {fx}")
    return np.array(
        [[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=np.float32
    )


# An inferno-like ramp (black -> purple -> red -> orange -> pale yellow): luminance rises monotonically,
# so near/far reads correctly in colour and in grey. Anchors at 0, 1/8, ..., 1; linear in between.
_RAMP_ANCHORS = np.array(
    [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
     [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float64,
)
_RAMP_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_RAMP_ANCHORS)), _RAMP_ANCHORS[:, c]) for c in range(3)],
    axis=-1,
).round().astype(np.uint8)


def colorize(values: np.ndarray, *, valid: np.ndarray | None = None, lo: float | None = None,
             hi: float | None = None) -> np.ndarray:
    """Map an (H, W) float map to uint8 (H, W, 3) with the ramp above (high values bright).

    The range defaults to the 2nd..98th percentile of the valid pixels (robust to outliers); invalid
    pixels (non-finite, or False in ``valid``) are black. Pass inverse depth for depth maps so near
    surfaces are bright, as for disparity.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise InputError(f"colorize expects an (H, W) map, got shape {values.shape}")
    ok = np.isfinite(values) if valid is None else (np.asarray(valid, bool) & np.isfinite(values))
    if ok.any():
        p_lo, p_hi = np.percentile(values[ok], [2.0, 98.0])
        lo = p_lo if lo is None else lo
        hi = p_hi if hi is None else hi
    else:
        lo, hi = 0.0, 1.0
    span = hi - lo if hi > lo else 1.0
    index = np.clip(np.nan_to_num((values - lo) / span, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = _RAMP_LUT[index]
    out[~ok] = 0
    return out
