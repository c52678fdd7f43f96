"""The build's fast paths give the same numbers as the straightforward numpy they replaced.

Each test keeps the old formulation as a reference and compares bit for bit: a speed-up of the simulation
must never change a shard's bytes for the same inputs (that would need a SIMULATION_VERSION bump).
"""
from __future__ import annotations

import numpy as np
import pytest

from tasks.depth_policy import DepthPolicy, disparity_to_depth, quantile_linear
from tasks.images import intrinsics_for_canvas
from tasks.lidar import (_detection_or_one, _drop_params, _projected, _returns, beam_directions, detection_probability,
                         project_points, sensor_pose)
from tasks.pattern_stats import pattern_stats
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


@pytest.mark.parametrize("case", ["teacher-like", "negatives and zeros", "specials", "ties", "all sky", "flat"])
def test_float16_depth_policy_matches_the_float32_path(case):
    """The counting path for float16 maps gives the float32 path's depth and info bit for bit."""
    rng = np.random.default_rng(11)
    h, w = 64, 96
    rows = np.linspace(0.0, 1.0, h)[:, None]
    disp = (rows ** 2 * 5.0 + 0.05 * rng.random((h, w))).astype(np.float16)
    disp[:8] = 0.0
    if case == "negatives and zeros":
        disp[8:12] = -rng.random((4, w)).astype(np.float16)
        disp[12, :10] = np.float16(-0.0)
    elif case == "specials":
        disp[20, :5] = [np.nan, np.inf, -np.inf, np.float16(6e-8), np.float16(65504)]
        disp[21, :3] = np.frombuffer(np.array([0x7E01, 0xFE00, 0x0001], np.uint16).tobytes(), np.float16)
    elif case == "ties":
        disp = np.round(disp * 2).astype(np.float16)
    elif case == "all sky":
        disp[:] = np.nan
    elif case == "flat":
        disp[:] = np.float16(0.5)
    policies = [DepthPolicy(), DepthPolicy(far_m=(20.0, 30.0), max_depth_m=60.0, beyond_max="clamp"),
                DepthPolicy(near_quantile=1.0, far_quantile=0.0, sky_ratio=0.0)]
    for policy in policies:
        for seed in range(3):
            for affine in (None, (0.3, 0.01)):
                fast = disparity_to_depth(disp, seed=seed, policy=policy, affine=affine)
                wide = disparity_to_depth(disp.astype(np.float32), seed=seed, policy=policy, affine=affine)
                assert fast[0].tobytes() == wide[0].tobytes(), (case, policy, seed, affine)
                assert fast[1] == wide[1], (case, policy, seed, affine)


def _beams_reference(profile, pose, K, h, w, seed):
    """The per-firing trigonometry that beam_directions replaced by per-beam x per-column products."""
    import tasks.lidar as lidar
    from tasks.provenance import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "lidar-rays"))
    border = lidar._border_points(K, h, w)
    az_c, half, el_lo, el_hi = lidar._image_sector(pose, border)
    for off in (profile.vertical_offsets_m.min(), profile.vertical_offsets_m.max()):
        shifted = pose.copy()
        shifted[:3, 3] += off * pose[:3, 2]
        _, _, lo, hi = lidar._image_sector(shifted, border)
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
    _, _, n_pixels = _projected(pts, K, h, w)  # the pixel count the kernel keeps for the scan's stats
    assert n_pixels == np.count_nonzero(sparse) == int(first.sum())


def _returns_reference(profile, ranges, normals, origins, dirs, noise, u):
    """The scan's numpy formulation before the fused kernel: gate, drop, noise, points."""
    in_range = np.isfinite(ranges) & (ranges >= profile.min_range_m) & (ranges <= profile.max_range_m)
    cos_inc = np.abs(np.einsum("ij,ij->i", normals, dirs))
    p = _drop_reference(profile, np.where(in_range, ranges, 0.0), cos_inc)
    kept = in_range & (u >= p)
    r = ranges[kept] + (noise * profile.range_noise_std_m)[kept]
    kept_idx = np.nonzero(kept)[0][r > 0]
    r = r[r > 0]
    points = origins[kept_idx] + r[:, None] * dirs[kept_idx]
    return kept_idx, points, (int(np.isfinite(ranges).sum()), int(in_range.sum()), int(kept.sum()), len(kept_idx))


