"""Real-scan readers (storage.lidar_scans) and sensor-profile fitting (tasks.calibrate, calibrate-sensor)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.cli import main
from storage.lidar_scans import read_calib, read_scan
from tasks.calibrate import (RANGE_BINS_M, FitOptions, cluster_elevations, firing_ranges_in_photo, fit_detection_range,
                             fit_profile, mount_from_pose, with_detection)
from tasks.errors import GeometryError, InputError
from tasks.lidar import CAM_FROM_LIDAR_AXES, detection_probability, sensor_pose
from tasks.sensors import DETECTION_LEVELS, load_profile, parse_profile

FIX = Path(__file__).resolve().parent / "fixtures" / "real_lidar"
NUS_SCAN = FIX / "nuscenes_front.pcd.bin"
NUS_CALIB = FIX / "nuscenes_front_calib.json"
KITTI_CALIB = FIX / "kitti_2011_09_26_calib.txt"


def synthetic_sweep(elevations, *, step=0.4, drop=0.05, noise=0.02, seed=0, markers=True, wall_runs=0):
    """A spinning sensor 1.8 m above flat ground inside a round wall of radius 25 m (every firing kept;
    misses as zero points when `markers`), with random drops and Gaussian range noise; `wall_runs` > 0 also
    loses every third run of that many columns on the wall (far foliage / glass)."""
    rng = np.random.default_rng(seed)
    az = np.radians(np.arange(0.0, 360.0, step))
    el = np.radians(np.asarray(elevations, dtype=np.float64))
    A, E = np.meshgrid(az, el)  # (beams, columns)
    d = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1)
    r_ground = np.where(d[..., 2] < 0, -1.8 / np.minimum(d[..., 2], -1e-9), np.inf)
    r_wall = 25.0 / np.hypot(d[..., 0], d[..., 1])
    wall_ok = np.abs(1.8 + r_wall * d[..., 2]) < 1.8 + 6.0  # the wall is 6 m tall above the ground
    r = np.minimum(r_ground, np.where(wall_ok, r_wall, np.inf))
    hit = np.isfinite(r) & (rng.random(r.shape) >= drop)
    if wall_runs:
        on_wall = np.isfinite(r_wall) & wall_ok & (r_wall < r_ground)
        hit &= ~(on_wall & ((np.arange(len(az)) // wall_runs) % 3 == 0)[None, :])
    r = r + rng.normal(0.0, noise, r.shape)
    pts = np.where(hit[..., None], d * r[..., None], 0.0)
    ring = np.broadcast_to(np.arange(len(el))[:, None], hit.shape)
    keep = np.ones_like(hit) if markers else hit
    return pts[keep].reshape(-1, 3), ring[keep].ravel()


# ------------------------------------------------------------------------------------------- readers
def test_read_nuscenes_fixture_and_calibration():
    s = read_scan(NUS_SCAN)
    assert s.points.shape == (520 * 32, 3) and s.ring is not None
    assert set(np.unique(s.ring)) == set(range(32)) and s.intensity is not None
    c = read_calib(NUS_CALIB)
    assert c.K.shape == (3, 3) and c.cam_from_lidar.shape == (4, 4)
    assert c.image == NUS_CALIB.parent / "nuscenes_front.jpg"
    np.testing.assert_allclose(c.cam_from_lidar[:3, 3], [0.0169, -0.3290, -0.4292], atol=1e-3)


def test_formats_round_trip(tmp_path):
    s = read_scan(NUS_SCAN)
    pts = s.points.astype(np.float32)
    inten = s.intensity
    # KITTI .bin: x, y, z, reflectance, no rings
    np.column_stack([pts, inten]).astype("<f4").tofile(tmp_path / "a.bin")
    k = read_scan(tmp_path / "a.bin")
    assert k.ring is None and np.allclose(k.points, pts)
    # .npy N x 3 / N x 5 and .npz with key "data"
    np.save(tmp_path / "b.npy", pts)
    assert read_scan(tmp_path / "b.npy").intensity is None
    np.save(tmp_path / "c.npy", np.column_stack([pts, inten, s.ring]))
    assert np.array_equal(read_scan(tmp_path / "c.npy").ring, s.ring)
    np.savez(tmp_path / "d.npz", data=np.column_stack([pts, inten]))
    assert np.allclose(read_scan(tmp_path / "d.npz").points, pts)
    # PCD, ASCII and binary, with a ring field
    n = 200
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity ring\nSIZE 4 4 4 4 2\nTYPE F F F F U\n"
              f"COUNT 1 1 1 1 1\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n")
    rows = "\n".join(f"{x:.6f} {y:.6f} {z:.6f} {i:.1f} {r}" for (x, y, z), i, r in zip(pts[:n], inten[:n], s.ring[:n]))
    (tmp_path / "e.pcd").write_text(header + "DATA ascii\n" + rows + "\n")
    a = read_scan(tmp_path / "e.pcd")
    assert np.allclose(a.points, pts[:n], atol=1e-5) and np.array_equal(a.ring, s.ring[:n])
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])
    rec["x"], rec["y"], rec["z"] = pts[:n].T
    rec["intensity"], rec["ring"] = inten[:n], s.ring[:n]
    (tmp_path / "f.pcd").write_bytes((header + "DATA binary\n").encode() + rec.tobytes())
    b = read_scan(tmp_path / "f.pcd")
    assert np.array_equal(b.points, pts[:n].astype(np.float64)) and np.array_equal(b.ring, s.ring[:n])


@pytest.mark.parametrize("name, content, reason", [
    ("empty.bin", b"", "zero-byte"),
    ("odd.bin", b"\0" * 20, "multiple of 4 float32"),
    ("odd.pcd.bin", b"\0" * 16, "multiple of 5 float32"),
    ("bad.npy", b"not numpy", "not a readable NumPy"),
    ("c.pcd", b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\nHEIGHT 1\nPOINTS 2\n"
              b"DATA binary_compressed\n\0\0\0\0", "not supported"),
    ("t.pcd", b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 9\nHEIGHT 1\nPOINTS 9\n"
              b"DATA binary\n\0\0\0\0", "truncated"),
    ("noxyz.pcd", b"FIELDS a b\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2\n", "no x, y, z"),
    ("scan.las", b"LASF", "unknown scan format"),
])
def test_malformed_scans_name_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as exc:
        read_scan(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_shapes_and_rings(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(12, np.float32))
    with pytest.raises(InputError, match="N x 3"):
        read_scan(tmp_path / "flat.npy")
    arr = np.zeros((4, 5), np.float32)
    arr[:, 4] = [0, 1, 2.5, 3]
    np.save(tmp_path / "ring.npy", arr)
    with pytest.raises(InputError, match="ring index"):
        read_scan(tmp_path / "ring.npy")
    with pytest.raises(InputError, match="no such scan"):
        read_scan(tmp_path / "missing.pcd.bin")


def test_kitti_and_dgp_calibration(tmp_path):
    c = read_calib(KITTI_CALIB)
    assert c.K[0, 0] == pytest.approx(721.5377)
    mount = mount_from_pose(c.cam_from_lidar)
    # camera 2 sits ~6 cm right of camera 0: the LiDAR is ~6 cm left of it, 8 cm up, 27 cm back
    np.testing.assert_allclose(mount["translation_m"], [0.0571, -0.0755, -0.2694], atol=2e-4)
    assert read_calib(KITTI_CALIB, camera="0").cam_from_lidar[0, 3] == pytest.approx(-0.0028, abs=2e-4)
    # A DGP / DDAD calibration: LiDAR at the vehicle origin, camera 1.6 m forward looking ahead
    q = {"qw": 0.5, "qx": -0.5, "qy": 0.5, "qz": -0.5}  # camera axes: z forward = vehicle x
    dgp = {"names": ["LIDAR", "CAMERA_01"],
           "intrinsics": [{"fx": 0, "fy": 0, "cx": 0, "cy": 0}, {"fx": 1000.0, "fy": 1000.0, "cx": 960.0, "cy": 600.0}],
           "extrinsics": [{"rotation": {"qw": 1.0, "qx": 0.0, "qy": 0.0, "qz": 0.0}, "translation": {"x": 0, "y": 0, "z": 0}},
                          {"rotation": q, "translation": {"x": 1.6, "y": 0.0, "z": 1.4}}]}
    (tmp_path / "dgp.json").write_text(json.dumps(dgp))
    d = read_calib(tmp_path / "dgp.json")
    p_cam = d.cam_from_lidar @ np.array([11.6, 0.0, 1.4, 1.0])  # 10 m straight ahead of the camera
    np.testing.assert_allclose(p_cam[:3], [0.0, 0.0, 10.0], atol=1e-9)
    with pytest.raises(InputError, match="no camera"):
        read_calib(tmp_path / "dgp.json", camera="CAMERA_09")


@pytest.mark.parametrize("text, reason", [
    ("{not json", "malformed JSON"),
    ('{"cam2img": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}', "needs cam2img"),
    ('{"cam2img": [1, 2, 3], "lidar2cam": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}', "3x3"),
    ('{"cam2img": [[1,0,0],[0,1,0],[0,0,1]], "lidar2cam": [[2,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}', "rigid"),
])
def test_malformed_calibration(tmp_path, text, reason):
    path = tmp_path / "calib.json"
    path.write_text(text)
    with pytest.raises(InputError, match=reason) as exc:
        read_calib(path)
    assert str(path) in str(exc.value)
    (tmp_path / "k.txt").write_text("P0: 1 2 3\n")
    with pytest.raises(InputError, match="P2"):
        read_calib(tmp_path / "k.txt")


# --------------------------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("rpy", [(0.0, 0.0, 0.0), (-1.12, 0.39, -90.2), (3.0, -2.0, 45.0)])
def test_mount_from_pose_inverts_sensor_pose(rpy):
    prof = parse_profile({"name": "m", "elevations_deg": [0.0], "azimuth_step_deg": 1.0, "max_range_m": 10.0,
                          "mount": {"translation_m": [0.1, -0.2, -0.3], "rotation_deg": list(rpy)}}, "m")
    pose = sensor_pose(prof, seed=0, jitter=False)
    m = mount_from_pose(pose)
    np.testing.assert_allclose(m["rotation_deg"], rpy, atol=2e-3)
    np.testing.assert_allclose(m["translation_m"], [0.1, -0.2, -0.3], atol=1e-4)


def test_fit_recovers_a_known_sensor():
    truth = np.array([-24.0, -18.5, -14.0, -10.3, -7.0, -4.6, -2.9, -1.6, -0.5, 0.5, 1.6, 3.0])
    pts, ring = synthetic_sweep(truth, step=0.4, drop=0.05, noise=0.02)
    fit = fit_profile([pts], [ring], None, name="synthetic")
    p = fit.profile
    np.testing.assert_allclose(p["elevations_deg"], truth, atol=0.01)
    assert p["azimuth_step_deg"] == pytest.approx(0.4, rel=1e-6)  # every firing kept: the exact column count
    assert p["drop"]["random"] == pytest.approx(0.05, abs=0.015)
    assert p["range_noise_std_m"] == pytest.approx(0.02, rel=0.25)
    assert 24.0 <= p["max_range_m"] <= 27.0
    assert "far_max" not in p["drop"] and "grazing_max" not in p["drop"]  # no range/incidence dependence
    parse_profile(p, "fitted")  # loads as a profile
    # Without ring ids (and without no-return markers) the beams come from elevation clustering.
    pts2, _ = synthetic_sweep(truth, step=0.4, drop=0.05, noise=0.02, markers=False, seed=1)
    fit2 = fit_profile([pts2], [None], None, name="clustered")
    np.testing.assert_allclose(fit2.profile["elevations_deg"], truth, atol=0.02)
    assert fit2.profile["azimuth_step_deg"] == pytest.approx(0.4, rel=0.01)
    assert fit2.report["elevation_method"] == "elevation clustering"


def test_runs_of_lost_returns_on_a_far_surface_give_a_range_rise():
    """A third of the wall (25 m) loses runs of 6 columns (2.4 deg): no column there has both neighbours,
    but the runs are bracketed by the wall's returns within drop_gap_deg, so the fit sees a rise with range
    from the ground's random level; the report splits it by beam group."""
    truth = np.array([-24.0, -18.5, -14.0, -10.3, -7.0, -4.6, -2.9, -1.6, -0.5, 0.5, 1.6, 3.0])
    pts, ring = synthetic_sweep(truth, step=0.4, drop=0.02, noise=0.01, wall_runs=6)
    fit = fit_profile([pts], [ring], None, name="runs")
    d, rep = fit.profile["drop"], fit.report
    assert d["random"] == pytest.approx(0.02, abs=0.01)
    assert d["far_start_m"] < 25.0 and d["far_max"] > 0.3
    wall_bin = RANGE_BINS_M.index(20.0)  # the 20-30 m bin holds the wall
    assert rep["drop_vs_range"]["rate"][wall_bin] == pytest.approx(0.02 + 0.98 / 3, abs=0.05)
    upper = rep["drop_vs_range_by_beam_group"]["at_or_above_horizontal"]
    assert upper["rate"][wall_bin] == pytest.approx(0.02 + 0.98 / 3, abs=0.06) and upper["n"][0] == 0
    # a bracket limit below the run length sees no rise at all: the runs are invisible to it
    narrow = fit_profile([pts], [ring], None, name="x", options=FitOptions(drop_gap_deg=0.4))
    assert "far_max" not in narrow.profile["drop"]


