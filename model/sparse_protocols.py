"""Sparse LiDAR-like input sampled from semi-dense ground truth: the zero-shot protocols of depth completion.

Two patterns:

- ``"hdl64e"``: the beams of a spinning sensor profile (default ``hdl64e_kitti``: KITTI's calibrated beam
  elevations and laser heights, its mount) cast through the GT depth image, each firing keeping the nearest GT
  pixel within a pixel's angle, then the profile's random and far-range drops
  (``tasks.lidar.sample_gt_with_profile``, the simulator's own beam geometry; one implementation, there).
- ``"lines"``: the older row pattern (``tasks.sparsify.sparsify_scanlines``): one GT row per band of rows.
  Easier to interpolate — every kept row is complete and rows are evenly spaced.

Scoring then uses only GT pixels that were NOT given as input (``exclusion_mask``), so a method cannot
score by copying its input.
"""
from __future__ import annotations

import numpy as np

from tasks.errors import InputError

PATTERNS = ("hdl64e", "lines")
DEFAULT_PROFILE = "hdl64e_kitti"


def sparse_from_gt(gt: np.ndarray, K: np.ndarray, pattern: str, *, seed: int = 0,
                   profile=DEFAULT_PROFILE, n_lines: int = 64) -> np.ndarray:
    """Sparse input from GT with one of ``PATTERNS`` (float32 metres, 0 = none)."""
    if pattern == "hdl64e":
        from tasks.lidar import sample_gt_with_profile

        return sample_gt_with_profile(np.asarray(gt, np.float32), np.asarray(K, np.float64), profile, seed=seed)
    if pattern == "lines":
        from tasks.sparsify import sparsify_scanlines

        return sparsify_scanlines(gt, n_lines=n_lines, seed=seed)
    raise InputError(f"unknown sparse pattern {pattern!r}; available: {', '.join(PATTERNS)}")


def exclusion_mask(sparse: np.ndarray) -> np.ndarray:
    """Pixels that may be scored: those NOT given as input (sparse == 0)."""
    return np.asarray(sparse) <= 0
