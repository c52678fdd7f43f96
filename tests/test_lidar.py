"""Ray-cast backends agree on analytic scenes and KITTI meshes; simulate_lidar is sane and deterministic."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from tasks.errors import GeometryError
from tasks.lidar import sensor_pose, simulate_lidar, simulate_lidar_on_mesh
from tasks.mesh import MeshOptions, depth_to_grid
from tasks.pattern_stats import pattern_stats
from tasks.raycast import cast, render_depth
from tasks.sensors import list_profiles

H, W = 352, 1216
K_KITTI = np.array([[721.5377, 0.0, 609.5593 - 13], [0.0, 721.5377, 172.854 - 23], [0.0, 0.0, 1.0]])
K_SMALL = np.array([[60.0, 0.0, 39.5], [0.0, 60.0, 29.5], [0.0, 0.0, 1.0]])
ALL = ("fast", "embree", "pyrender")


def _rays(n_az=41, n_el=31, origin=(0.0, 0.0, 0.0), spread=0.45):
    tx, ty = np.meshgrid(np.linspace(-spread, spread, n_az), np.linspace(-spread * 0.7, spread * 0.7, n_el))
    dirs = np.stack([tx.ravel(), ty.ravel(), np.ones(tx.size)], axis=1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.tile(origin, (len(dirs), 1)), dirs


def _scene(depth, backend):
    grid = depth_to_grid(depth, K_SMALL)
    return grid if backend == "fast" else grid.to_mesh()


@pytest.mark.parametrize("backend", ALL)
def test_plane_at_known_distance_gives_exact_ranges(backend):
    origins, dirs = _rays(origin=(0.02, -0.05, -0.2))
    ranges = cast(backend, _scene(np.full((60, 80), 10.0), backend), origins, dirs)
    expected = (10.0 - origins[:, 2]) / dirs[:, 2]
    assert np.isfinite(ranges).all()
    tol = 1e-9 if backend != "pyrender" else 2e-3
    np.testing.assert_allclose(ranges, expected, atol=tol)


@pytest.mark.parametrize("backend", ALL)
def test_box_in_front_of_wall_occludes(backend):
    depth = np.full((60, 80), 20.0)
    depth[20:40, 30:50] = 5.0                   # box front face, cut from the wall by the ratio rule
    origins, dirs = _rays(origin=(0.0, 0.0, 0.0))
    ranges = cast(backend, _scene(depth, backend), origins, dirs)
    uvw = dirs @ K_SMALL.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    on_box = (u > 31) & (u < 48) & (v > 21) & (v < 38)
    on_wall = ((u < 28) | (u > 51) | (v < 18) | (v > 41)) & (u > 0.5) & (u < 78.5) & (v > 0.5) & (v < 58.5)
    tol = 1e-9 if backend != "pyrender" else 2e-3
    np.testing.assert_allclose(ranges[on_box] * dirs[on_box, 2], 5.0, atol=tol)
    np.testing.assert_allclose(ranges[on_wall] * dirs[on_wall, 2], 20.0, atol=tol * 4)


@pytest.mark.parametrize("backend", ALL)
def test_empty_scene_has_no_returns(backend):
    origins, dirs = _rays()
    assert np.isinf(cast(backend, _scene(np.zeros((60, 80)), backend), origins, dirs)).all()


def test_cast_rejects_bad_input():
    origins, dirs = _rays()
    grid = depth_to_grid(np.full((60, 80), 10.0), K_SMALL)
    with pytest.raises(GeometryError, match="unknown ray-cast backend"):
        cast("optix", grid, origins, dirs)
    with pytest.raises(GeometryError, match="non-finite"):
        cast("fast", grid, origins, np.full_like(dirs, np.nan))
    with pytest.raises(GeometryError, match="depth grid"):
        cast("fast", grid.to_mesh(), origins, dirs)


@pytest.fixture(scope="module")
def kitti_depth(kitti_gt_dir):
    """First shared KITTI GT frame, KITTI crop, densified by nearest valid pixel; rows above the first
    GT row (no LiDAR there: sky/far) stay empty."""
    from scipy.ndimage import distance_transform_edt

    gt = np.asarray(Image.open(sorted((kitti_gt_dir / "depth").glob("*.png"))[0]), dtype=np.float64) / 256.0
    gt = gt[-H:, 13:13 + W]
    _, (ii, jj) = distance_transform_edt(gt == 0, return_indices=True)
    dense = gt[ii, jj]
    dense[: np.nonzero((gt > 0).any(axis=1))[0][0]] = 0.0
    K = np.array([[707.0493, 0.0, 604.0814 - 13], [0.0, 707.0493, 180.5066 - 23], [0.0, 0.0, 1.0]])
    return dense, K


def test_fast_matches_embree_on_kitti_mesh(kitti_depth):
    depth, K = kitti_depth
    grid = depth_to_grid(depth, K)
    pose = sensor_pose("hdl64e_kitti", seed=0, jitter=False).astype(np.float64)
    from tasks.lidar import beam_directions

    origins, dirs, _ = beam_directions("hdl64e_kitti", pose, K, H, W, seed=0)
    fast = cast("fast", grid, origins, dirs)
    ref = cast("embree", grid.to_mesh(), origins, dirs)
    hf, hr = np.isfinite(fast), np.isfinite(ref)
    assert (hf == hr).mean() >= 0.995
    both = hf & hr
    assert both.sum() > 10000
    assert (np.abs(fast[both] - ref[both]) < 0.01).mean() >= 0.99


def _street_mesh() -> trimesh.Trimesh:
    """KITTI-like street in the camera frame: road 1.65 m below the camera, buildings 7-9 m to each side
    (8 m tall), a car 14 m ahead, open sky above."""
    parts = [trimesh.creation.box(extents=(30.0, 0.02, 120.0), transform=trimesh.transformations.translation_matrix((0, 1.66, 60)))]
    for x in (-8.0, 9.0):
        parts.append(trimesh.creation.box(extents=(0.5, 9.65, 110.0),
                                          transform=trimesh.transformations.translation_matrix((x, 1.65 - 4.825, 60))))
    parts.append(trimesh.creation.box(extents=(1.8, 1.5, 4.0), transform=trimesh.transformations.translation_matrix((-1.5, 0.9, 16))))
    return trimesh.util.concatenate(parts)


@pytest.fixture(scope="module")
def street():
    mesh = _street_mesh()
    return mesh, render_depth("embree", mesh, K_KITTI, H, W)


def test_hdl64e_on_kitti_like_street_looks_like_velodyne_raw(street):
    _, depth = street
    scan = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=7)
    stats = pattern_stats(scan.sparse, ring=scan.ring)
    assert 0.04 <= stats["density"] <= 0.07, stats
    assert 0.2 <= stats["first_row_frac"] <= 0.4, stats
    assert len(stats["points_per_beam"]) <= 64 and stats["points"] == np.count_nonzero(scan.sparse)
    assert scan.sparse.dtype == np.float32 and scan.pose.dtype == np.float32 and scan.ring.dtype == np.int16
    assert len(scan.points_cam) == len(scan.ring) == scan.stats["returns"]
    valid = scan.sparse > 0
    # returns lie on the surface up to range noise (2 cm): compare with the depth map itself
    assert np.median(np.abs(scan.sparse[valid] - depth[valid])) < 0.05


def test_depth_pipeline_agrees_with_true_mesh_scan(street):
    mesh, depth = street
    pose = sensor_pose("hdl64e_kitti", seed=3)
    from_depth = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=3, pose=pose)
    truth = simulate_lidar_on_mesh(mesh, K_KITTI, H, W, "hdl64e_kitti", seed=3, pose=pose)
    a, b = pattern_stats(from_depth.sparse)["density"], pattern_stats(truth.sparse)["density"]
    assert abs(a - b) / b < 0.1


def test_determinism_and_seed_dependence(street):
    _, depth = street
    a = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=11)
    b = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=11)
    c = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=12)
    assert a.sparse.tobytes() == b.sparse.tobytes() and a.pose.tobytes() == b.pose.tobytes()
    assert a.sparse.tobytes() != c.sparse.tobytes()


def test_backends_give_the_same_scan(street):
    _, depth = street
    pose = sensor_pose("hdl64e_kitti", seed=5)
    fast = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=5, pose=pose, backend="fast")
    embree = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=5, pose=pose, backend="embree")
    both = (fast.sparse > 0) & (embree.sparse > 0)
    assert ((fast.sparse > 0) == (embree.sparse > 0)).mean() > 0.999
    assert np.abs(fast.sparse[both] - embree.sparse[both]).max() < 1e-4


def test_see_through_adds_hidden_background_points():
    K = K_KITTI
    depth = np.full((H, W), 25.0, dtype=np.float32)
    depth[150:300, 500:700] = 6.0                  # a foreground block in front of a wall
    plain = simulate_lidar(depth, K, "hdl64e_kitti", seed=1)
    seen = simulate_lidar(depth, K, "hdl64e_kitti", seed=1, see_through=True)
    block = np.zeros_like(depth, dtype=bool)
    block[150:300, 500:700] = True
    hidden = lambda s: int(((s.sparse > 10) & block).sum())  # noqa: E731 - wall depth on block pixels
    assert hidden(plain) == 0 and hidden(seen) > 0


@pytest.mark.parametrize("name", sorted(list_profiles()))
def test_every_profile_scans_the_street(street, name):
    _, depth = street
    scan = simulate_lidar(depth, K_KITTI, name, seed=2)
    stats = pattern_stats(scan.sparse, ring=scan.ring)
    assert 0.003 < stats["density"] < 0.1, (name, stats)
    assert stats["rows_covered"] > 50


def test_simulate_rejects_odd_input():
    with pytest.raises(GeometryError, match="non-finite"):
        simulate_lidar(np.full((20, 20), np.inf), K_SMALL, "vlp16", seed=0)
    with pytest.raises(GeometryError, match="no surface"):
        simulate_lidar(np.zeros((20, 20)), K_SMALL, "vlp16", seed=0)
    with pytest.raises(GeometryError, match="known: "):
        simulate_lidar(np.ones((20, 20)), K_SMALL, "nope", seed=0)
    with pytest.raises(GeometryError, match="3x3"):
        simulate_lidar(np.ones((20, 20)), np.eye(2), "vlp16", seed=0)
    with pytest.raises(GeometryError, match="4x4"):
        simulate_lidar(np.ones((20, 20)), K_SMALL, "vlp16", seed=0, pose=np.eye(3))
    with pytest.raises(GeometryError, match="non-empty"):
        simulate_lidar_on_mesh(trimesh.Trimesh(), K_SMALL, 20, 20, "vlp16", seed=0)


def test_mesh_options_reach_the_mesh(street):
    _, depth = street
    coarse = simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=4, mesh_options=MeshOptions(stride=2))
    assert coarse.stats["mesh_faces"] < simulate_lidar(depth, K_KITTI, "hdl64e_kitti", seed=4).stats["mesh_faces"] / 3


def test_vertical_offsets_raise_the_beam_origins():
    """A beam fired 0.2 m above the sensor origin hits a wall 0.2 m higher; the image sector still covers it."""
    from tasks.sensors import parse_profile

    raw = {"name": "w", "elevations_deg": [0.0], "azimuth_step_deg": 0.5, "max_range_m": 100.0,
           "mount": {"translation_m": [0.0, 0.0, 0.0]}}
    depth = np.full((H, W), 20.0, dtype=np.float32)
    pose = sensor_pose(parse_profile(raw, "w"), seed=0, jitter=False)
    flat = simulate_lidar(depth, K_KITTI, parse_profile(raw, "w"), seed=0, pose=pose)
    high = simulate_lidar(depth, K_KITTI, parse_profile({**raw, "vertical_offsets_m": 0.2}, "w"), seed=0, pose=pose)
    assert len(flat.points_cam) == len(high.points_cam) > 50
    np.testing.assert_allclose(flat.points_cam[:, 1] - high.points_cam[:, 1], 0.2, atol=1e-3)  # camera y is down
    rows = lambda s: np.nonzero((s.sparse > 0).any(1))[0]  # noqa: E731
    assert rows(high).min() < rows(flat).min()


def test_sample_gt_with_profile_keeps_one_gt_pixel_per_firing():
    """On a dense fronto-parallel wall every firing of the sector finds its pixel: one return per firing,
    on the rows the beam elevations project to, with the GT's own values; seeded and deterministic."""
    from tasks.lidar import sample_gt_with_profile
    from tasks.sensors import parse_profile

    raw = {"name": "g", "elevations_deg": [2.0, 0.0, -2.0, -4.0], "azimuth_step_deg": 0.5, "max_range_m": 100.0,
           "mount": {"translation_m": [0.0, 0.0, 0.0]}}
    prof = parse_profile(raw, "g")
    gt = np.full((H, W), 20.0, dtype=np.float32)
    pose = sensor_pose(prof, seed=0, jitter=False)
    s = sample_gt_with_profile(gt, K_KITTI, prof, seed=0, pose=pose)
    rows = np.nonzero((s > 0).any(1))[0]
    # beam e crosses the wall at z = 20 m, y = -20 tan(e): row = cy - fx tan(e) at the image centre
    expect = K_KITTI[1, 2] - K_KITTI[0, 0] * np.tan(np.radians([2.0, 0.0, -2.0, -4.0]))
    for e in expect:
        assert np.abs(rows - e).min() <= 2
    fov = 2 * np.degrees(np.arctan(W / 2 / K_KITTI[0, 0]))
    assert abs(np.count_nonzero(s) - 4 * fov / 0.5) < 0.1 * 4 * fov / 0.5  # ~ one per firing in the FOV
    assert set(np.unique(s[s > 0])) == {20.0}
    again = sample_gt_with_profile(gt, K_KITTI, prof, seed=0, pose=pose)
    assert again.tobytes() == s.tobytes()
    holes = gt.copy()
    holes[:, ::2] = 0  # semi-dense GT: firings that find no pixel within the tolerance give no return
    assert np.count_nonzero(sample_gt_with_profile(holes, K_KITTI, prof, seed=0, pose=pose, tolerance_px=0.3)) < np.count_nonzero(s)
    with pytest.raises(GeometryError, match="spinning"):
        sample_gt_with_profile(gt, K_KITTI, "livox_avia", seed=0)