def test_cluster_elevations_separates_close_beams():
    rng = np.random.default_rng(0)
    truth = np.array([-8.0, -7.6, -7.2, -6.9, -6.5])  # 0.3-0.4 deg apart, like the HDL-64E's upper block
    el = np.concatenate([t + rng.normal(0, 0.02, 400) for t in truth])
    np.testing.assert_allclose(cluster_elevations(el), truth, atol=0.01)
    with pytest.raises(GeometryError):
        cluster_elevations(np.array([1.0, 2.0]))


def test_fit_on_the_real_nuscenes_crop():
    s = read_scan(NUS_SCAN)
    c = read_calib(NUS_CALIB)
    fit = fit_profile([s.points], [s.ring], c.cam_from_lidar, name="hdl32e_crop")
    el = np.array(fit.profile["elevations_deg"])
    assert len(el) == 32 and (np.diff(el) > 1.0).all()
    # the clipped mean stays within 0.2 deg of each ring's plain mean; the upper rings (far, undistorted
    # returns) stay near the HDL-32E datasheet (-30.67 + 4/3 k deg; this crop is one side of a motion-
    # compensated sweep, so a few tenths of a degree off)
    assert max(abs(d) for d in fit.report["elevation_minus_ring_mean_deg"]) <= 0.2
    np.testing.assert_allclose(el[16:], -30.67 + 4.0 / 3.0 * np.arange(16, 32), atol=0.25)
    assert fit.profile["azimuth_step_deg"] == pytest.approx(360.0 / 1084, rel=0.02)
    np.testing.assert_allclose(fit.profile["mount"]["rotation_deg"], [-1.12, 0.39, -90.2], atol=0.01)
    assert fit.report["no_return_markers"] > 0 and fit.report["body_returns"] > 0
    with pytest.raises(GeometryError, match="too few"):
        fit_profile([s.points[:50]], [s.ring[:50]], None, name="x")


