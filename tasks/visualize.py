"""Preview images: colour-mapped depth and the RGB | teacher depth | LiDAR overlay strip. Pure numpy."""
from __future__ import annotations

import numpy as np

from tasks.images import colorize  # the one colour ramp of the project


def depth_to_color(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth (0 = none) coloured by inverse depth, so near is bright and far/sky is dark."""
    valid = depth_m > 0
    inv = np.zeros_like(depth_m, dtype=np.float64)
    inv[valid] = 1.0 / depth_m[valid]
    return colorize(inv, valid=valid)


def overlay_points(rgb: np.ndarray, sparse_m: np.ndarray, *, radius: int = 1) -> np.ndarray:
    """Darkened RGB with each LiDAR return drawn as a small square coloured by inverse depth."""
    out = (rgb.astype(np.float32) * 0.45).astype(np.uint8)
    ys, xs = np.nonzero(sparse_m > 0)
    if ys.size == 0:
        return out
    colors = colorize((1.0 / sparse_m[ys, xs])[None, :])[0]
    h, w = sparse_m.shape
    for dy in range(-radius + 1, radius):
        for dx in range(-radius + 1, radius):
            yy, xx = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
            out[yy, xx] = colors
    out[ys, xs] = colors
    return out


def preview_strip(rgb: np.ndarray, teacher_output: np.ndarray, sparse_m: np.ndarray, *,
                  teacher_kind: str = "disparity") -> np.ndarray:
    """RGB | teacher depth | sparse LiDAR overlay, stacked vertically (KITTI crops are wide)."""
    t = teacher_output.astype(np.float64)
    teacher_rgb = colorize(t) if teacher_kind == "disparity" else depth_to_color(t)
    return np.concatenate([rgb, teacher_rgb, overlay_points(rgb, sparse_m, radius=2)], axis=0)