def test_sample_gt_reaches_kittis_first_return_row(kitti_gt_dir):
    """The factory HDL-64E geometry on KITTI ground truth puts the first return where KITTI's real
    velodyne_raw has it (row ~120 of 375)."""
    from storage.pngio import read_depth_png
    from tasks.lidar import sample_gt_with_profile

    gt = read_depth_png(kitti_gt_dir / "depth" / "0000000005.png")
    K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
    stats = pattern_stats(sample_gt_with_profile(gt, K, "hdl64e_kitti", seed=0), crop=gt.shape)
    assert 110 <= stats["first_row"] <= 130 and 0.015 < stats["density"] < 0.05


def test_link_budget_drops_far_returns_by_the_fitted_reflectances():
    """A profile's `detection`: at range r only reflectances >= (r / range_m)^2 x the median return. With
    reflectances uniform on [0, 2] (median 1), a firing at range_m returns with probability 1/2; on a wall at
    30 m (ranges 30-39 m across the image) the share kept is the mean of that probability over the returns."""
    from tasks.lidar import detection_probability
    from tasks.sensors import DETECTION_LEVELS, parse_profile

    det = {"range_m": 30.0, "reflectance_quantiles": (2.0 * DETECTION_LEVELS).tolist()}
    p = detection_probability(det, np.array([0.0, 15.0, 30.0, 30.0 * np.sqrt(2.0), 100.0]))
    np.testing.assert_allclose(p, [1.0, 1.0 - 0.25 / 2, 0.5, 0.0, 0.0], atol=1e-6)
    raw = {"name": "w", "elevations_deg": [1.0, 0.0, -1.0], "azimuth_step_deg": 0.2, "max_range_m": 100.0,
           "mount": {"translation_m": [0.0, 0.0, 0.0]}}
    depth = np.full((H, W), 30.0, dtype=np.float32)
    pose = sensor_pose(parse_profile(raw, "w"), seed=0, jitter=False)
    plain = simulate_lidar(depth, K_KITTI, parse_profile(raw, "w"), seed=3, pose=pose)
    budget = parse_profile({**raw, "detection": det}, "w")
    lossy = simulate_lidar(depth, K_KITTI, budget, seed=3, pose=pose)
    share = len(lossy.points_cam) / len(plain.points_cam)
    expect = detection_probability(det, np.linalg.norm(plain.points_cam - pose[:3, 3], axis=1)).mean()
    assert len(plain.points_cam) > 300 and 0.3 < expect < 0.5 and share == pytest.approx(expect, abs=0.05)
    assert simulate_lidar(depth, K_KITTI, budget, seed=3, pose=pose).sparse.tobytes() == lossy.sparse.tobytes()


def test_scan_grid_of_uint16_depth_is_simulate_lidar_of_its_conversion(street):
    """What the build does (grid straight from the store's uint16 depth, then scan_grid) is simulate_lidar of
    the converted map: same sparse map, points and statistics, with and without the see-through layer."""
    from storage.pngio import depth_to_uint16
    from tasks.lidar import scan_grid
    from tasks.mesh import MeshOptions, grid_from_uint16

    u16 = depth_to_uint16(np.where(np.isfinite(street[1]), street[1], 0.0))
    options = MeshOptions(max_depth_m=80.0)
    for see_through in (False, True):
        ref = simulate_lidar(u16 * (1.0 / 256), K_KITTI, "hdl64e_kitti", seed=4, mesh_options=options,
                             see_through=see_through)
        got = scan_grid(grid_from_uint16(u16, 1.0 / 256, K_KITTI, options), "hdl64e_kitti", seed=4,
                        mesh_options=options, see_through=see_through)
        np.testing.assert_array_equal(got.sparse, ref.sparse)
        np.testing.assert_array_equal(got.points_cam, ref.points_cam)
        assert got.stats == ref.stats and got.stats["pixels"] > 1000