def test_shipped_hdl32e_is_the_fit_of_the_shared_sweep(shared_data):
    """The sweep alone fixes beams, columns, random drops and the reflectance distribution of the shipped
    profile (the photo's part, the link-budget range, is checked by the slow test below)."""
    scan = shared_data / "real_lidar" / "nuscenes" / "lidar_top.pcd.bin"
    if not scan.is_file():
        pytest.skip("nuScenes sweep not in shared data")
    s = read_scan(scan)
    fit = fit_profile([s.points], [s.ring], read_calib(scan.parent / "calib.json").cam_from_lidar, name="hdl32e",
                      intensities=[s.intensity])
    shipped = load_profile("hdl32e")
    np.testing.assert_allclose(shipped.elevations_deg, fit.profile["elevations_deg"], atol=1e-4)
    assert max(abs(d) for d in fit.report["elevation_minus_ring_mean_deg"]) <= 0.2
    assert shipped.azimuth_step_deg == pytest.approx(360.0 / 1084, rel=1e-5)
    assert shipped.drop == {**shipped.drop, "random": pytest.approx(fit.profile["drop"]["random"])}
    assert shipped.drop["far_max"] == 0.0  # the link budget replaces the sweep-only far rise
    assert shipped.detection["reflectance_quantiles"] == pytest.approx(fit.reflectance_quantiles)
    # the sweep alone sees a weaker loss with range than the photo shows (whole crowns lost unseen)
    assert fit.report["reflectance"]["sweep_only_range_m"] > shipped.detection["range_m"]


