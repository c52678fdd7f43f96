"""A content-addressed array cache that lives beside dataset stores: the build's teacher outputs.

The dataset store is the cache for everything the build writes (canvases are never cached: each photo is
decoded once, where its image is written into the store). Only the teacher's outputs are kept here, so that a rebuild
with another sensor, seed or depth policy runs no teacher inference, even in a new process:

* ``teacher/<key[:2]>/<key>.npy.zst`` – the teacher's raw output for one image at its own (network)
  resolution (or the canvas's, if smaller), float16. File = zstd(magic + ``.npy``): magic ``NPY0`` = the
  array itself; ``F16D`` = a float16 map stored as the row-wise differences of its 16-bit patterns, split
  into low and high byte planes (uint8 (2, H, W)): smooth maps then compress ~2x better than raw float16,
  which is what keeps the cache a small fraction of the store (bench/bench_build_scale.py reports it).

Keys are hex digests computed by the caller from everything the entry depends on (image content hash,
canvas size, teacher sha256, preprocessing). One entry is one file, written to a temporary name and renamed
into place, so a crash never leaves a half-written entry that a reader would accept; concurrent writers of
the same key write identical bytes and the last rename wins. One file per entry (not a Zarr array
directory per entry) keeps a million-image cache at a million files and one write each.
"""
from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path

import numba
import numpy as np

from tasks.errors import StoreError

_NAMESPACES = ("teacher",)
_SUFFIX = ".npy.zst"
_MAGIC_NPY, _MAGIC_F16D = b"NPY0", b"F16D"
_ZSTD_LEVEL = 2  # teacher maps are smooth; level 3 measured ~2 % smaller for ~30 % more encode CPU


def default_cache_dir(store_path: str | os.PathLike) -> Path:
    """Cache shared by every store in the same parent folder: ``<parent>/.monolidar-cache``."""
    return Path(store_path).resolve().parent / ".monolidar-cache"


def _zstd():
    from numcodecs import Zstd

    return Zstd(level=_ZSTD_LEVEL)


@numba.njit(cache=True, nogil=True)
def _row_diff_planes(bits: np.ndarray) -> np.ndarray:
    # F16D body in one pass: per row, the differences of consecutive 16-bit patterns (mod 2^16, the first
    # against 0) split into (low, high) byte planes. Same bytes as np.diff + a byte-plane transpose, without
    # their full-size temporaries (a 352x1216 entry, zstd included: put 6.3 -> 5.0 ms, get 4.8 -> 2.8 ms).
    h, w = bits.shape
    out = np.empty((2, h, w), np.uint8)
    for i in range(h):
        prev = 0
        for j in range(w):
            cur = np.int64(bits[i, j])
            d = (cur - prev) & 0xFFFF
            out[0, i, j] = d & 0xFF
            out[1, i, j] = d >> 8
            prev = cur
    return out


@numba.njit(cache=True, nogil=True)
def _planes_row_cumsum(planes: np.ndarray) -> np.ndarray:
    # Inverse of _row_diff_planes: join the byte planes and take the running sum of each row mod 2^16.
    _, h, w = planes.shape
    out = np.empty((h, w), np.uint16)
    for i in range(h):
        acc = 0
        for j in range(w):
            acc = (acc + (np.int64(planes[0, i, j]) | (np.int64(planes[1, i, j]) << 8))) & 0xFFFF
            out[i, j] = acc
    return out


class ArrayCache:
    """``get``/``put``/``has`` numpy arrays by (namespace, key) under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, namespace: str, key: str) -> Path:
        if namespace not in _NAMESPACES:
            raise ValueError(f"unknown cache namespace {namespace!r}; expected one of {_NAMESPACES}")
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex digest, got {key!r}")
        # Two-level fan-out keeps directories small for million-image caches.
        return self.root / namespace / key[:2] / f"{key}{_SUFFIX}"

    def has(self, namespace: str, key: str) -> bool:
        return self._path(namespace, key).is_file()

    @staticmethod
    def _encode(array: np.ndarray) -> bytes:
        a = np.ascontiguousarray(array)
        buf = io.BytesIO()
        if a.dtype == np.float16 and a.ndim == 2:
            planes = _row_diff_planes(a.view(np.uint16))
            buf.write(_MAGIC_F16D)
            np.save(buf, planes, allow_pickle=False)
        else:
            buf.write(_MAGIC_NPY)
            np.save(buf, a, allow_pickle=False)
        return _zstd().encode(buf.getvalue())

    @staticmethod
    def _decode(blob: bytes) -> np.ndarray:
        raw = bytes(_zstd().decode(blob))
        magic, body = raw[:4], io.BytesIO(raw[4:])
        if magic == _MAGIC_NPY:
            return np.load(body, allow_pickle=False)
        if magic == _MAGIC_F16D:
            planes = np.load(body, allow_pickle=False)
            if planes.dtype != np.uint8 or planes.ndim != 3 or planes.shape[0] != 2:
                raise ValueError(f"F16D body must be uint8 (2, H, W), got {planes.dtype} {planes.shape}")
            return _planes_row_cumsum(planes).view(np.float16)
        raise ValueError(f"unknown entry format {magic!r}")

    def get(self, namespace: str, key: str) -> np.ndarray:
        path = self._path(namespace, key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"{path}: cache entry missing") from exc
        try:
            return self._decode(blob)
        except Exception as exc:  # corrupt entry: name it so the user can delete it
            raise StoreError(f"{path}: unreadable cache entry ({type(exc).__name__}: {exc})") from exc

    def put(self, namespace: str, key: str, array: np.ndarray) -> Path:
        final = self._path(namespace, key)
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        blob = self._encode(array)
        tmp = final.parent / f".{key}.tmp-{uuid.uuid4().hex}"
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def clear_temporaries(self) -> int:
        """Remove leftovers of writers that crashed mid-put; returns how many were removed."""
        removed = 0
        for ns in _NAMESPACES:
            for tmp in (self.root / ns).glob("*/.*.tmp-*"):
                if tmp.is_dir():  # entries of the older Zarr-directory layout
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
                removed += 1
        return removed
