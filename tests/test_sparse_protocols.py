"""Zero-shot sparse input from GT: the HDL-64E beam pattern, the row pattern, and scoring only non-input pixels."""
from __future__ import annotations

import numpy as np
import pytest

from model.sparse_protocols import exclusion_mask, sparse_from_gt
from tasks.errors import InputError, MonolidarError

H, W = 352, 1216
K = np.array([[707.0, 0.0, 600.0], [0.0, 707.0, 170.0], [0.0, 0.0, 1.0]])


def _ground_gt(cam_h: float = 1.65, keep: float = 1.0, seed: int = 0) -> np.ndarray:
    """A flat road cam_h below the camera (z-depth per pixel below the horizon), optionally thinned."""
    v = np.arange(H, dtype=np.float64)[:, None] - K[1, 2]
    with np.errstate(divide="ignore"):
        z = np.where(v > 0, K[1, 1] * cam_h / np.maximum(v, 1e-9), 0.0)
    gt = np.repeat(np.where(z < 100.0, z, 0.0), W, axis=1).astype(np.float32)
    if keep < 1.0:
        gt[np.random.default_rng(seed).random(gt.shape) >= keep] = 0.0
    return gt


def test_hdl64e_pattern_keeps_exact_gt_pixels_along_beam_rows():
    gt = _ground_gt()
    sparse = sparse_from_gt(gt, K, "hdl64e", seed=0)
    hit = sparse > 0
    assert hit.any() and np.array_equal(sparse[hit], gt[hit])  # exact GT values, only where GT exists
    # On a flat road a column meets each beam that reaches the road inside the image at most once, and only
    # where a firing (every 0.17 deg, ~2 px) falls: about a dozen returns per column (never more than the 64
    # beams), out of the ~170 GT pixels a column holds.
    per_col = hit.sum(0)
    assert per_col.max() <= 64 and 5 <= np.median(per_col) <= 40
    assert 0.01 < hit.mean() < 0.12


def test_hdl64e_pattern_is_seeded_and_follows_gt_holes():
    gt = _ground_gt(keep=0.25, seed=1)
    a = sparse_from_gt(gt, K, "hdl64e", seed=7)
    b = sparse_from_gt(gt, K, "hdl64e", seed=7)
    c = sparse_from_gt(gt, K, "hdl64e", seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert ((a > 0) <= (gt > 0)).all()
    full = sparse_from_gt(_ground_gt(), K, "hdl64e", seed=7)
    assert 0 < (a > 0).sum() < (full > 0).sum()  # firings into GT holes return nothing


def test_nearest_surface_wins_within_a_firing():
    gt = _ground_gt()
    near = gt.copy()
    near[200:210, 600:602] = 3.0  # a thin pole in front of the road: its pixels come first on their firing
    s = sparse_from_gt(near, K, "hdl64e", seed=0)
    assert set(np.unique(s[200:210, 600:602])) <= {0.0, 3.0}


def test_line_pattern_and_errors():
    gt = _ground_gt()
    lines = sparse_from_gt(gt, K, "lines", n_lines=16)
    assert np.unique(np.nonzero(lines)[0]).size == 16
    with pytest.raises(InputError, match="unknown sparse pattern"):
        sparse_from_gt(gt, K, "rosette")
    with pytest.raises(MonolidarError, match="spinning profile"):
        sparse_from_gt(gt, K, "hdl64e", profile="livox_avia")


def test_scoring_excludes_input_pixels(tmp_path):
    from model.evaluation import evaluate_items
    from storage.kitti import find_kitti_dc, write_kitti_dc

    gt = _ground_gt(keep=0.3)[:, :400]
    sparse = sparse_from_gt(gt, K, "hdl64e", seed=0)
    rgb = np.zeros(gt.shape + (3,), np.uint8)
    write_kitti_dc(tmp_path, [{"name": "f", "rgb": rgb, "sparse": sparse, "gt": gt, "K": K.astype(np.float32)}])
    items = find_kitti_dc(tmp_path)
    # A "method" that is perfect on its input pixels and 1 m off everywhere else.
    from storage.kitti import load_kitti_item

    rows = evaluate_items([load_kitti_item(i) for i in items], {"copy": lambda _rgb, sp: np.where(sp > 0, sp, 0) + np.where(sp > 0, 0, gt + 1.0)},
                          exclude_input=True, progress=False)["copy"]

    sp = load_kitti_item(items[0])["sparse"]
    gt_read = load_kitti_item(items[0])["gt"]
    assert rows[0]["n_pixels"] == int(((gt_read > 0) & exclusion_mask(sp)).sum())
    assert abs(rows[0]["mae_mm"] - 1000.0) < 1.0  # input pixels (error 0) were not counted
