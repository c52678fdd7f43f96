"""Sensor profiles: built-in data files, user files, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import GeometryError
import yaml

from tasks.sensors import list_profiles, load_profile, parse_profile

BUILTIN = {"hdl64e_kitti", "hdl32e", "vlp16", "vlp32c", "os1_64", "os1_128", "livox_avia"}


def test_builtin_profiles_load():
    assert BUILTIN <= set(list_profiles())
    for name in BUILTIN:
        p = load_profile(name)
        assert p.name == name and p.max_range_m > p.min_range_m and p.description
        assert len(p.mount["translation_m"]) == 3


def test_hdl64e_matches_kitti_layout():
    """KITTI's factory calibration: upper block +1.94 .. -8.71 deg (~1/3 deg apart) fired ~0.20 m above the
    sensor origin, lower block -9.03 .. -25.0 deg (~1/2 deg apart) ~0.11 m above; camera-2 mount."""
    p = load_profile("hdl64e_kitti")
    el = p.elevations_deg
    assert len(el) == 64 and el[0] == pytest.approx(1.937) and el[-1] == pytest.approx(-24.999)
    assert (np.diff(el) < 0).all()
    assert np.diff(el[:32]).mean() == pytest.approx(-(1.937 + 8.711) / 31) and np.abs(np.diff(el[:32]) + 1 / 3).max() < 0.11
    assert np.abs(np.diff(el[32:]) + 0.5).max() < 0.15
    off = p.vertical_offsets_m
    assert off.shape == (64,) and (np.abs(off[:32] - 0.20) < 0.015).all() and (np.abs(off[32:] - 0.115) < 0.015).all()
    assert 0.08 <= p.azimuth_step_deg <= 0.35 and p.max_range_m == 120 and p.range_noise_std_m == 0.02
    np.testing.assert_allclose(p.mount["translation_m"], [0.0571, -0.0755, -0.2694])
    assert p.to_dict()["vertical_offsets_m"][0] == pytest.approx(0.209)


def test_hdl32e_is_a_fitted_hdl32e():
    p = load_profile("hdl32e")
    el = p.elevations_deg
    assert len(el) == 32 and (np.diff(el) > 1.0).all()
    np.testing.assert_allclose(el[16:], -30.67 + 4 / 3 * np.arange(16, 32), atol=0.1)  # datasheet, upper half
    assert p.azimuth_step_deg == pytest.approx(360 / 1084, rel=1e-5) and 100 <= p.max_range_m <= 110
    np.testing.assert_allclose(p.mount["rotation_deg"], [-1.12, 0.39, -90.2], atol=0.01)


def test_vertical_offsets(tmp_path):
    base = "name: v\nelevations_deg: [1, 0, -1]\nazimuth_step_deg: 0.5\nmax_range_m: 50\n"
    (tmp_path / "a.yaml").write_text(base + "vertical_offsets_m: 0.1\n")
    np.testing.assert_allclose(load_profile(tmp_path / "a.yaml").vertical_offsets_m, [0.1, 0.1, 0.1])
    (tmp_path / "b.yaml").write_text(base + "vertical_offsets_m: [0.2, 0.1, 0.0]\n")
    assert load_profile(tmp_path / "b.yaml").to_dict()["vertical_offsets_m"] == [0.2, 0.1, 0.0]
    (tmp_path / "c.yaml").write_text(base)
    assert "vertical_offsets_m" not in load_profile(tmp_path / "c.yaml").to_dict()  # unchanged description
    for bad, match in (("[0.1, 0.2]", "one per beam"), ("[0.1, .nan, 0]", "finite"), ("[9, 0, 0]", "within")):
        (tmp_path / "d.yaml").write_text(base + f"vertical_offsets_m: {bad}\n")
        with pytest.raises(GeometryError, match=match):
            parse_profile(yaml.safe_load((tmp_path / "d.yaml").read_text()), "d.yaml")


def test_other_layouts():
    np.testing.assert_allclose(load_profile("vlp16").elevations_deg, np.arange(-15, 16, 2))
    v32 = load_profile("vlp32c").elevations_deg
    assert len(v32) == 32 and v32.max() == 15 and v32.min() == -25
    gaps = np.abs(np.diff(v32))
    assert gaps.min() < 0.4 < 4 < gaps.max(), "VLP-32C is dense near the horizon"
    for name, top, n in (("os1_64", 16.6, 64), ("os1_128", 22.5, 128)):
        el = load_profile(name).elevations_deg
        assert len(el) == n and el.max() == pytest.approx(top) and el.min() == pytest.approx(-top)
        assert np.ptp(np.diff(el)) < 1e-9
    livox = load_profile("livox_avia")
    assert livox.elevations_deg is None and livox.pattern["type"] == "rosette"


def test_unknown_name_lists_known():
    with pytest.raises(GeometryError, match="known: .*hdl64e_kitti"):
        load_profile("hdl65")


def test_user_profile_files(tmp_path):
    y = tmp_path / "mine.yaml"
    y.write_text("name: mine\nelevations_deg: [1, 0, -1]\nazimuth_step_deg: 0.5\nmax_range_m: 50\n")
    p = load_profile(y)
    assert p.name == "mine" and p.n_beams == 3 and p.drop["random"] == 0.0
    t = tmp_path / "mine.toml"
    t.write_text('name = "t"\nazimuth_step_deg = 0.2\nmax_range_m = 80\n'
                 '[elevations_deg.uniform]\nfrom = 10\nto = -10\ncount = 21\n')
    assert load_profile(str(t)).n_beams == 21


@pytest.mark.parametrize("text, match", [
    ("name: [unclosed\n", "malformed"),
    ("name: x\nazimuth_step_deg: 0.2\nmax_range_m: 50\n", "exactly one of"),
    ("name: x\nelevations_deg: [0]\nmax_range_m: 50\n", "azimuth_step_deg"),
    ("name: x\nelevations_deg: [0]\nazimuth_step_deg: 0.2\nmax_range_m: -5\n", "max_range_m"),
    ("name: x\nelevations_deg: [0]\nazimuth_step_deg: 0.2\nmax_range_m: 5\ndrop: {rnd: 1}\n", "unknown drop"),
    ("- just\n- a list\n", "mapping"),
])
def test_malformed_files_name_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(GeometryError, match=match) as info:
        load_profile(path)
    assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(GeometryError, match="not found"):
        load_profile("/nonexistent/profile.yaml")


def test_detection_link_budget_key(tmp_path):
    base = {"name": "v", "elevations_deg": [1, 0, -1], "azimuth_step_deg": 0.5, "max_range_m": 50}
    q = [round(0.1 * k, 1) for k in range(21)]
    p = parse_profile({**base, "detection": {"range_m": 40, "reflectance_quantiles": q}}, "d.yaml")
    assert p.detection == {"range_m": 40.0, "reflectance_quantiles": q} and p.to_dict()["detection"]["range_m"] == 40.0
    assert "detection" not in parse_profile(base, "d.yaml").to_dict()  # profiles without it hash as before
    for bad, match in (({"range_m": 40}, "exactly"), ({"range_m": 0, "reflectance_quantiles": q}, "> 0"),
                       ({"range_m": 40, "reflectance_quantiles": q[:5]}, "21 non-decreasing"),
                       ({"range_m": 40, "reflectance_quantiles": q[::-1]}, "non-decreasing")):
        with pytest.raises(GeometryError, match=match):
            parse_profile({**base, "detection": bad}, "d.yaml")
    with pytest.raises(GeometryError, match="spinning"):
        parse_profile({"name": "l", "pattern": load_profile("livox_avia").pattern, "max_range_m": 50,
                       "detection": {"range_m": 40, "reflectance_quantiles": q}}, "l.yaml")