@pytest.mark.slow
def test_shipped_hdl32e_link_budget_is_the_photo_fit(shared_data):
    from tasks.fidelity_tasks import fitted_profile_from_scans

    nus = shared_data / "real_lidar" / "nuscenes"
    if not nus.is_dir():
        pytest.skip("nuScenes sweep not in shared data")
    fit = fitted_profile_from_scans([str(nus / "lidar_top.pcd.bin")], str(nus / "calib.json"), name="hdl32e")
    shipped = load_profile("hdl32e")
    assert fit.profile["detection"] == shipped.detection and fit.profile["drop"] == {"random": shipped.drop["random"]}
    by = fit.report["detection_fit"]["by_range"]
    obs, pred, n = (np.array(by[k]) for k in ("observed", "predicted", "n"))
    assert (np.abs(obs - pred)[n >= 100] < 0.2).all()  # one parameter explains the loss at every range with data


def test_link_budget_fit_recovers_a_known_range():
    rng = np.random.default_rng(0)
    rho = np.exp(rng.normal(0.0, 0.8, 20000))
    q = np.quantile(rho / np.median(rho), DETECTION_LEVELS).tolist()
    ranges = rng.uniform(2.0, 120.0, 6000)
    truth = {"range_m": 40.0, "reflectance_quantiles": q}
    returned = rng.random(ranges.size) < 0.97 * detection_probability(truth, ranges)
    fit = fit_detection_range(ranges, returned, q, base_drop=0.03)
    assert fit["range_m"] == pytest.approx(40.0, rel=0.05) and fit["firings"] == 6000
    by = fit["by_range"]
    np.testing.assert_allclose(by["observed"], by["predicted"], atol=0.08)
    with pytest.raises(GeometryError, match="too few"):
        fit_detection_range(ranges[:10], returned[:10], q)


