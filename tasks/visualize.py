"""Preview images: colour-mapped depth and the RGB | teacher depth | LiDAR overlay strip. Pure numpy."""
from __future__ import annotations

import numpy as np

# Anchor colours of a perceptually ordered dark-purple -> orange -> pale-yellow ramp (magma-like), linearly
# interpolated into a 256-entry table. Near = bright so foreground objects stand out.
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)


def colorize(values: np.ndarray, *, valid: np.ndarray | None = None, lo: float | None = None,
             hi: float | None = None) -> np.ndarray:
    """Map an H x W array to uint8 RGB with robust (2nd-98th percentile) limits; invalid pixels are black."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values) if valid is None else (valid & np.isfinite(values))
    if not valid.any():
        return np.zeros(values.shape + (3,), np.uint8)
    v = values[valid]
    lo = float(np.percentile(v, 2)) if lo is None else lo
    hi = float(np.percentile(v, 98)) if hi is None else hi
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    out = LUT[np.nan_to_num(t * 255).astype(np.uint8)]
    out[~valid] = 0
    return out


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
    colors = colorize(1.0 / sparse_m[ys, xs])
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
