"""PNG and depth encodings shared by the store and the KITTI reader/writer.

KITTI convention for depth maps: uint16, value = round(metres * 256), 0 = no measurement. The largest
representable depth is 65535/256 ≈ 255.996 m; larger depths are clipped to it, and non-finite or
non-positive depths become 0 (no measurement).
"""
from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
from PIL import Image

from tasks.errors import InputError

DEPTH_SCALE = 256.0
MAX_DEPTH_M = 65535 / DEPTH_SCALE


def depth_to_uint16(depth_m: np.ndarray) -> np.ndarray:
    """Metres (any float array) -> KITTI uint16 (metres*256, rounded; 0 = none)."""
    d = np.asarray(depth_m)
    if d.dtype == np.float16:
        d = d.astype(np.float32)
    elif d.dtype != np.float32:
        d = d.astype(np.float64, copy=False)
    out = np.empty(d.shape, np.uint16)
    _kitti_uint16(np.ascontiguousarray(d).reshape(-1), out.reshape(-1))
    return out


@numba.njit(cache=True, nogil=True)
def _kitti_uint16(d: np.ndarray, out: np.ndarray) -> None:
    # One pass instead of numpy's five full-size ones (mask, multiply, rint, clip, masked copy). Computed in
    # float64 for float32 input too: x * 256 is exact in both (a power of two; a float32 overflowing to inf
    # clips to 65535 either way) and rint of a float32 value is a float32 value, so the result is the same.
    top = np.finfo(d.dtype).max
    for i in range(d.size):
        x = d[i]
        if x > 0 and x <= top:  # positive and finite (NaN compares False)
            q = np.rint(np.float64(x) * 256.0)
            # a tiny positive depth must not round to 0 and turn into "no measurement"
            out[i] = 1 if q < 1.0 else (65535 if q > 65535.0 else np.uint16(q))
        else:
            out[i] = 0


def uint16_to_depth(depth_u16: np.ndarray) -> np.ndarray:
    """KITTI uint16 -> float32 metres (0 stays 0 = none)."""
    return (np.asarray(depth_u16, dtype=np.float32) / np.float32(DEPTH_SCALE)).astype(np.float32)


def depth_metres(stored: np.ndarray) -> np.ndarray:
    """A store's dense depth as float32 metres: format 3 keeps the KITTI uint16 form, format 2 kept metres."""
    stored = np.asarray(stored)
    return uint16_to_depth(stored) if stored.dtype == np.uint16 else stored.astype(np.float32, copy=False)


def read_depth_png(path: str | Path) -> np.ndarray:
    """A KITTI depth PNG -> float32 metres, 0 = none."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: depth PNG not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except OSError as exc:
        raise InputError(f"{path}: unreadable depth PNG ({exc})") from None
    if arr.ndim != 2 or arr.dtype.kind not in "ui" or (arr.dtype.itemsize < 2):
        raise InputError(f"{path}: not a 16-bit single-channel depth PNG (got {arr.dtype} {arr.shape})")
    return uint16_to_depth(arr.astype(np.uint16))


def write_depth_png(path: str | Path, depth_m: np.ndarray) -> None:
    """float metres (H, W) -> 16-bit PNG, KITTI convention (round(m*256), 0 = none)."""
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise InputError(f"{path}: depth must be (H, W), got shape {depth_m.shape}")
    write_uint16_png(path, depth_to_uint16(depth_m))


def write_uint16_png(path: str | Path, values: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)).save(path, format="PNG")


def read_rgb(path: str | Path) -> np.ndarray:
    """Any PIL-readable image -> uint8 (H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"{path}: rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG")