def test_intensities_give_the_reflectance_distribution_and_the_far_rise_gives_way():
    """Intensities = reflectance (median 1) for returns above the link budget of a 40 m sensor: the fit
    reports the near reflectances normalised by their median and, from the weakest far return, a range
    near 40 m; with a photo fit (with_detection) the profile carries `detection` and no linear far rise."""
    pts, ring = synthetic_sweep(np.linspace(-20.0, 4.0, 13), step=0.4, drop=0.02, noise=0.01, wall_runs=8)
    rng = np.random.default_rng(1)
    r = np.linalg.norm(pts, axis=1)
    refl = 5.0 * rng.uniform(0.0, 2.0, r.size)
    lost = (r > 0) & (refl < 5.0 * (r / 40.0) ** 2)
    pts[lost] = 0.0  # below the link budget: a no-return marker
    fit = fit_profile([pts], [ring], None, name="x", intensities=[refl])
    rep = fit.report["reflectance"]
    assert rep["median_intensity"] == pytest.approx(5.0, rel=0.1)
    assert fit.reflectance_quantiles[10] == pytest.approx(1.0) and fit.reflectance_quantiles[-1] == pytest.approx(2.0, abs=0.1)
    assert 35.0 < rep["sweep_only_range_m"] < 48.0
    assert "far_max" in fit.profile["drop"]  # the sweep-only fit keeps its linear rise (runs on the wall)
    dirs, returned = fit.firings[0]
    assert dirs.shape == (13 * 900, 3) and returned.shape == (13 * 900,) and np.allclose(np.linalg.norm(dirs, axis=1), 1)
    both = with_detection(fit, {"range_m": 40.0, "firings": 100})
    assert "far_max" not in both.profile["drop"] and both.profile["detection"]["range_m"] == 40.0
    assert both.report["replaced_far_rise"]["far_max"] == fit.profile["drop"]["far_max"]
    assert parse_profile(both.profile, "x").detection["reflectance_quantiles"] == fit.reflectance_quantiles
    plain = fit_profile([pts], [ring], None, name="x")
    assert plain.reflectance_quantiles is None and plain.report["reflectance"] is None
    with pytest.raises(GeometryError, match="intensities"):
        with_detection(plain, {"range_m": 40.0})


