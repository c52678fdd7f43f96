"""The build's fast paths give the same numbers as the straightforward numpy they replaced.

Each test keeps the old formulation as a reference and compares bit for bit: a speed-up of the simulation
must never change a shard's bytes for the same inputs (that would need a SIMULATION_VERSION bump).
"""
from __future__ import annotations

import numpy as np
import pytest

from tasks.depth_policy import DepthPolicy, disparity_to_depth, quantile_linear
from tasks.images import intrinsics_for_canvas
from tasks.lidar import beam_directions, project_points, sensor_pose
from tasks.sensors import load_profile


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001, 50_000])
@pytest.mark.parametrize("q", [0.0, 0.02, 0.25, 0.5, 0.75, 0.98, 1.0])
def test_quantile_linear_is_numpys_quantile(n, q):
    rng = np.random.default_rng(n)
    for values in (rng.normal(size=n),                                   # float64, distinct
                   rng.random(n).astype(np.float16).astype(np.float32),  # teacher-like, many ties
                   np.round(rng.random(n) * 3).astype(np.float32)):      # heavy ties
        expected = np.quantile(values.astype(np.float64), q)
        got = quantile_linear(values.copy(), q)
        assert got == expected, (values.dtype, n, q, got, expected)


def _policy_reference(disp: np.ndarray, seed: int, policy: DepthPolicy) -> tuple[np.ndarray, float]:
    """disparity_to_depth as it was computed before the fast path (float64 copy, np.quantile, masks)."""
    disp = disp.astype(np.float64)
    rng = np.random.default_rng(seed)
    near_m, far_m = rng.uniform(*policy.near_m), rng.uniform(*policy.far_m)
    finite = np.isfinite(disp)
    d_near = float(np.quantile(disp[finite], policy.near_quantile))
    surface = finite & (disp > policy.sky_ratio * d_near)
    d_far = float(np.quantile(disp[surface], policy.far_quantile))
    scale = (1.0 / near_m - 1.0 / far_m) / (d_near - d_far)
    shift = 1.0 / far_m - scale * d_far
    inv = scale * disp + shift
    surface &= inv > 0.0
    surface &= inv >= 1.0 / policy.max_depth_m
    depth = np.zeros(disp.shape, np.float32)
    depth[surface] = np.minimum(1.0 / inv[surface], policy.max_depth_m)
    return depth, float(1.0 - surface.mean())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_depth_policy_matches_the_numpy_reference(dtype):
    rng = np.random.default_rng(3)
    h, w = 96, 200
    rows = np.linspace(0.0, 1.0, h)[:, None]
    disp = (rows ** 2 * 5.0 + 0.05 * rng.random((h, w))).astype(dtype)  # far at the top, near at the bottom
    disp[:10] = 0.0                                                      # sky
    disp[50, 60] = np.nan                                                # one bad pixel
    policy = DepthPolicy(far_m=(20.0, 30.0), max_depth_m=60.0)  # some of the scene lies beyond: those pixels must drop out
    for seed in range(4):
        depth, info = disparity_to_depth(disp, seed=seed, policy=policy)
        ref, sky_fraction = _policy_reference(disp, seed, policy)
        assert depth.tobytes() == ref.tobytes()
        assert info["sky_fraction"] == pytest.approx(sky_fraction, abs=1e-12)
        assert 0 < np.count_nonzero(depth) < depth.size


def _beams_reference(profile, pose, K, h, w, seed):
    """The per-firing trigonometry that beam_directions replaced by per-beam x per-column products."""
    import tasks.lidar as lidar
    from tasks.provenance import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "lidar-rays"))
    az_c, half, el_lo, el_hi = lidar._image_sector(pose, K, h, w)
    for off in (profile.vertical_offsets_m.min(), profile.vertical_offsets_m.max()):
        shifted = pose.copy()
        shifted[:3, 3] += off * pose[:3, 2]
        _, _, lo, hi = lidar._image_sector(shifted, K, h, w)
        el_lo, el_hi = min(el_lo, lo), max(el_hi, hi)
    step = profile.azimuth_step_deg
    margin = lidar.SECTOR_MARGIN_DEG + 2 * step
    phase = rng.uniform(0.0, step)
    k = np.arange(np.ceil((az_c - half - margin - phase) / step), np.floor((az_c + half + margin - phase) / step) + 1)
    cols = phase + k * step
    beams = np.nonzero((profile.elevations_deg >= el_lo - margin) & (profile.elevations_deg <= el_hi + margin))[0]
    el = np.repeat(profile.elevations_deg[beams], len(cols))
    az = np.tile(cols, len(beams))
    ring = np.repeat(beams, len(cols))
    keep = (np.abs((az - az_c + 180.0) % 360.0 - 180.0) <= half + margin) & (el >= el_lo - margin) & (el <= el_hi + margin)
    az, el, ring = np.radians(az[keep]), np.radians(el[keep]), ring[keep]
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1) @ pose[:3, :3].T
    origins = np.broadcast_to(pose[:3, 3], dirs.shape).copy()
    origins += profile.vertical_offsets_m[ring][:, None] * pose[:3, 2][None, :]
    return origins, dirs, ring.astype(np.int16)


def test_beam_directions_match_the_per_firing_reference():
    profile = load_profile("hdl64e_kitti")  # stacked lasers: vertical offsets included
    h, w = 352, 1216
    K = intrinsics_for_canvas(h, w, fx=721.5)
    for seed in range(3):
        pose = sensor_pose(profile, seed=seed).astype(np.float64)
        got = beam_directions(profile, pose, K, h, w, seed=seed)
        ref = _beams_reference(profile, pose, K, h, w, seed)
        assert len(got[0]) > 10_000
        for a, b in zip(got, ref):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_zbuffer_keeps_the_nearest_return_per_pixel():
    rng = np.random.default_rng(0)
    h, w = 40, 60
    K = intrinsics_for_canvas(h, w, fx=50.0)
    pts = np.stack([rng.uniform(-8, 8, 5000), rng.uniform(-3, 3, 5000), rng.uniform(-1, 30, 5000)], 1)
    pts[100:200] = pts[:100] * [1, 1, 1.5]  # same pixel rays, farther: must lose
    pts[200:300] = pts[:100]                # exact duplicates: same value either way
    sparse, n_in = project_points(pts, K, h, w)
    # reference: sort by (pixel, z), keep the first of each pixel
    z = pts[:, 2]
    front = z > 1e-6
    p, z = pts[front], z[front]
    u = np.rint((K[0, 0] * p[:, 0] + K[0, 1] * p[:, 1]) / z + K[0, 2])
    v = np.rint(K[1, 1] * p[:, 1] / z + K[1, 2])
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    lin = v[inside].astype(np.int64) * w + u[inside].astype(np.int64)
    zi = z[inside]
    order = np.lexsort((zi, lin))
    lin, zi = lin[order], zi[order]
    first = np.ones(len(lin), bool)
    first[1:] = lin[1:] != lin[:-1]
    ref = np.zeros((h, w), np.float32)
    ref.reshape(-1)[lin[first]] = zi[first]
    assert n_in == int(inside.sum()) and n_in > 1000
    assert sparse.tobytes() == ref.tobytes()
