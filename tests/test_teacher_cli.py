"""`monolidar teacher` / `teacher-export` end to end through flows.cli.main."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model.teacher as teacher_mod
from flows.cli import main
from flows.cli_teacher import output_stems, parse_providers
from tasks.images import colorize, load_image
from tests.helpers import _TinyConv, export_torch


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_torch(_TinyConv(), tmp_path_factory.mktemp("cli") / "user_teacher.onnx",
                        metadata={"monolidar.short_side": 56})


@pytest.mark.slow  # > 10 s on this box; .ci/run runs it
def test_teacher_on_natural_photos(shared_data, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["teacher", "--images", str(shared_data / "natural"), "--out", str(out), "--teacher", str(tiny_onnx),
               "--batch-size", "2", "--threads", "1", "--providers", "cuda,cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "[10/10]" in printed and "CPUExecutionProvider" in printed
    sources = sorted((shared_data / "natural").glob("*.jpg"))
    assert len(sources) == 10
    for src in sources:
        h, w = load_image(src).shape[:2]
        raw = np.load(out / f"{src.stem}.npy")
        assert raw.dtype == np.float32 and raw.shape == (h, w) and np.isfinite(raw).all()
        png = np.asarray(Image.open(out / f"{src.stem}.png"))
        assert png.shape == (h, w, 3) and png.dtype == np.uint8 and png.std() > 0


def test_same_output_for_same_input(shared_data, tiny_onnx, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    shutil.copy(shared_data / "natural" / "img02.jpg", src / "a.jpg")
    for name in ("o1", "o2"):
        assert main(["teacher", "--images", str(src), "--out", str(tmp_path / name), "--teacher", str(tiny_onnx)]) == 0
    assert (tmp_path / "o1" / "a.npy").read_bytes() == (tmp_path / "o2" / "a.npy").read_bytes()


def test_corrupt_onnx_exits_2_naming_the_file(shared_data, tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    rc = main(["teacher", "--images", str(shared_data / "natural"), "--out", str(tmp_path / "o"), "--teacher", str(bad)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("monolidar teacher: error:") and "broken.onnx" in err and len(err.splitlines()) == 1


def test_default_teacher_missing_is_a_clear_error(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(teacher_mod, "DEFAULT_TEACHER", tmp_path / "weights" / "monolidar_teacher_small.onnx")
    rc = main(["teacher", "--images", str(shared_data / "natural"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "monolidar_teacher_small.onnx not found" in capsys.readouterr().err


def test_bad_images_are_skipped_and_reported(shared_data, tiny_onnx, tmp_path, capsys):
    src = tmp_path / "mixed"
    src.mkdir()
    shutil.copy(shared_data / "kitti_gt" / "rgb" / "0000000005.png", src / "good.png")
    (src / "bad.jpg").write_bytes(b"")
    Image.new("L", (20, 20)).save(src / "gray.png")
    rc = main(["teacher", "--images", str(src), "--out", str(tmp_path / "o"), "--teacher", str(tiny_onnx)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.jpg: zero-byte" in err and "gray.png: grayscale" in err and "2 of 3 images skipped" in err
    assert np.load(tmp_path / "o" / "good.npy").shape == (375, 1242)
    assert not (tmp_path / "o" / "bad.npy").exists()


def test_missing_images_dir(tiny_onnx, tmp_path, capsys):
    assert main(["teacher", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--teacher", str(tiny_onnx)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_helpers():
    assert parse_providers("cuda, CPU") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert parse_providers(None) is None
    assert output_stems([Path("a.jpg"), Path("a.png"), Path("b.png")]) == ["a", "a_png", "b"]
    ramp = colorize(np.linspace(0, 1, 50)[None, :].repeat(3, 0))
    lum = ramp.astype(float) @ [0.299, 0.587, 0.114]
    assert (np.diff(lum[0]) >= -1.0).all() and lum[0, -1] > lum[0, 0] + 150  # brightness rises with value
    assert (colorize(np.array([[np.nan, 1.0, 2.0]]))[0, 0] == 0).all()


@pytest.mark.slow
def test_teacher_export_cli_random_init(tmp_path, capsys):
    out = tmp_path / "dav2s.onnx"
    assert main(["teacher-export", "--out", str(out), "--size", "70"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED" in printed and "24.8 M parameters" in printed
    t = teacher_mod.Teacher(out)
    assert t.short_side == 70 and t.output_kind == "disparity"
    raw = t.predict(np.random.default_rng(0).integers(0, 256, (1, 50, 90, 3), dtype=np.uint8))
    assert raw.shape == (1, 50, 90) and np.isfinite(raw).all()