def test_firing_ranges_in_photo_meet_the_photos_ground():
    """Firings cast against the mesh of a photo's depth: a camera 1.5 m above flat ground, the LiDAR 0.3 m above
    the camera; a firing with camera-frame direction d meets the ground at range 1.8 / d_y. Firings at the sky
    (no surface) are left out; the returned flags travel with their firing."""
    h, w = 120, 160
    K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])
    v = np.arange(h, dtype=np.float64)[:, None] - K[1, 2]
    depth = np.where(v > 2, 1.5 * K[1, 1] / np.maximum(v, 1e-9), 0.0).repeat(w, 1).astype(np.float32)
    T = np.eye(4)
    T[:3, :3] = CAM_FROM_LIDAR_AXES
    T[:3, 3] = [0.0, -0.3, 0.0]
    el, az = np.meshgrid(np.radians([-20.0, -12.0, -8.0, 10.0]), np.radians(np.arange(-30.0, 31.0, 3.0)), indexing="ij")
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    returned = np.arange(len(dirs)) % 2 == 0
    ranges, ret = firing_ranges_in_photo((dirs, returned), depth, K, T)
    d_cam = dirs @ T[:3, :3].T
    ground = d_cam[:, 1] > 0.1
    assert len(ranges) == ground.sum() and (ret == returned[ground]).all()  # the upward beam (sky) is left out
    np.testing.assert_allclose(ranges, 1.8 / d_cam[ground, 1], rtol=0.02)
    with pytest.raises(GeometryError, match="no firing"):
        firing_ranges_in_photo((-dirs, returned), depth, K, T)


def test_calibrate_sensor_cli(tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    assert main(["calibrate-sensor", str(NUS_SCAN), "--calib", str(NUS_CALIB), "--out", str(out),
                 "--report", str(tmp_path / "fit.json")]) == 0
    prof = load_profile(out)
    assert prof.name == "mine" and prof.n_beams == 32
    assert yaml.safe_load(out.read_text())["mount"]["translation_m"] == pytest.approx([0.0169, -0.329, -0.4292], abs=1e-3)
    assert json.loads((tmp_path / "fit.json").read_text())["beams"] == 32
    printed = capsys.readouterr().out
    assert "32 beams" in printed and "link budget from" in printed  # the calibration names the fixture's photo
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert prof.detection["range_m"] == fit["detection_fit"]["range_m"] > 0 and prof.drop["far_max"] == 0.0
    assert main(["calibrate-sensor", str(NUS_SCAN), "--calib", str(NUS_CALIB), "--out", str(out), "--no-photo"]) == 0
    assert load_profile(out).detection is None and "link budget" not in capsys.readouterr().out
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 7)
    assert main(["calibrate-sensor", str(bad), "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1
