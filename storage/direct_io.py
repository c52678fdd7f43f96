"""Writing large local files past the page cache (``O_DIRECT``), for the store's shard objects.

Why: a build writes every shard object once and rarely reads it back soon; through the page cache each byte
is copied into a freshly allocated page, and a million-sample build (~1.7 MB per sample) would push 1.7 TB
through a cache it only pollutes (evicting the photos being read and the teacher cache). On the 2-core build
VM a buffered write of a shard took 3.5-5 ms of kernel CPU per sample for its new page-cache pages; written
here it takes ~0.3 ms (the copy into the aligned buffer; figures in ``bench/bench_build.py --stages``).

``O_DIRECT`` needs the buffer address and the write length aligned to the device's logical block size: the
data (one bytes object, or the pieces the shard encoder produced, packed one after another) is copied, 8 MiB at a
time, into a page-aligned buffer (kept per thread and reused, so its pages are
touched once, not on every write), the last piece rounded up to whole 4 KiB blocks, and the file is then cut
to its exact length.
Filesystems that refuse ``O_DIRECT`` (tmpfs, some FUSE and network filesystems) get ``False`` back and the
caller writes through the page cache as before; so does a platform without ``O_DIRECT``.
"""
from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Sequence
from pathlib import Path

# Below this a write is small enough that the page cache costs little and the synchronous device write of
# O_DIRECT would only add latency (manifest parts, metadata).
MIN_DIRECT_BYTES = 1 << 20
_BLOCK = 4096  # a multiple of every common logical block size (512, 4096)
# Written through the aligned buffer this much at a time: a writer keeps 8 MiB, not its largest object (a
# 64-sample rgb shard object of 352x1216 is ~51 MB), and each write is still large enough for the device.
_CHUNK = 8 << 20
_local = threading.local()
_refused_devices: set[int] = set()  # filesystems (st_dev) that refused O_DIRECT once: not tried again


def _aligned_buffer() -> mmap.mmap:
    """This thread's page-aligned scratch buffer of _CHUNK bytes (only the pages a write uses are ever touched)."""
    buf: mmap.mmap | None = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = mmap.mmap(-1, _CHUNK)
    return buf


def _pieces(data: bytes | memoryview | Sequence[bytes]) -> list[memoryview]:
    """``data`` as byte views in file order: a list or tuple holds pieces whose concatenation is the file, any
    other object exposing a buffer (bytes, memoryview, a numpy array) is the file itself."""
    return [memoryview(p).cast("B") for p in (data if isinstance(data, (list, tuple)) else [data])]


def write_direct(path: Path, data: bytes | memoryview | Sequence[bytes]) -> bool:
    """Create (or truncate) ``path`` and write ``data`` (bytes, or pieces written one after another) to it with
    ``O_DIRECT``; False, with nothing written, if this platform or filesystem does not take it (the caller then
    writes it buffered). Other errors (no space, permissions) raise as a buffered write would."""
    flag = getattr(os, "O_DIRECT", 0)
    sources = _pieces(data)
    n = sum(len(v) for v in sources)
    try:
        if not flag or n < MIN_DIRECT_BYTES:
            return False
        try:
            device = os.stat(path.parent).st_dev
        except OSError:
            return False
        if device in _refused_devices:
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                _refused_devices.add(device)
                return False
            raise
        try:
            try:
                _copy_through_buffer(fd, sources)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # alignment the device does not take: fall back below
                    raise
                _refused_devices.add(device)
                return False
            os.ftruncate(fd, n)  # drop the padding of the last block
            return True
        finally:
            os.close(fd)
    finally:
        for v in sources:
            v.release()


def _copy_through_buffer(fd: int, sources: list[memoryview]) -> None:
    # The pieces are packed into the aligned buffer and it is written whenever full: every write but the last
    # is _CHUNK bytes (whole blocks), so file offsets stay aligned; the last is padded to whole blocks.
    buf = _aligned_buffer()
    view = memoryview(buf)
    try:
        fill = 0
        for src in sources:
            pos, m = 0, len(src)
            while pos < m:
                take = min(_CHUNK - fill, m - pos)
                buf[fill:fill + take] = src[pos:pos + take]
                fill += take
                pos += take
                if fill == _CHUNK:
                    _write_all(fd, view[:_CHUNK])
                    fill = 0
        if fill:
            _write_all(fd, view[:-(-fill // _BLOCK) * _BLOCK])
    finally:
        view.release()


def _write_all(fd: int, block: memoryview) -> None:
    written = 0
    try:
        while written < len(block):
            written += os.write(fd, block[written:])
    finally:
        block.release()