def _drop_reference(profile, r_gate, cos_inc):
    """tasks.lidar._drop_probability as numpy computed it before the kernel."""
    drop = profile.drop
    p = np.full(r_gate.shape, drop["random"])
    g = drop["grazing_deg"]
    if g < 90.0 and drop["grazing_max"] > 0:
        inc = np.degrees(np.arccos(np.clip(cos_inc, 0.0, 1.0)))
        p = 1 - (1 - p) * (1 - drop["grazing_max"] * np.clip((inc - g) / (90.0 - g), 0.0, 1.0))
    f0 = drop["far_start_m"]
    if f0 < profile.max_range_m and drop["far_max"] > 0:
        p = 1 - (1 - p) * (1 - drop["far_max"] * np.clip((r_gate - f0) / (profile.max_range_m - f0), 0.0, 1.0))
    if profile.detection is not None:
        p = 1 - (1 - p) * detection_probability(profile.detection, r_gate)
    return p


@pytest.mark.parametrize("sensor", ["hdl64e_kitti", "hdl32e", "livox_avia"])  # hdl32e has a link budget
def test_fused_returns_match_the_numpy_formulation(sensor):
    """Gate, drops, noise and return points in one kernel: the same kept rays and the same point bits as the
    numpy it replaced. (numpy's arccos may differ from libm's by an ulp on some CPUs; a kept/dropped decision
    moves only if a uniform draw falls inside that ulp, which these 200 k rays never show.)"""
    profile = load_profile(sensor)
    rng = np.random.default_rng(7)
    n = 200_000
    ranges = rng.uniform(-1.0, profile.max_range_m * 1.2, n)
    ranges[rng.random(n) < 0.2] = np.inf  # misses
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    normals[~np.isfinite(ranges)] = 0.0
    origins = rng.normal(size=(n, 3)) * 0.3
    noise, u = rng.normal(size=n) * 50.0, rng.random(n)  # large noise: some returns end behind the sensor
    points = np.empty((n, 3))
    index = np.empty(n, np.int64)
    counts = _returns(ranges, normals, origins, dirs, noise, u, _detection_or_one(profile, ranges),
                      float(profile.min_range_m), float(profile.max_range_m), float(profile.range_noise_std_m),
                      _drop_params(profile), points, index)
    ref_idx, ref_points, ref_counts = _returns_reference(profile, ranges, normals, origins, dirs, noise, u)
    assert counts == ref_counts and 0 < ref_counts[3] < ref_counts[2] < ref_counts[1] < ref_counts[0]
    assert index[:counts[3]].tobytes() == ref_idx.tobytes()
    assert points[:counts[3]].tobytes() == ref_points.tobytes()


@pytest.mark.parametrize("sensor", ["hdl64e_kitti", "hdl32e", "vlp16"])
def test_drop_probability_kernel_matches_the_numpy_formulation(sensor):
    """Bit for bit where no arccos is taken (hdl32e: no grazing term, a link budget; head-on and grazing rays);
    within an ulp of numpy's arccos otherwise."""
    from tasks.lidar import _drop_probability

    profile = load_profile(sensor)
    rng = np.random.default_rng(5)
    ranges = rng.uniform(0.0, profile.max_range_m * 1.1, 20_000)
    cos_inc = rng.uniform(-0.1, 1.1, 20_000)
    cos_inc[::7] = 1.0  # head-on: arccos(1) = 0 exactly
    got = _drop_probability(profile, ranges, cos_inc)
    ref = _drop_reference(profile, ranges, cos_inc)
    if sensor == "hdl32e":
        assert got.tobytes() == ref.tobytes()
    else:
        assert got[::7].tobytes() == ref[::7].tobytes()
        assert np.abs(got - ref).max() <= 4e-15


