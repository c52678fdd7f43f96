"""When a shard is stale: its key covers what changes its bytes (profile content, inputs, the simulation code)
and nothing else (training code, flows, the CLI)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.build_config import BuildConfig
from tasks.build_tasks import shard_key
from tasks.provenance import code_version, shard_code_modules
from tasks.sensors import PROFILE_DIR

REPO = Path(__file__).resolve().parent.parent
TEACHER = {"sha256": "t" * 64, "output_kind": "disparity", "short_side": 56, "batch_size": 4}


@pytest.fixture
def source_copy(tmp_path) -> Path:
    """A copy of the project's Python packages to edit."""
    for pkg in ("tasks", "model", "storage", "flows"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "weights"))
    return tmp_path


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_code_version_covers_simulation_code_only(source_copy):
    base = code_version(source_copy)
    assert base == code_version(REPO)  # same sources, same version
    # training code, flows and the KITTI exporter are not shard code
    for rel in ("model/losses.py", "model/completion.py", "flows/train.py", "flows/build.py", "storage/kitti.py"):
        _append(source_copy / rel, "\n# an edit that changes no shard byte\n")
    assert code_version.__wrapped__(source_copy) == base
    # the simulation, the store encoding and the teacher runtime are
    for rel in ("tasks/lidar.py", "tasks/raycast/fast.py", "storage/store.py", "model/teacher.py"):
        _append(source_copy / rel, "\n# a change in shard code\n")
        new = code_version.__wrapped__(source_copy)
        assert new != base, rel
        base = new


def test_shard_code_follows_imports():
    mods = shard_code_modules()
    # reached only through imports of the roots (a list kept by hand would forget them)
    for name in ("tasks.sample_sim", "tasks.lidar", "tasks.mesh", "tasks.raycast.fast", "tasks.depth_policy",
                 "tasks.sensors", "storage.store", "storage.manifest", "model.teacher"):
        assert name in mods, name
    for name in mods:
        assert not name.startswith(("flows", "model.losses", "model.completion", "model.metrics")), name
        assert name not in ("storage.kitti", "storage.cache", "storage.dataset")


def _samples(uri: str) -> list[dict]:
    return [{"sample_id": "a-0", "uri": uri, "seed": 7, "row": 0}]


def test_shard_key_follows_profile_content_not_its_path(tmp_path):
    image = tmp_path / "img.jpg"
    image.write_bytes(b"jpeg bytes")
    profile = tmp_path / "my.yaml"
    profile.write_text((PROFILE_DIR / "vlp16.yaml").read_text())
    cfg = BuildConfig(sensor=str(profile))
    key = shard_key(_samples(str(image)), cfg, TEACHER, "v1")
    assert shard_key(_samples(str(image)), cfg, TEACHER, "v1") == key
    profile.write_text((PROFILE_DIR / "hdl64e_kitti.yaml").read_text())  # 16 -> 64 beams, same file name
    assert shard_key(_samples(str(image)), cfg, TEACHER, "v1") != key


def test_shard_key_follows_plan_teacher_config_and_code(tmp_path):
    image = str(tmp_path / "img.jpg")
    cfg = BuildConfig()
    key = shard_key(_samples(image), cfg, TEACHER, "v1")
    assert shard_key(_samples(image), cfg, TEACHER, "v2") != key
    assert shard_key(_samples(image), cfg, {**TEACHER, "short_side": 518}, "v1") != key
    assert shard_key(_samples(image), cfg, {**TEACHER, "sha256": "u" * 64}, "v1") != key
    assert shard_key(_samples(image), BuildConfig(see_through=True), TEACHER, "v1") != key
    assert shard_key([{**_samples(image)[0], "seed": 8}], cfg, TEACHER, "v1") != key
    # the teacher's thread count and path do not change its output
    assert shard_key(_samples(image), cfg, {**TEACHER, "threads": 3, "path": "/elsewhere.onnx"}, "v1") == key


@pytest.mark.slow
def test_editing_a_profile_reruns_its_shards_and_nothing_else_does(prefect_harness, small_images, tiny_teacher_onnx,
                                                                   tmp_path):
    """The issue's scenario: build with --sensor my.yaml, edit my.yaml (16 -> 64 beams), build again."""
    from tests.helpers import run_build, shard_bytes

    profile = tmp_path / "my.yaml"
    profile.write_text((PROFILE_DIR / "vlp16.yaml").read_text())
    out = tmp_path / "ds.zarr"
    first = run_build(small_images, out, tiny_teacher_onnx, sensor_file=str(profile))
    assert first["shards_run"] == 3
    before = shard_bytes(out)
    again = run_build(small_images, out, tiny_teacher_onnx, sensor_file=str(profile))
    assert again["shards_run"] == 0 and shard_bytes(out) == before  # nothing changed: nothing reruns

    profile.write_text((PROFILE_DIR / "hdl64e_kitti.yaml").read_text())
    edited = run_build(small_images, out, tiny_teacher_onnx, sensor_file=str(profile))
    assert edited["shards_run"] == 3
    assert edited["lidar_density_mean"] > 2 * first["lidar_density_mean"], (first["lidar_density_mean"],
                                                                           edited["lidar_density_mean"])
    run_build(small_images, tmp_path / "fresh.zarr", tiny_teacher_onnx, sensor_file=str(profile))
    assert shard_bytes(out) == shard_bytes(tmp_path / "fresh.zarr")  # same as a store built from scratch
