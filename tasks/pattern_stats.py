"""Scan-pattern statistics of a sparse depth map (KITTI-style: 0 = no return), for tests and the manifest."""
from __future__ import annotations

import numpy as np

from tasks.errors import GeometryError


def bottom_centre_crop(a: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """The KITTI benchmark crop: bottom `crop[0]` rows, central `crop[1]` columns (clipped to the image)."""
    h, w = a.shape[:2]
    ch, cw = min(crop[0], h), min(crop[1], w)
    left = (w - cw) // 2
    return a[h - ch:, left:left + cw]


def pattern_stats(sparse: np.ndarray, *, crop: tuple[int, int] = (352, 1216), ring: np.ndarray | None = None) -> dict:
    """density (share of crop pixels with a return), first_row (first crop row with a return, -1 if none),
    first_row_frac (first_row / crop height), rows_covered (crop rows with >= 1 return), points (returns in
    the whole image) and, when `ring` (beam index per return) is given, points_per_beam."""
    sparse = np.asarray(sparse)
    if sparse.ndim != 2:
        raise GeometryError(f"sparse depth must be 2-D, got shape {sparse.shape}")
    c = bottom_centre_crop(sparse, crop) > 0
    rows = np.nonzero(c.any(axis=1))[0]
    first = int(rows[0]) if len(rows) else -1
    out = {
        "density": float(c.mean()) if c.size else 0.0,
        "first_row": first,
        "first_row_frac": first / c.shape[0] if first >= 0 else -1.0,
        "rows_covered": int(len(rows)),
        "points": int(np.count_nonzero(sparse > 0)),
        "crop": [int(c.shape[0]), int(c.shape[1])],
    }
    if ring is not None:
        ring = np.asarray(ring).astype(np.int64).ravel()
        out["points_per_beam"] = np.bincount(ring, minlength=int(ring.max()) + 1 if len(ring) else 0).tolist()
    return out
