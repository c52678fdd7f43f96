"""A content-addressed Zarr array cache that lives beside dataset stores.

The build flow keeps two kinds of per-image arrays here so that no large array ever travels through a
Prefect result, and so that re-building with another sensor profile re-runs only simulation and writing:

* ``canvas/<key>`` – the decoded, validated image fitted to the dataset's H x W (uint8 H x W x 3);
* ``teacher/<key>`` – the teacher's raw output at canvas resolution (float32 H x W).

Keys are hex digests computed by the caller from everything the entry depends on (image content hash,
canvas size, teacher sha256, preprocessing). Each entry is one small Zarr v3 array written to a temporary
name and renamed into place, so a crash never leaves a half-written entry that a reader would accept
(``os.replace`` of a directory is atomic on a local filesystem). Concurrent writers of the same key are
harmless: both write identical bytes and the last rename wins.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from tasks.errors import StoreError

_NAMESPACES = ("canvas", "teacher")


def default_cache_dir(store_path: str | os.PathLike) -> Path:
    """Cache shared by every store in the same parent folder: ``<parent>/.monolidar-cache``."""
    return Path(store_path).resolve().parent / ".monolidar-cache"


class ArrayCache:
    """``get``/``put``/``has`` numpy arrays by (namespace, key) in a local Zarr v3 hierarchy."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, namespace: str, key: str) -> Path:
        if namespace not in _NAMESPACES:
            raise ValueError(f"unknown cache namespace {namespace!r}; expected one of {_NAMESPACES}")
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex digest, got {key!r}")
        # Two-level fan-out keeps directories small for million-image caches.
        return self.root / namespace / key[:2] / key

    def has(self, namespace: str, key: str) -> bool:
        return (self._path(namespace, key) / "zarr.json").is_file()

    def get(self, namespace: str, key: str) -> np.ndarray:
        path = self._path(namespace, key)
        try:
            return zarr.open_array(zarr.storage.LocalStore(path, read_only=True), mode="r")[...]
        except FileNotFoundError as exc:
            raise StoreError(f"{path}: cache entry missing") from exc
        except Exception as exc:  # corrupt entry: name it so the user can delete it
            raise StoreError(f"{path}: unreadable cache entry ({type(exc).__name__}: {exc})") from exc

    def put(self, namespace: str, key: str, array: np.ndarray) -> Path:
        final = self._path(namespace, key)
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.tmp-{uuid.uuid4().hex}"
        try:
            z = zarr.create_array(
                zarr.storage.LocalStore(tmp),
                shape=array.shape,
                chunks=array.shape,
                dtype=array.dtype,
                compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
                fill_value=0,
            )
            z[...] = array
            try:
                os.replace(tmp, final)
            except OSError:
                # Another writer renamed the same key first: identical content, keep theirs.
                if not (final / "zarr.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def clear_temporaries(self) -> int:
        """Remove leftovers of writers that crashed mid-put; returns how many were removed."""
        removed = 0
        for ns in _NAMESPACES:
            for tmp in (self.root / ns).glob("*/.*.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        return removed
