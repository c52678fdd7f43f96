"""Depth-completion metrics, following the KITTI depth-completion devkit.

Per image, over the valid ground-truth pixels (``gt > 0``):

- RMSE and MAE of depth, reported in millimetres;
- iRMSE and iMAE of inverse depth, reported in 1/km (``1000 / depth_m``);
- AbsRel = mean(|pred - gt| / gt) and delta1 = share of pixels with max(pred/gt, gt/pred) < 1.25.

The benchmark score is the plain mean of the per-image values over images (not over pixels), which
is what :func:`aggregate_metrics` does. Predictions must be dense; a prediction <= 0 at a valid GT
pixel is clamped to ``MIN_PRED_M`` so the inverse metrics stay finite (the devkit requires strictly
positive predictions; clamping penalises such pixels heavily instead of crashing).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

METRIC_KEYS = ("rmse_mm", "mae_mm", "irmse_1km", "imae_1km", "absrel", "delta1")
MIN_PRED_M = 1e-3  # 1 mm: the smallest depth a prediction may take for iRMSE/iMAE


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Metrics of one image. ``pred_m`` and ``gt_m`` are HxW depth in metres (gt 0 = no data).

    ``mask`` optionally restricts the evaluated pixels further (e.g. GT pixels not given as input).
    Returns the METRIC_KEYS plus ``n_pixels``; an image with no valid pixel gives NaNs and n_pixels 0.
    """
    pred = np.asarray(pred_m, dtype=np.float64)
    gt = np.asarray(gt_m, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    valid = gt > 0
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    n = int(valid.sum())
    if n == 0:
        return {**{k: float("nan") for k in METRIC_KEYS}, "n_pixels": 0}
    p = np.maximum(pred[valid], MIN_PRED_M)
    g = gt[valid]
    err_mm = (p - g) * 1000.0
    ierr_1km = (1000.0 / p) - (1000.0 / g)
    ratio = np.maximum(p / g, g / p)
    return {
        "rmse_mm": float(np.sqrt(np.mean(err_mm**2))),
        "mae_mm": float(np.mean(np.abs(err_mm))),
        "irmse_1km": float(np.sqrt(np.mean(ierr_1km**2))),
        "imae_1km": float(np.mean(np.abs(ierr_1km))),
        "absrel": float(np.mean(np.abs(p - g) / g)),
        "delta1": float(np.mean(ratio < 1.25)),
        "n_pixels": n,
    }


def aggregate_metrics(per_image: Iterable[dict]) -> dict:
    """Benchmark score: mean of each metric over images that had valid pixels; adds ``n_images``."""
    rows = [r for r in per_image if r.get("n_pixels", 0) > 0]
    out: dict = {"n_images": len(rows)}
    for k in METRIC_KEYS:
        out[k] = float(np.mean([r[k] for r in rows])) if rows else float("nan")
    out["n_pixels"] = int(sum(r["n_pixels"] for r in rows))
    return out