def _pattern_stats_reference(sparse, crop):
    h, w = sparse.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    c = sparse[h - ch:, (w - cw) // 2:(w - cw) // 2 + cw] > 0
    rows = np.nonzero(c.any(axis=1))[0]
    first = int(rows[0]) if len(rows) else -1
    return {"density": float(c.mean()) if c.size else 0.0, "first_row": first,
            "first_row_frac": first / c.shape[0] if first >= 0 else -1.0, "rows_covered": int(len(rows)),
            "points": int(np.count_nonzero(sparse > 0)), "crop": [int(c.shape[0]), int(c.shape[1])]}


@pytest.mark.parametrize("crop", [(352, 1216), (256, 1216), (100, 333), (500, 2000), (0, 10)])
def test_pattern_stats_one_pass_matches_the_numpy_form(crop):
    rng = np.random.default_rng(1)
    for dtype in (np.uint16, np.float32):
        sparse = (rng.random((352, 1216)) < 0.05) * rng.uniform(1, 80, (352, 1216))
        sparse[:150] = 0  # rows above the first beam
        sparse[200, :5] = 3.0  # returns outside a narrow crop's columns only
        sparse = sparse.astype(dtype)
        if dtype == np.float32:
            sparse[300, 600] = np.nan  # not a return
            sparse[301, 601] = -1.0
        assert pattern_stats(sparse, crop=crop) == _pattern_stats_reference(sparse, crop)
        assert pattern_stats(np.zeros_like(sparse), crop=crop) == _pattern_stats_reference(np.zeros_like(sparse), crop)


def test_grid_caster_cell_depth_test_changes_no_hit():
    """The per-cell depth-interval test only skips cells no hit can come from: ranges and normals are the
    same bits as testing every cell's triangles (the caster before the test), also with see-through layers."""
    from tasks.mesh import MeshOptions, background_layer, depth_to_grid
    from tasks.raycast.fast import TILE, _cast_grid, _tile_ranges

    h, w = 120, 400
    K = intrinsics_for_canvas(h, w, fx=160.0)
    rng = np.random.default_rng(7)
    v = np.arange(h, dtype=np.float64)[:, None]
    ground = np.where(v > h / 2, 1.6 * K[1, 1] / np.maximum(v - K[1, 2], 1e-3), 0.0) * np.ones((1, w))
    boxes = ground.copy()
    for _ in range(12):  # boxes in front of the ground: depth discontinuities, cut silhouettes
        y, x = int(rng.integers(10, h - 20)), int(rng.integers(0, w - 40))
        boxes[y:y + int(rng.integers(8, 40)), x:x + int(rng.integers(8, 60))] = rng.uniform(3.0, 30.0)
    noisy = np.where(boxes > 0, boxes * (1 + 0.02 * rng.standard_normal((h, w))), 0.0)
    for depth in (np.clip(ground, 0, 80), np.clip(boxes, 0, 80), np.clip(noisy, 0, 80)):
        grid = depth_to_grid(depth, K, MeshOptions())
        layers = [grid, background_layer(grid, MeshOptions(), 32)]
        for seed, sensor in ((0, "hdl64e_kitti"), (1, "vlp16"), (2, "livox_avia")):
            profile = load_profile(sensor)
            pose = sensor_pose(profile, seed=seed).astype(np.float64)
            origins, dirs, _ = beam_directions(profile, pose, K, h, w, seed=seed)
            dirs = dirs / np.linalg.norm(dirs, axis=1)[:, None]
            results = []
            for cell_test in (True, False):
                t, n = np.full(len(origins), np.inf), np.zeros((len(origins), 3))
                for g in layers:
                    tmin, tmax = _tile_ranges(g.depth, g.tri_ok, TILE)
                    _cast_grid(g.depth, g.tri_ok, g.K, np.linalg.inv(g.K), float(g.stride), tmin, tmax, TILE,
                               origins, dirs, t, n, cell_test)
                results.append((t, n))
            assert np.isfinite(results[0][0]).sum() > 100, sensor  # the scene is actually hit
            assert results[0][0].tobytes() == results[1][0].tobytes(), sensor
            assert results[0][1].tobytes() == results[1][1].tobytes(), sensor


def test_to_float16_is_numpys_rounding_bit_for_bit():
    """tasks.float16 was checked against numpy over all 2^32 float32 patterns once; this keeps a sampled check
    with every special class: signed zeros, subnormal results and their ties, overflow, infinities, NaNs."""
    from tasks.float16 import to_float16

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0, 0x80000000, 0x33000000, 0x33000001, 0x337FFFFF, 0x38800000, 0x387FFFFF, 0x38FFF000,
                      0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000, 0x7F800000, 0xFF800000, 0x7FC00000,
                      0x7F800001, 0xFFFFFFFF, 0x3F800000, 0x3F801000, 0x3F803000], dtype=np.uint32)
    ties = (np.arange(0x33000000, 0x38800000, 0x1000, dtype=np.uint32))  # subnormal range, incl. exact ties
    for u in (bits, edges, ties):
        x = u.view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            expected = x.astype(np.float16).view(np.uint16)
        assert np.array_equal(to_float16(x).view(np.uint16), expected)
    f16 = rng.random((5, 7)).astype(np.float16)
    assert to_float16(f16).tobytes() == f16.tobytes()  # already float16: returned as is


