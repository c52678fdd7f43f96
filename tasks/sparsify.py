"""Sparse LiDAR-like input from semi-dense ground truth (the usual zero-shot protocol of depth-completion work).

A spinning LiDAR's beams sweep elevation bands, which project to roughly horizontal curves in the image.
Without the real scan geometry, rows stand in for elevations: the rows that hold ground truth are split into
``n_lines`` equal bands and one row per band is kept — the band's row with the most valid pixels, since the
accumulated ground truth is densest along the real scan lines. KITTI's 64-beam input covers ≈ 5 % of the
352-row crop; n_lines=64 over semi-dense ground truth gives a similar density.
"""
from __future__ import annotations

import numpy as np

from tasks.errors import InputError


def sparsify_scanlines(gt: np.ndarray, *, n_lines: int = 64, keep: float = 1.0, seed: int = 0) -> np.ndarray:
    """Keep the valid pixels of ``n_lines`` scan rows of ``gt`` (metres, 0 = none), optionally thinned.

    ``keep`` < 1 keeps each remaining point with that probability (dropped returns), drawn from
    ``np.random.default_rng(seed)``. Returns float32 metres of gt's shape, 0 = none.
    """
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise InputError(f"sparsify_scanlines: gt must be (H, W), got shape {gt.shape}")
    if n_lines < 1:
        raise InputError(f"sparsify_scanlines: n_lines must be >= 1, got {n_lines}")
    if not 0.0 < keep <= 1.0:
        raise InputError(f"sparsify_scanlines: keep must be in (0, 1], got {keep}")
    gt = gt.astype(np.float32)
    valid = np.isfinite(gt) & (gt > 0)
    out = np.zeros_like(gt)
    counts = valid.sum(axis=1)
    rows = np.flatnonzero(counts)
    if rows.size == 0:
        return out
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    edges = np.unique(np.linspace(top, bottom, min(n_lines, bottom - top) + 1).round().astype(int))
    # argmax picks the first row on ties, so the choice is deterministic.
    kept = [lo + int(np.argmax(counts[lo:hi])) for lo, hi in zip(edges[:-1], edges[1:]) if counts[lo:hi].any()]
    mask = np.zeros_like(valid)
    mask[kept] = valid[kept]
    if keep < 1.0:
        mask &= np.random.default_rng(seed).random(gt.shape) < keep
    out[mask] = gt[mask]
    return out
