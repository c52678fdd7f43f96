"""Fidelity report: pattern statistics, real-vs-simulated comparison, the Prefect flow and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import GeometryError
from tasks.fidelity import (compare, fit_disparity_alignment, pattern_summary, project_sweep, see_through_share,
                            side_by_side, simulate_on_photo)
from tasks.sensors import load_profile

FIX = Path(__file__).resolve().parent / "fixtures" / "real_lidar"
NUS_SCAN = FIX / "nuscenes_front.pcd.bin"
NUS_CALIB = FIX / "nuscenes_front_calib.json"
K_KITTI = "721.5377,721.5377,609.5593,172.854"


def test_project_sweep_places_a_known_point():
    K = np.array([[100.0, 0, 50.0], [0, 100.0, 40.0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # Velodyne axes -> camera axes
    pts = np.array([[10.0, -1.0, 0.5], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-4.0, 0.0, 0.0]])
    sparse = project_sweep(pts, T, K, 80, 100)
    assert sparse[35, 60] == pytest.approx(10.0) and sparse[40, 50] == pytest.approx(5.0)
    assert np.count_nonzero(sparse) == 2  # the no-return marker and the point behind are gone
    with pytest.raises(GeometryError):
        project_sweep(np.zeros((3, 2)), T, K, 80, 100)


def test_pattern_summary_and_see_through():
    s = np.zeros((400, 1300), np.float32)
    s[100, 10:20] = 5.0
    s[300, ::2] = 20.0
    s[301, 100] = 30.0  # behind the 20 m return one row up: "see-through"
    p = pattern_summary(s)
    assert p["first_row"] == 100 and p["rows_covered"] == 3 and p["points"] == 10 + 650 + 1
    assert p["density"] == pytest.approx(661 / s.size)
    assert p["density_kitti_crop"] == pytest.approx((np.count_nonzero(s[48:, 42:1258])) / (352 * 1216))
    assert sum(p["row_histogram"]) == 661 and len(p["row_histogram"]) == 24
    assert see_through_share(s) == pytest.approx(1 / 661)
    assert see_through_share(np.zeros((4, 4))) == 0.0


def test_compare_identical_and_shifted_patterns():
    rng = np.random.default_rng(0)
    real = np.where(rng.random((200, 300)) < 0.05, rng.uniform(3, 60, (200, 300)), 0).astype(np.float32)
    same = compare(real, [real, real])
    assert same["passed"] and same["wasserstein_m"] == 0.0
    assert all(v["rel_error"] == 0 for v in same["stats"].values() if v["rel_error"] is not None)
    shifted = np.zeros_like(real)
    shifted[40:] = real[:-40] * 1.5  # pattern starts 40 rows lower, 1.5x farther
    rep = compare(real, [shifted])
    assert not rep["passed"] and not rep["stats"]["first_row"]["within_tolerance"]
    assert rep["wasserstein_m"] > 5.0 and rep["depth_quantiles_m"]["sim"][2] > rep["depth_quantiles_m"]["real"][2]
    proxy = compare(real * 0 + (real > 0) * 10.0, [real], real_is_proxy=True)
    assert "within_tolerance" not in proxy["stats"]["density"]  # a proxy's density is not a scan's
    with pytest.raises(GeometryError):
        compare(real, [])
    with pytest.raises(GeometryError):
        compare(real, [real[:10]])


def test_alignment_recovers_the_teachers_scale_and_shift():
    rng = np.random.default_rng(3)
    truth = rng.uniform(3.0, 80.0, (60, 90))
    disp = (1.0 / truth - 0.002) / 0.05  # the teacher: 1/z = 0.05 * disp + 0.002
    real = np.where(rng.random(truth.shape) < 0.1, truth, 0.0)
    outliers = (real > 0) & (rng.random(truth.shape) < 0.05)
    real[outliers] *= 3.0  # see-through returns / glass: far behind what the photo shows
    a = fit_disparity_alignment(disp, real)
    assert a["scale"] == pytest.approx(0.05, rel=1e-6) and a["shift"] == pytest.approx(0.002, abs=1e-8)
    assert a["median_abs_rel"] < 1e-6 and a["pixels"] < int((real > 0).sum())  # trimmed
    with pytest.raises(GeometryError, match="too few"):
        fit_disparity_alignment(disp, np.zeros_like(real))
    with pytest.raises(GeometryError, match="scale"):
        fit_disparity_alignment(-disp, real)
    with pytest.raises(GeometryError, match="shape"):
        fit_disparity_alignment(disp, real[:10])


def test_simulation_on_the_fixture_photo_is_seeded():
    from PIL import Image

    from storage.lidar_scans import read_calib

    cal = read_calib(NUS_CALIB)
    rgb = np.asarray(Image.open(FIX / "nuscenes_front.jpg").convert("RGB"))
    h, w = rgb.shape[:2]
    disp = 0.02 + np.clip(np.linspace(-0.4, 1.0, h), 0, None)[:, None].repeat(w, 1)  # sky above a ground ramp
    prof = load_profile("hdl32e")
    a = simulate_on_photo(disp, cal.K, prof, seeds=[0, 1], rgb=rgb)
    b = simulate_on_photo(disp, cal.K, prof, seeds=[0, 1], rgb=rgb)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b)) and a[0].tobytes() != a[1].tobytes()
    assert np.count_nonzero(a[0]) > 100
    # a fixed teacher alignment: seeds still vary the sensor, the same seeds give the same bytes
    al = {"scale": 0.05, "shift": 0.0}
    c = simulate_on_photo(disp, cal.K, prof, seeds=[0, 1], rgb=rgb, alignment=al)
    assert c[0].tobytes() == simulate_on_photo(disp, cal.K, prof, seeds=[0], rgb=rgb, alignment=al)[0].tobytes()
    assert c[0].tobytes() != c[1].tobytes() and c[0].tobytes() != a[0].tobytes()
    pic = side_by_side(rgb, a[0], a[1])
    assert pic.shape == (h, 2 * w + 8, 3) and pic.dtype == np.uint8
    with pytest.raises(GeometryError):
        simulate_on_photo(disp, cal.K, prof, seeds=[])


def test_fidelity_flow_on_the_real_fixture(prefect_harness, tmp_path):
    from flows.fidelity import fidelity_flow

    out = tmp_path / "fid"
    report = fidelity_flow(scan=str(NUS_SCAN), calib=str(NUS_CALIB), sensor="hdl32e", seeds=2, out=str(out))
    assert report["image"].endswith("nuscenes_front.jpg") and report["sensor"] == "hdl32e"
    assert report["image_size"] == [225, 400] and report["seeds"] == 2
    for key in ("density", "density_kitti_crop", "first_row", "rows_covered", "see_through"):
        assert {"real", "sim_mean", "sim_std", "rel_error"} <= set(report["stats"][key])
    assert report["stats"]["points"]["real"] > 1000 and report["wasserstein_m"] > 0
    # by default the teacher is aligned to the scan; the policy's own draw is reported beside it
    assert report["teacher_scale"] == "aligned to the reference" and report["alignment"]["scale"] > 0
    assert set(report["policy_draw"]["stats"]) == set(report["stats"])
    # the real first return and rows covered are met within 10 % even on this 4x-downscaled photo
    assert report["stats"]["first_row"]["within_tolerance"] and report["stats"]["rows_covered"]["within_tolerance"]
    assert (out / "side_by_side.png").is_file()
    assert json.loads((out / "report.json").read_text())["sensor"] == "hdl32e"


def test_fidelity_cli_json_and_errors(prefect_harness, tmp_path, capsys):
    from flows.cli import main

    # no sensor given: the profile is fitted from the scan itself
    assert main(["fidelity", "--scan", str(NUS_SCAN), "--calib", str(NUS_CALIB), "--seeds", "1", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["sensor"] == "fitted" and rep["stats"]["first_row"]["real"] >= 0
    assert main(["fidelity", "--scan", str(NUS_SCAN), "--calib", str(NUS_CALIB), "--seeds", "1", "--json",
                 "--sensor", "hdl32e", "--no-align"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["teacher_scale"] == "depth policy draw" and "policy_draw" not in rep
    assert main(["fidelity", "--scan", str(NUS_SCAN), "--seeds", "1"]) == 2
    assert "calibration file (--calib)" in capsys.readouterr().err
    assert main(["fidelity", "--image", str(FIX / "nuscenes_front.jpg"), "--seeds", "1"]) == 2
    assert "either a real scan" in capsys.readouterr().err


@pytest.mark.slow
def test_shared_scans_meet_the_targets(shared_data):
    """The issue's acceptance figures (README "Sensor calibration and fidelity"). nuScenes, fitted hdl32e (with
    the photo-fitted link budget), teacher aligned to the scan: density, KITTI-crop density, first-return row
    and rows covered within 10 % of the real sweep, and a Wasserstein distance below the 3.01 m of the sweep-only
    fit (3.96 m before issue 13). hdl64e_kitti on both KITTI frames against the ground-truth pattern (a proxy:
    there is no real KITTI scan in the shared data): first-return row and rows covered within 10 % with the
    build's depth-policy draw, rows covered also aligned (aligned first row: +11 % on frame 5, -2 % on 50)."""
    from tasks.fidelity_tasks import fidelity_report

    nus = shared_data / "real_lidar" / "nuscenes"
    if not nus.is_dir():
        pytest.skip("real_lidar/nuscenes not in shared data")
    rep = fidelity_report(image=None, scan=str(nus / "lidar_top.pcd.bin"), calib=str(nus / "calib.json"),
                          sensor="hdl32e", seeds=8)
    s, p = rep["stats"], rep["policy_draw"]["stats"]
    assert rep["passed"], s
    assert rep["wasserstein_m"] < 3.01
    assert p["first_row"]["within_tolerance"], p
    for frame in ("0000000005", "0000000050"):
        rep = fidelity_report(image=str(shared_data / "kitti_gt" / "rgb" / f"{frame}.png"),
                              reference_depth=str(shared_data / "kitti_gt" / "depth" / f"{frame}.png"),
                              intrinsics=K_KITTI, sensor="hdl64e_kitti", seeds=8)
        assert rep["policy_draw"]["passed"], (frame, rep["policy_draw"]["stats"])
        assert rep["stats"]["rows_covered"]["within_tolerance"], (frame, rep["stats"])


