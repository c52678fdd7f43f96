"""Sensor profiles: built-in data files, user files, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import GeometryError
from tasks.sensors import list_profiles, load_profile

BUILTIN = {"hdl64e_kitti", "vlp16", "vlp32c", "os1_64", "os1_128", "livox_avia"}


def test_builtin_profiles_load():
    assert BUILTIN <= set(list_profiles())
    for name in BUILTIN:
        p = load_profile(name)
        assert p.name == name and p.max_range_m > p.min_range_m and p.description
        assert len(p.mount["translation_m"]) == 3


def test_hdl64e_matches_kitti_layout():
    p = load_profile("hdl64e_kitti")
    el = p.elevations_deg
    assert len(el) == 64 and el[0] == pytest.approx(2.0) and el[-1] == pytest.approx(-24.9)
    np.testing.assert_allclose(np.diff(el[:32]), -1 / 3, atol=0.01)
    assert np.all(np.abs(np.diff(el[32:]) + 0.5) < 0.05)
    assert 0.08 <= p.azimuth_step_deg <= 0.35 and p.max_range_m == 120 and p.range_noise_std_m == 0.02
    np.testing.assert_allclose(p.mount["translation_m"], [-0.004, -0.076, -0.272])


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
