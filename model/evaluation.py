"""Evaluation: KITTI-devkit metrics of completion predictors over KITTI-format frames, and the relative-depth
metrics used to judge a monocular teacher."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from model.ipbasic import ipbasic_complete
from model.metrics import METRIC_KEYS, depth_metrics
from model.sparse_protocols import exclusion_mask

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def model_predictor(model: nn.Module) -> Predictor:
    """(rgb uint8 HxWx3, sparse HxW metres) -> dense depth HxW metres with a completion network."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def predict(rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1) / 255.0)[None].to(device)
        s = torch.from_numpy(sparse.astype(np.float32))[None, None].to(device)
        return model(x, s)[0, 0].cpu().numpy()

    return predict


def ipbasic_predictor(rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    return ipbasic_complete(sparse)


def evaluate_items(frames: Iterable[dict], predictors: dict[str, Predictor], *, exclude_input: bool = False,
                   write: Callable[[str, np.ndarray], None] | None = None, write_method: str | None = None,
                   progress: bool = True) -> dict[str, list[dict]]:
    """Per-image metrics of every predictor on every frame with GT; ``write(name, prediction)`` receives
    ``write_method``'s predictions. ``frames``: dicts {"name", "rgb", "sparse", "gt"} (storage.kitti's
    ``load_kitti_item`` output; the caller reads them, so model/ needs no file format).

    ``exclude_input``: score only GT pixels that were not given as sparse input (for GT-derived input).
    Returns {method: [per-image metric dicts with "name"]}.
    """
    from tqdm.auto import tqdm

    rows: dict[str, list[dict]] = {m: [] for m in predictors}
    for s in tqdm(frames, desc="evaluate", disable=not progress, leave=False):
        if s["gt"] is None:
            continue
        mask = exclusion_mask(s["sparse"]) if exclude_input else None
        for method, predict in predictors.items():
            pred = predict(s["rgb"], s["sparse"])
            rows[method].append({"name": s["name"], **depth_metrics(pred, s["gt"], mask)})
            if write is not None and method == write_method:
                write(s["name"], pred)
    return rows


def metrics_table(results: dict[str, dict]) -> list[dict]:
    """Rows {method, METRIC_KEYS (rounded), n_images} of aggregated results."""
    return [{"method": m, **{k: round(r[k], 4) for k in METRIC_KEYS}, "n_images": r["n_images"]}
            for m, r in results.items()]


# ----------------------------------------------------------------------------------- relative depth (teachers)
def aligned_depth_metrics(pred_disparity: np.ndarray, gt_depth: np.ndarray, *, max_depth: float = 80.0,
                          min_depth: float = 1e-3) -> dict[str, float]:
    """AbsRel and delta<1.25 of a relative disparity after per-image least-squares scale/shift alignment
    IN DISPARITY SPACE to 1/gt over the valid pixels, compared in DEPTH (aligned disparity clamped to
    1/max_depth so no pixel becomes infinitely far or negative)."""
    from model.losses import fit_scale_shift

    valid = (gt_depth > min_depth) & np.isfinite(gt_depth) & np.isfinite(pred_disparity)
    if valid.sum() < 10:
        raise ValueError("fewer than 10 valid ground-truth pixels: cannot align")
    p = pred_disparity[valid].astype(np.float64)
    g = 1.0 / gt_depth[valid].astype(np.float64)
    s_t, t_t = fit_scale_shift(torch.from_numpy(p)[None], torch.from_numpy(g)[None], torch.ones(1, p.size))
    s, t = float(s_t[0]), float(t_t[0])
    depth = 1.0 / np.maximum(s * p + t, 1.0 / max_depth)
    gt = gt_depth[valid].astype(np.float64)
    ratio = np.maximum(depth / gt, gt / depth)
    return {"abs_rel": float(np.mean(np.abs(depth - gt) / gt)), "delta1": float(np.mean(ratio < 1.25)),
            "n_pixels": int(valid.sum()), "scale": s}


def ground_plane_disparity(height: int, width: int) -> np.ndarray:
    """The trivial baseline: constant small disparity above the middle row, growing linearly below it
    (a flat ground seen by a level camera has disparity proportional to rows below the horizon)."""
    rows = np.arange(height, dtype=np.float64)
    disp = 0.01 + np.clip((rows - height / 2) / height, 0.0, None)
    return np.repeat(disp[:, None], width, axis=1).astype(np.float32)
