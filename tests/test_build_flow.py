"""The build / repair flows: real Prefect flow runs, a real ONNX teacher, real ray casting, real Zarr shards."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.build import repair_dataset
from flows.cli import main as cli_main
from storage.store import DatasetStore
from tasks.errors import StoreError, TeacherError
from tests.helpers import SMALL, arrays_of, run_build, shard_bytes

@pytest.fixture
def bad_images(small_images, tmp_path) -> Path:
    """The small photos plus one input of every bad kind the build must quarantine."""
    d = tmp_path / "inputs"
    shutil.copytree(small_images, d)
    (d / "zero_bytes.jpg").write_bytes(b"")
    (d / "not_an_image.jpg").write_text("hello, I am text")
    good = (d / sorted(p.name for p in small_images.iterdir())[0]).read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.fromarray(np.full((40, 60), 128, np.uint8), "L").save(d / "grayscale.png")
    Image.fromarray(np.full((40, 60), 40000, np.uint16)).save(d / "sixteen_bit.png")
    return d


def test_build_quarantines_bad_inputs_and_completes(prefect_harness, bad_images, tiny_teacher_onnx, tmp_path, capsys):
    store = tmp_path / "ds.zarr"
    summary = run_build(bad_images, store, tiny_teacher_onnx)
    assert summary["status"] == {"ok": 5, "quarantined": 5, "failed": 0}
    assert summary["failed_shards"] == [] and summary["shards_complete"] == 5
    rows = DatasetStore.open(store).manifest().to_pylist()
    reasons = {Path(r["source_uri"]).name: r["reason"] for r in rows if r["status"] == "quarantined"}
    assert set(reasons) == {"zero_bytes.jpg", "not_an_image.jpg", "truncated.jpg", "grayscale.png", "sixteen_bit.png"}
    for name, reason in reasons.items():
        assert name in reason  # each reason names its file
    assert cli_main(["inspect", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 10 and info["status"]["ok"] == 5
    # On this 96x320 canvas one pixel spans ~0.3 deg, about the HDL-64E beam spacing, so the pattern is far
    # denser than KITTI's 4-7 % at 1216x352 (checked by the demo test); it must never be empty or full.
    assert 0.02 < info["lidar_density_mean"] < 0.6
    ok = [r for r in rows if r["status"] == "ok"]
    sample = DatasetStore.open(store).read_sample(int(ok[0]["index"]))
    assert sample["rgb"].shape == (96, 320, 3) and sample["sparse"].shape == (96, 320)
    # The images, written by the teacher stage where each photo is decoded once: the photo at the canvas, and
    # the fill value (0) in a quarantined row.
    from storage.root import read_uri
    from tasks.images import load_fitted

    photo = read_uri(ok[0]["source_uri"])
    assert np.array_equal(sample["rgb"], load_fitted(photo, name="x", canvas=(96, 320)))
    bad = next(r for r in rows if r["status"] == "quarantined")
    assert not DatasetStore.open(store).read_sample(int(bad["index"]))["rgb"].any()
    hit = sample["sparse"] > 0
    assert hit.any()
    # Simulated returns sit on the mesh built from the stored depth (noise is a few cm).
    rel = np.abs(sample["sparse"][hit] - sample["depth"][hit]) / sample["depth"][hit]
    assert np.median(rel) < 0.05
    assert (store / "previews").is_dir() and any((store / "previews").iterdir())


def test_teacher_cache_reused_when_only_the_sensor_changes(prefect_harness, small_images, tiny_teacher_onnx, tmp_path):
    first = run_build(small_images, tmp_path / "hdl64.zarr", tiny_teacher_onnx, sensor="hdl64e_kitti")
    assert first["teacher_computed"] == 5
    second = run_build(small_images, tmp_path / "vlp16.zarr", tiny_teacher_onnx, sensor="vlp16")
    assert second["teacher_computed"] == 0  # same images + teacher: only simulation and writing ran
    assert second["status"]["ok"] == 5
    a, b = arrays_of(tmp_path / "hdl64.zarr"), arrays_of(tmp_path / "vlp16.zarr")
    assert all(np.array_equal(a[i]["teacher_output"], b[i]["teacher_output"]) for i in a)
    assert any(not np.array_equal(a[i]["sparse"], b[i]["sparse"]) for i in a)


@pytest.mark.slow  # ~8 s: a real flow run (keeps `-m 'not slow'` under 3 min)
def test_incremental_rebuild_appends_and_leaves_old_shards_untouched(prefect_harness, small_images,
                                                                     tiny_teacher_onnx, tmp_path):
    imgs = tmp_path / "grow"
    imgs.mkdir()
    names = sorted(p.name for p in small_images.iterdir())
    for n in names[2:]:
        shutil.copy(small_images / n, imgs / n)
    store = tmp_path / "grow.zarr"
    run_build(imgs, store, tiny_teacher_onnx)
    before = shard_bytes(store)
    ids_before = {r["sample_id"]: r["index"] for r in DatasetStore.open(store).manifest().to_pylist()}
    for n in names[:2]:  # new images sort *before* the existing ones
        shutil.copy(small_images / n, imgs / n)
    res = run_build(imgs, store, tiny_teacher_onnx)
    assert res["shards_run"] == 1 and res["teacher_computed"] == 2
    after = shard_bytes(store)
    assert {k: after[k] for k in before} == before  # old chunks and manifest parts byte-identical
    rows = DatasetStore.open(store).manifest().to_pylist()
    assert {r["sample_id"]: r["index"] for r in rows if r["sample_id"] in ids_before} == ids_before
    assert len(rows) == 5
    # Removing an input is reported, not silently dropped.
    (imgs / names[3]).unlink()
    res = run_build(imgs, store, tiny_teacher_onnx)
    assert res["removed_inputs"] == [names[3]] and res["shards_run"] == 0 and res["samples"] == 5


@pytest.mark.slow  # ~8 s: a real flow run (keeps `-m 'not slow'` under 3 min)
def test_repair_reruns_only_missing_shards_and_is_idempotent(prefect_harness, small_images, tiny_teacher_onnx,
                                                             tmp_path, capsys):
    store = tmp_path / "rep.zarr"
    run_build(small_images, store, tiny_teacher_onnx)
    reference = arrays_of(store)
    ref_bytes = shard_bytes(store)
    (store / "manifest" / "shard-00001.parquet").unlink()  # as if the writer died before committing shard 1
    assert 1 not in DatasetStore.open(store).complete_shards()
    res = repair_dataset(store=str(store))
    assert res["repaired_shards"] == [1] and res["status"]["ok"] == 5
    assert shard_bytes(store) == ref_bytes
    repaired = arrays_of(store)
    assert all(np.array_equal(reference[i][k], repaired[i][k]) for i in reference for k in reference[i])
    assert cli_main(["repair", str(store), "--quiet"]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert shard_bytes(store) == ref_bytes


@pytest.mark.slow  # > 10 s on this box; .ci/run runs it
def test_same_inputs_give_identical_shards_with_any_runner(prefect_harness, small_images, tiny_teacher_onnx,
                                                           tmp_path):
    runs = {
        "thread1": dict(runner="thread", workers=1),  # shards written by the simulation process pool
        "thread3": dict(runner="thread", workers=3),
        "thread2-inline": dict(runner="thread", workers=2, sim_workers=0),  # written in the task threads
        "process2": dict(runner="process", workers=2),
        "dask2": dict(runner="dask", workers=2),
    }
    hashes = {}
    for name, kw in runs.items():
        # Separate caches: every run computes its teacher outputs itself.
        res = run_build(small_images, tmp_path / f"{name}.zarr", tiny_teacher_onnx, samples_per_image=2,
                        cache_dir=str(tmp_path / f"cache-{name}"), **kw)
        assert res["status"]["ok"] == 10, name
        hashes[name] = shard_bytes(tmp_path / f"{name}.zarr")
    assert hashes["thread1"] and all(h == hashes["thread1"] for h in hashes.values())


def test_bad_teacher_fails_before_any_shard(prefect_harness, small_images, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x01garbage that is not a protobuf model")
    with pytest.raises(TeacherError, match="broken.onnx"):
        run_build(small_images, tmp_path / "never.zarr", bad)
    assert not (tmp_path / "never.zarr").exists()


def test_second_concurrent_build_is_refused(prefect_harness, small_images, tiny_teacher_onnx, tmp_path):
    store = tmp_path / "locked.zarr"
    run_build(small_images, store, tiny_teacher_onnx)
    with DatasetStore.open(store, mode="r+").lock(owner="another build"):
        with pytest.raises(StoreError, match="being built"):
            run_build(small_images, store, tiny_teacher_onnx)


@pytest.mark.slow  # ~8 s: a real flow run (keeps `-m 'not slow'` under 3 min)
def test_rebuild_with_another_config_is_refused_unless_overwrite(prefect_harness, small_images, tiny_teacher_onnx,
                                                                 tmp_path):
    store = tmp_path / "cfg.zarr"
    run_build(small_images, store, tiny_teacher_onnx)
    with pytest.raises(StoreError, match="another configuration"):
        run_build(small_images, store, tiny_teacher_onnx, sensor="vlp16")
    res = run_build(small_images, store, tiny_teacher_onnx, sensor="vlp16", overwrite=True)
    assert res["sensor"] == "vlp16" and res["status"]["ok"] == 5


@pytest.mark.slow  # ~12 s: real flow runs (keeps `-m 'not slow'` under 3 min)
def test_fast_compression_profile_is_kept_by_resumes_and_readable_by_plain_zarr(prefect_harness, small_images,
                                                                                tiny_teacher_onnx, tmp_path):
    import zarr

    store = tmp_path / "fast.zarr"
    first = run_build(small_images, store, tiny_teacher_onnx, compression="fast")
    assert first["status"]["ok"] == 5 and DatasetStore.open(store).compression == "fast"
    before = shard_bytes(store)
    again = run_build(small_images, store, tiny_teacher_onnx)  # no profile given: the store's own, nothing to do
    assert again["shards_run"] == 0 and shard_bytes(store) == before
    with pytest.raises(StoreError, match=r"another compression \(fast, not balanced\)"):
        run_build(small_images, store, tiny_teacher_onnx, compression="balanced")
    group = zarr.open_group(str(store), mode="r")  # plain zarr-python, no monolidar code in the read
    for name in ("rgb", "teacher_output", "depth", "sparse"):
        inner = group[name].metadata.codecs[0].codecs
        assert [c.cname.value for c in inner if hasattr(c, "cname")] == ["lz4"], name
    for index, arrays in arrays_of(store).items():
        for name, value in arrays.items():
            np.testing.assert_array_equal(group[name][index], value)


@pytest.mark.slow  # ~8 s: a real flow run (keeps `-m 'not slow'` under 3 min)
def test_transient_io_errors_are_retried(prefect_harness, small_images, tiny_teacher_onnx, tmp_path, monkeypatch):
    import tasks.build_tasks as bt

    real_read = bt.read_uris
    calls: dict[str, int] = {}

    def flaky(uris) -> dict:  # every input fails once, like a dropped network read
        uris = list(uris)
        for uri in uris:
            calls[uri] = calls.get(uri, 0) + 1
            if calls[uri] == 1:
                raise ConnectionResetError(f"{uri}: connection reset by peer")
        return real_read(uris)

    monkeypatch.setattr(bt, "read_uris", flaky)
    res = run_build(small_images, tmp_path / "flaky.zarr", tiny_teacher_onnx)
    assert res["status"]["ok"] == 5 and res["failed_shards"] == []
    assert max(calls.values()) >= 2


@pytest.mark.slow  # > 10 s on this box; .ci/run runs it
def test_teacher_cache_survives_a_process_restart(prefect_harness, small_images, tiny_teacher_onnx, tmp_path):
    import os
    import subprocess
    import sys

    run_build(small_images, tmp_path / "first.zarr", tiny_teacher_onnx)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": "",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}  # a loaded CI box starts it slowly
    cmd = [sys.executable, "-m", "flows.cli", "build", "--quiet", "--images", str(small_images), "--out",
           str(tmp_path / "second.zarr"), "--teacher", str(tiny_teacher_onnx), "--sensor", "os1_64",
           *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    summary = DatasetStore.open(tmp_path / "second.zarr").attrs["summary"]
    assert summary["teacher_computed"] == 0 and summary["status"]["ok"] == 5
