"""tasks.depth_policy on synthetic disparity with known ground-truth depth."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.depth_policy import DepthPolicy, disparity_to_depth
from tasks.errors import GeometryError


def street_scene(h: int = 120, w: int = 160) -> np.ndarray:
    """Ground-truth depth (metres, inf = sky): sky on top, a wall band, a receding ground plane below."""
    depth = np.full((h, w), np.inf)
    rows = np.arange(h)[:, None]
    depth[30:60] = 35.0 + 10.0 * np.linspace(0, 1, w)[None, :]  # buildings at 35-45 m
    ground = rows[60:] - 59  # 1..60 rows below the horizon
    depth[60:] = np.broadcast_to(1.6 * 300.0 / ground, (h - 60, w))  # camera 1.6 m up, f = 300 px: 8..480 m
    return depth


def test_affine_disparity_recovered_up_to_the_policy():
    gt = street_scene()
    s, t = 7.3, 0.0  # DA convention: sky (1/inf) at zero disparity
    disp = s / gt + t
    policy = DepthPolicy()
    depth, info = disparity_to_depth(disp, seed=11, policy=policy)
    assert depth.dtype == np.float32 and depth.shape == gt.shape

    sky = ~np.isfinite(gt)
    assert (depth[sky] == 0).all()
    assert info["sky_fraction"] == pytest.approx(sky.mean())
    assert policy.near_m[0] <= info["near_m"] <= policy.near_m[1]
    assert policy.far_m[0] <= info["far_m"] <= policy.far_m[1]

    # 1/depth is an affine function of 1/gt with the documented coefficients, everywhere with a surface.
    surf = depth > 0
    inv_expected = info["scale"] * disp + info["shift"]
    np.testing.assert_allclose(1.0 / depth[surf], inv_expected[surf], rtol=1e-5)
    # ... and the anchors land where the policy says: near quantile -> near_m, far quantile -> far_m.
    d_near = np.quantile(disp[np.isfinite(disp)], policy.near_quantile)
    d_far = np.quantile(disp[disp > policy.sky_ratio * d_near], policy.far_quantile)
    assert 1.0 / (info["scale"] * d_near + info["shift"]) == pytest.approx(info["near_m"], rel=1e-9)
    assert 1.0 / (info["scale"] * d_far + info["shift"]) == pytest.approx(info["far_m"], rel=1e-9)
    # Order is preserved (nearer in truth = nearer after the policy) and nothing exceeds the clamp.
    order = np.argsort(gt[surf])
    assert (np.diff(depth[surf][order]) >= -1e-4).all()
    assert depth.max() <= policy.max_depth_m


def test_known_affine_replaces_the_seeded_anchors():
    """affine=(scale, shift) (e.g. fitted to a real scan) gives the true scene back; sky and max depth rules
    still apply, and the seed no longer matters."""
    gt = street_scene()
    disp = 7.3 / gt
    a, info = disparity_to_depth(disp, seed=1, affine=(1 / 7.3, 0.0))
    b, _ = disparity_to_depth(disp, seed=2, affine=(1 / 7.3, 0.0))
    assert a.tobytes() == b.tobytes() and (info["scale"], info["shift"]) == (1 / 7.3, 0.0)
    keep = np.isfinite(gt) & (gt <= DepthPolicy().max_depth_m)
    np.testing.assert_allclose(a[keep], gt[keep], rtol=1e-5)
    assert (a[~keep] == 0).all()


def test_invariant_to_the_teachers_scale_and_shift():
    gt = street_scene()
    base = 1.0 / gt
    ref, ref_info = disparity_to_depth(3.0 * base, seed=5)
    # A positive shift moves sky off zero: use a shift small enough to keep the sky rule's meaning.
    for s, t in [(0.01, 0.0), (250.0, 0.0), (2.0, 1e-5)]:
        out, info = disparity_to_depth(s * base + t, seed=5)
        assert (out > 0).sum() == (ref > 0).sum()
        np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-3)
        assert (info["near_m"], info["far_m"]) == (ref_info["near_m"], ref_info["far_m"])


def test_seeded_and_deterministic():
    disp = 1.0 / street_scene()
    a, ia = disparity_to_depth(disp, seed=1)
    b, ib = disparity_to_depth(disp, seed=1)
    c, ic = disparity_to_depth(disp, seed=2)
    assert a.tobytes() == b.tobytes() and ia == ib
    assert (ia["near_m"], ia["far_m"]) != (ic["near_m"], ic["far_m"])
    assert not np.array_equal(a, c)


def test_no_sky_indoor_scene_keeps_every_pixel():
    yy, xx = np.mgrid[0:60, 0:80]
    gt = 1.0 + 4.0 * (xx / 79.0)  # a wall receding from 1 m to 5 m: disparity never near zero
    depth, info = disparity_to_depth(1.0 / gt, seed=3)
    assert (depth > 0).all() and info["sky_fraction"] == 0.0
    assert depth.min() >= info["near_m"] * 0.9 and depth.max() <= info["far_m"] * 1.1


def test_negative_shift_pixels_beyond_infinity_become_sky():
    gt = street_scene()
    disp = 1.0 / gt - 0.002  # the teacher under-shoots: far ground goes below zero disparity
    depth, info = disparity_to_depth(disp, seed=4)
    assert (depth[~np.isfinite(gt)] == 0).all()
    assert np.isfinite(depth).all() and depth.max() <= 120.0


def test_non_finite_and_degenerate_inputs():
    disp = 1.0 / street_scene()
    disp[0, :5] = np.nan
    depth, _ = disparity_to_depth(disp, seed=0)
    assert (depth[0, :5] == 0).all() and np.isfinite(depth).all()

    flat, info = disparity_to_depth(np.full((10, 12), 0.3), seed=0)
    np.testing.assert_allclose(flat, info["far_m"], rtol=1e-6)
    zeros, info = disparity_to_depth(np.zeros((10, 12)), seed=0)
    assert (zeros == 0).all() and info["sky_fraction"] == 1.0
    nans, info = disparity_to_depth(np.full((4, 4), np.nan), seed=0)
    assert (nans == 0).all() and info["sky_fraction"] == 1.0


def test_metric_pass_through():
    m = np.array([[0.5, 10.0, 300.0], [np.nan, -1.0, 0.0]], np.float32)
    depth, info = disparity_to_depth(m, kind="metric", seed=0)
    # beyond max_depth_m: no surface by default (no LiDAR return comes from there), a wall with "clamp"
    np.testing.assert_array_equal(depth, [[0.5, 10.0, 0.0], [0.0, 0.0, 0.0]])
    assert info["scale"] == 1.0 and info["shift"] == 0.0 and info["sky_fraction"] == pytest.approx(4 / 6)
    clamped, info = disparity_to_depth(m, kind="metric", seed=0, policy=DepthPolicy(beyond_max="clamp"))
    np.testing.assert_array_equal(clamped, [[0.5, 10.0, 120.0], [0.0, 0.0, 0.0]])
    assert info["sky_fraction"] == pytest.approx(0.5)


def test_beyond_max_depth_is_no_surface_unless_clamped():
    gt = street_scene()  # the ground recedes to 480 m
    disp = 1.0 / gt
    # far anchor on the 20 % farthest pixels at 100-120 m: the farthest ground lands beyond 120 m
    policy = DepthPolicy(far_m=(100.0, 120.0), far_quantile=0.2)
    depth, _ = disparity_to_depth(disp, seed=7, policy=policy)
    clamped, _ = disparity_to_depth(disp, seed=7, policy=DepthPolicy(far_m=(100.0, 120.0), far_quantile=0.2,
                                                                     beyond_max="clamp"))
    wall = clamped >= 120.0 - 1e-3
    assert wall.any() and (depth[wall] == 0).all()
    np.testing.assert_array_equal(depth[~wall], clamped[~wall])
    assert depth.max() < 120.0


def _sky_photo(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Disparity + photo: clear sky (disp 0) in the top 20 rows, a smooth bright cloud band (rows 20-35)
    that the teacher put just above the sky rule, then a textured tree line at the same disparity on the
    left half of rows 35-50 and a smooth far wall band not touching the sky (rows 60-70), ground below."""
    rng = np.random.default_rng(0)
    disp = np.zeros((h, w))
    rgb = np.full((h, w, 3), 200, np.uint8)
    disp[20:35] = 0.02                       # cloud: 2 % of the near disparity
    disp[35:50] = 0.3                        # trees / facades on the right ...
    disp[35:50, : w // 2] = 0.02             # ... and far trees on the left, as far as the cloud
    rgb[35:50, : w // 2] = rng.integers(0, 160, (15, w // 2, 3))  # foliage texture
    disp[50:] = np.linspace(0.3, 1.0, h - 50)[:, None]
    disp[60:70] = 0.02                       # smooth, far, but enclosed by nearer ground: not sky
    rgb[50:] = 90
    return disp, rgb


def test_sky_grows_into_smooth_far_pixels_with_the_photo():
    disp, rgb = _sky_photo()
    plain, info_plain = disparity_to_depth(disp, seed=3)
    assert (plain[:20] == 0).all() and (plain[20:35] > 0).all()  # without the photo the cloud is a surface
    depth, info = disparity_to_depth(disp, seed=3, rgb=rgb)
    assert (depth[:30] == 0).all() and (depth[20:35] == 0).mean() > 0.85  # the cloud joins the sky (not
    # quite where the 7x7 texture window reaches into the foliage below it)
    assert (depth[35:50, :80] > 0).mean() > 0.95                 # textured far trees stay
    assert (depth[35:50, 80:] > 0).all() and (depth[60:70] > 0).all()
    assert info["sky_fraction"] > info_plain["sky_fraction"]
    again, _ = disparity_to_depth(disp, seed=3, rgb=rgb)
    assert again.tobytes() == depth.tobytes()
    with pytest.raises(GeometryError, match="does not match"):
        disparity_to_depth(disp, seed=3, rgb=rgb[:10])


def test_bad_arguments():
    with pytest.raises(GeometryError):
        disparity_to_depth(np.ones((2, 3, 4)), seed=0)
    with pytest.raises(GeometryError):
        disparity_to_depth(np.ones((2, 3)), kind="depth", seed=0)
    with pytest.raises(GeometryError):
        DepthPolicy(near_m=(5.0, 50.0), far_m=(40.0, 80.0))
    with pytest.raises(GeometryError):
        DepthPolicy(far_m=(40.0, 200.0))
    with pytest.raises(GeometryError):
        DepthPolicy(near_quantile=0.1, far_quantile=0.5)
    assert DepthPolicy().to_dict()["max_depth_m"] == 120.0
    with pytest.raises(GeometryError):
        DepthPolicy(beyond_max="wrap")
    with pytest.raises(GeometryError):
        DepthPolicy(sky_ratio=0.1, sky_soft_ratio=0.05)
