"""Zero-shot sparse input from GT: the HDL-64E beam pattern, the row pattern, and scoring only non-input pixels."""
from __future__ import annotations

import numpy as np
import pytest

from model.sparse_protocols import beam_sample_gt, exclusion_mask, mount_pose, sparse_from_gt
from tasks.errors import InputError
from tasks.sensors import load_profile

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


def test_beam_hits_are_gt_pixels_on_the_profile_beams():
    prof = load_profile("hdl64e_kitti")
    gt = _ground_gt()
    sparse = beam_sample_gt(gt, K, prof, seed=0, jitter=False, drops=False)
    hit = sparse > 0
    assert hit.any() and np.array_equal(sparse[hit], gt[hit])  # exact GT values, only where GT exists
    # Each hit, seen from the sensor origin, lies within a pixel's angle of one of the profile's beams.
    rot, origin = mount_pose(prof)
    v, u = np.nonzero(hit)
    z = gt[v, u].astype(np.float64)
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    d = (pts - origin) @ rot
    elev = np.rad2deg(np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1])))
    off = np.min(np.abs(elev[:, None] - np.asarray(prof.elevations_deg)[None]), axis=1)
    assert off.max() <= np.rad2deg(1.0 / K[1, 1]) + 1e-9
    # The beams that reach the road inside the image (bottom row) and inside 100 m (the GT's end) all hit,
    # no other: from the sensor, 1.65 - 0.076 m above the road and 0.272 m behind the camera.
    sensor_h, back = 1.65 + origin[1], -origin[2]
    z_bottom = K[1, 1] * 1.65 / (H - 1 - K[1, 2])
    lo, hi = -np.rad2deg(np.arctan2(sensor_h, z_bottom + back)), -np.rad2deg(np.arctan2(sensor_h, 100.0 + back))
    beams, tol = np.asarray(prof.elevations_deg), np.rad2deg(1.0 / K[1, 1])  # a beam's footprint: one pixel
    inside = int(((beams > lo + tol) & (beams < hi - tol)).sum())
    half_fov = np.arctan2(max(K[0, 2], W - 1 - K[0, 2]), K[0, 0])  # road at the image's edges is farther
    hi_edge = -np.rad2deg(np.arctan2(sensor_h, 100.0 / np.cos(half_fov) + back))
    touching = int(((beams > lo - tol) & (beams < hi_edge + tol)).sum())
    hit_beams = np.unique(np.argmin(np.abs(elev[:, None] - beams[None]), axis=1))
    assert inside > 25 and inside <= hit_beams.size <= touching + 1  # +1: a beam grazing a band edge
    # At most one return per firing (azimuth step) per beam.
    per_beam = np.bincount(np.argmin(np.abs(elev[:, None] - np.asarray(prof.elevations_deg)[None]), axis=1))
    fov_deg = np.rad2deg(2 * np.arctan(W / 2 / K[0, 0]))
    assert per_beam.max() <= fov_deg / prof.azimuth_step_deg + 2
    # Far beams are sparser in the image than the near ones: the lower block is 1/2 deg apart.
    assert 0.01 < hit.mean() < 0.12


def test_beam_sampling_is_seeded_drops_and_holes():
    gt = _ground_gt(keep=0.25, seed=1)
    a = sparse_from_gt(gt, K, "hdl64e", seed=7)
    b = sparse_from_gt(gt, K, "hdl64e", seed=7)
    c = sparse_from_gt(gt, K, "hdl64e", seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    full = beam_sample_gt(gt, K, seed=7, drops=False)
    assert 0 < (a > 0).sum() < (full > 0).sum()  # the profile's random drop removes some returns
    assert ((a > 0) <= (gt > 0)).all()


def test_nearest_surface_wins_within_a_firing():
    gt = _ground_gt()
    near = gt.copy()
    near[200:210, 600:602] = 3.0  # a thin pole in front of the road: its pixels come first on their firing
    s = beam_sample_gt(near, K, seed=0, jitter=False, drops=False)
    assert set(np.unique(s[200:210, 600:602])) <= {0.0, 3.0}


def test_line_pattern_and_errors():
    gt = _ground_gt()
    lines = sparse_from_gt(gt, K, "lines", n_lines=16)
    assert np.unique(np.nonzero(lines)[0]).size == 16
    with pytest.raises(InputError, match="unknown sparse pattern"):
        sparse_from_gt(gt, K, "rosette")
    with pytest.raises(InputError, match="spinning sensor"):
        beam_sample_gt(gt, K, "livox_avia")


def test_scoring_excludes_input_pixels(tmp_path):
    from model.evaluation import evaluate_items
    from storage.kitti import find_kitti_dc, write_kitti_dc

    gt = _ground_gt(keep=0.3)[:, :400]
    sparse = sparse_from_gt(gt, K, "hdl64e", seed=0)
    rgb = np.zeros(gt.shape + (3,), np.uint8)
    write_kitti_dc(tmp_path, [{"name": "f", "rgb": rgb, "sparse": sparse, "gt": gt, "K": K.astype(np.float32)}])
    items = find_kitti_dc(tmp_path)
    # A "method" that is perfect on its input pixels and 1 m off everywhere else.
    rows = evaluate_items(items, {"copy": lambda _rgb, sp: np.where(sp > 0, sp, 0) + np.where(sp > 0, 0, gt + 1.0)},
                          exclude_input=True, progress=False)["copy"]
    from storage.kitti import load_kitti_item

    sp = load_kitti_item(items[0])["sparse"]
    gt_read = load_kitti_item(items[0])["gt"]
    assert rows[0]["n_pixels"] == int(((gt_read > 0) & exclusion_mask(sp)).sum())
    assert abs(rows[0]["mae_mm"] - 1000.0) < 1.0  # input pixels (error 0) were not counted
