"""Scan-pattern statistics of a sparse depth map (KITTI-style: 0 = no return), for tests and the manifest."""
from __future__ import annotations

import numba
import numpy as np

from tasks.errors import GeometryError


@numba.njit(cache=True, nogil=True)
def _return_counts(sparse, top, left, ch, cw):
    # One pass, no boolean temporaries (this runs for every built sample): (returns in the crop, first crop row
    # with a return or -1, crop rows with a return, returns in the whole image); a return is a value > 0.
    crop_returns = 0
    first = -1
    rows_covered = 0
    points = 0
    for i in range(sparse.shape[0]):
        in_rows = top <= i < top + ch
        row_crop = 0
        for j in range(sparse.shape[1]):
            if sparse[i, j] > 0:
                points += 1
                if in_rows and left <= j < left + cw:
                    row_crop += 1
        if row_crop:
            crop_returns += row_crop
            rows_covered += 1
            if first < 0:
                first = i - top
    return crop_returns, first, rows_covered, points


def _crop_box(h: int, w: int, crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the KITTI benchmark crop in an h x w image: bottom `crop[0]` rows, central
    `crop[1]` columns, clipped to the image."""
    ch, cw = min(crop[0], h), min(crop[1], w)
    return h - ch, (w - cw) // 2, ch, cw


def bottom_centre_crop(a: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """The KITTI benchmark crop: bottom `crop[0]` rows, central `crop[1]` columns (clipped to the image)."""
    top, left, ch, cw = _crop_box(a.shape[0], a.shape[1], crop)
    return a[top:top + ch, left:left + cw]


def pattern_stats(sparse: np.ndarray, *, crop: tuple[int, int] = (352, 1216), ring: np.ndarray | None = None) -> dict:
    """density (share of crop pixels with a return), first_row (first crop row with a return, -1 if none),
    first_row_frac (first_row / crop height), rows_covered (crop rows with >= 1 return), points (returns in
    the whole image) and, when `ring` (beam index per return) is given, points_per_beam."""
    sparse = np.asarray(sparse)
    if sparse.ndim != 2:
        raise GeometryError(f"sparse depth must be 2-D, got shape {sparse.shape}")
    top, left, ch, cw = _crop_box(sparse.shape[0], sparse.shape[1], crop)
    crop_returns, first, rows_covered, points = _return_counts(sparse, top, left, ch, cw)
    out = {
        "density": crop_returns / (ch * cw) if ch * cw else 0.0,
        "first_row": first,
        "first_row_frac": first / ch if first >= 0 else -1.0,
        "rows_covered": rows_covered,
        "points": points,
        "crop": [ch, cw],
    }
    if ring is not None:
        ring = np.asarray(ring).astype(np.int64).ravel()
        out["points_per_beam"] = np.bincount(ring, minlength=int(ring.max()) + 1 if len(ring) else 0).tolist()
    return out