def test_fidelity_flow_fails_readably(prefect_harness, tmp_path):
    """A bad scan ends the run Failed with the one-line reason naming the file (flows.failures), before any
    teacher runs; a direct call (the CLI) still raises the domain error."""
    from flows.fidelity import fidelity_flow
    from tasks.errors import InputError

    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("prefect").addHandler(handler)
    bad = tmp_path / "broken.pcd.bin"
    bad.write_bytes(b"\0" * 7)
    try:
        state = fidelity_flow(scan=str(bad), calib=str(NUS_CALIB), sensor="hdl32e", seeds=1, return_state=True)
    finally:
        logging.getLogger("prefect").removeHandler(handler)
    assert state.is_failed() and str(bad) in state.message and "\n" not in state.message
    assert not [r for r in records if r.exc_info and r.exc_info[1] is not None]  # no traceback in the run's logs
    with pytest.raises(InputError):
        state.result()
    state = fidelity_flow(image=str(FIX / "nuscenes_front.jpg"), seeds=1, return_state=True)
    assert state.is_failed() and state.message.startswith("InputError: give either a real scan")


def test_sensor_fidelity_is_a_deployment_with_a_documented_form():
    """prefect.yaml deploys the flow (the UI's form comes from its signature: every parameter described)."""
    import importlib

    import yaml
    from prefect.utilities.callables import parameter_schema

    root = Path(__file__).resolve().parent.parent
    spec = {d["name"]: d for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]}
    path, name = spec["sensor-fidelity"]["entrypoint"].split(":")
    fl = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    assert fl.name == "sensor-fidelity"
    props = parameter_schema(fl).model_dump_for_openapi()["properties"]
    assert {"scan", "calib", "image", "sensor", "seeds", "align"} <= set(props)
    assert all(p.get("description") for p in props.values()), props