def test_float16_to_float32_is_numpys_widening_for_every_pattern():
    from tasks.float16 import float16_to_float32

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    assert float16_to_float32(every).tobytes() == every.astype(np.float32).tobytes()


def test_teacher_cache_f16d_kernels_match_the_numpy_form():
    """The cache's F16D body (row differences of the float16 bits as byte planes) and its inverse, against the
    numpy formulation they replaced: entries written by either read back the same."""
    from storage.cache import ArrayCache, _planes_row_cumsum, _row_diff_planes

    rng = np.random.default_rng(3)
    for shape in ((1, 1), (3, 7), (126, 434), (352, 1216)):
        for a in (rng.integers(0, 2**16, shape, dtype=np.uint16),
                  (rng.random(shape).cumsum(axis=1) * 3).astype(np.float16).view(np.uint16)):
            d = np.diff(a, axis=1, prepend=np.uint16(0)).astype("<u2", copy=False)
            reference = np.ascontiguousarray(d.view(np.uint8).reshape(*d.shape, 2).transpose(2, 0, 1))
            planes = _row_diff_planes(a)
            assert planes.tobytes() == reference.tobytes()
            joined = reference[0].astype(np.uint16) | (reference[1].astype(np.uint16) << 8)
            assert np.cumsum(joined, axis=1, dtype=np.uint16).tobytes() == _planes_row_cumsum(planes).tobytes()
            f = a.view(np.float16)
            assert ArrayCache._decode(ArrayCache._encode(f)).tobytes() == f.tobytes()


def test_ray_check_normalises_exactly_like_numpy_and_names_bad_rays():
    from tasks.errors import GeometryError
    from tasks.raycast import _check_rays

    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(50_000, 3)) * rng.uniform(1e-3, 1e3, (50_000, 1))
    origins = rng.normal(size=(50_000, 3))
    _, unit = _check_rays(origins, dirs)
    ref = dirs / np.linalg.norm(dirs, axis=1)[:, None]  # the numpy form it replaces
    assert unit.tobytes() == ref.tobytes()
    bad = dirs.copy()
    bad[7] = 0.0
    with pytest.raises(GeometryError, match="1 ray directions have zero length"):
        _check_rays(origins, bad)
    bad[7] = (np.nan, 0.0, 1.0)
    with pytest.raises(GeometryError, match="non-finite"):
        _check_rays(origins, bad)
    o = origins.copy()
    o[3, 2] = np.inf
    with pytest.raises(GeometryError, match="non-finite"):
        _check_rays(o, dirs)
