"""`monolidar verify`: each injected fault is found with its reason, marked, and the store repaired to the
bytes of an undamaged one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from storage import manifest as mf
from storage.plan import read_plan, write_plan
from storage.store import DatasetStore
from storage.verify import verify_store
from tests.helpers import S, make_arrays, make_rows, new_store, tree_hashes

N_SHARDS = 3


def _plan_rows() -> list[dict]:
    return [{"sample_id": f"img{s:02d}-{r}", "key": f"img{s:02d}.jpg", "uri": f"/photos/img{s:02d}.jpg", "variant": r,
             "shard": s, "row": r, "seed": 1000 * s + r} for s in range(N_SHARDS) for r in range(S)]


def _write(store: DatasetStore, shard: int) -> None:
    arrays = make_arrays(S, shard)
    rows = make_rows(shard, S, ["ok", "ok", "quarantined", "ok"])
    for name in arrays:
        arrays[name][2] = 0  # a quarantined row holds the fill value
    for r, row in enumerate(rows):
        if row["status"] == "ok":
            depth = arrays["depth"][r] / np.float32(256)
            row.update(lidar_points=int(np.count_nonzero(arrays["sparse"][r])), depth_min=float(depth[depth > 0].min()),
                       depth_max=float(depth.max()))
        else:
            row.update(lidar_points=0, lidar_density=None)
    store.write_shard(shard, arrays, rows)


def _build(path: Path) -> DatasetStore:
    store = new_store(path)
    store.ensure_shards(N_SHARDS)
    write_plan(path, _plan_rows())
    for shard in range(N_SHARDS):
        _write(store, shard)
    return store


@pytest.fixture
def pristine(tmp_path) -> Path:
    _build(tmp_path / "pristine")
    return tmp_path / "pristine"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _point_outside(store: Path) -> None:
    rows = read_plan(store)
    rows[-1] = {**rows[-1], "shard": 99}  # the last sample of shard 2 now points past the arrays
    write_plan(store, rows)


FAULTS = {
    "flipped byte": (lambda d: _flip(d / "rgb/c/1/0/0/0", 100), 1, "rgb: shard object"),
    "flipped byte in the index": (lambda d: _flip(d / "depth/c/0/0/0", -10), 0, "depth: shard object"),
    "truncated shard": (lambda d: _truncate(d / "depth/c/2/0/0"), 2, "depth: shard object"),
    "deleted shard": (lambda d: (d / "sparse/c/0/0/0").unlink(), 0, "sparse: shard object sparse/c/0/0/0 is missing"),
    "corrupt manifest part": (lambda d: _flip(d / "manifest" / mf.part_name(1), -20), 1, "manifest part"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_found_marked_and_repaired_to_identical_bytes(pristine, tmp_path, fault):
    inject, shard, needle = FAULTS[fault]
    damaged = tmp_path / "damaged"
    shutil.copytree(pristine, damaged)
    assert verify_store(damaged, mark=False).ok
    inject(damaged)

    report = verify_store(damaged, mark=False)
    assert [b["shard"] for b in report.bad_shards] == [shard], report.bad_shards
    assert needle in report.bad_shards[0]["reason"]
    assert DatasetStore.open(damaged).complete_shards() == list(range(N_SHARDS))  # --no-mark leaves it

    report = verify_store(damaged)  # marks: the shard is un-committed, the reason recorded
    assert report.marked == [shard]
    assert shard not in DatasetStore.open(damaged).complete_shards()
    assert needle in json.loads((damaged / "verify" / f"shard-{shard:05d}.json").read_text())["reason"]
    # what repair does for a missing shard: rewrite it from the plan (here: the same deterministic inputs)
    _write(DatasetStore.open(damaged, mode="r+"), shard)
    assert verify_store(damaged).ok
    shutil.rmtree(damaged / "verify")
    assert tree_hashes(damaged) == tree_hashes(pristine)


def test_plan_row_pointing_outside_the_store_is_restored(pristine, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(pristine, damaged)
    _point_outside(damaged)
    report = verify_store(damaged, mark=False)
    assert not report.ok and report.bad_shards == []
    assert len(report.plan_problems) == 1 and "points outside the store: shard 99" in report.plan_problems[0]["reason"]
    report = verify_store(damaged)
    assert report.plan_restored
    assert verify_store(damaged).ok
    assert tree_hashes(damaged) == tree_hashes(pristine)


def test_edited_manifest_statistics_are_found(pristine, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(pristine, damaged)
    part = damaged / "manifest" / mf.part_name(0)
    table = pq.read_table(part)
    # a well-formed part whose statistics lie, re-signed so only the array check can catch it
    pts = table.column("lidar_points").to_pylist()
    pts[0] += 1
    table = table.set_column(table.column_names.index("lidar_points"), "lidar_points", [pts])
    meta = mf.integrity(table)
    mf.write_part(part, mf.with_integrity(table.replace_schema_metadata(None), shard_sha256=meta["shard_sha256"],
                                          plan=meta["plan"]))
    report = verify_store(damaged, mark=False)
    assert [b["shard"] for b in report.bad_shards] == [0]
    assert "LiDAR points, the manifest says" in report.bad_shards[0]["reason"]


def test_verify_cli_json_and_exit_codes(pristine, tmp_path, capsys):
    assert main(["verify", str(pristine), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    damaged = tmp_path / "damaged"
    shutil.copytree(pristine, damaged)
    (damaged / "rgb/c/2/0/0/0").unlink()
    assert main(["verify", str(damaged), "--no-mark"]) == 1
    out = capsys.readouterr().out
    assert "shard 00002: rgb: shard object" in out and "1 bad" in out
    assert main(["verify", str(damaged), "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert got["marked"] == [2] and got["bad_shards"][0]["shard"] == 2
    assert main(["verify", str(tmp_path / "nope")]) == 2
    assert "no such store" in capsys.readouterr().err


@pytest.mark.slow
def test_verify_then_repair_flow_restores_a_built_store(prefect_harness, small_images, tiny_teacher_onnx, tmp_path):
    """Every fault at once on a store made by the real build flow; `verify` marks, the real `repair` flow
    rebuilds, and the store's shards, manifest and plan are byte-identical to the undamaged build."""
    from flows.build import repair_dataset
    from tests.helpers import run_build, shard_bytes

    out = tmp_path / "ds.zarr"
    res = run_build(small_images, out, tiny_teacher_onnx, samples_per_image=2, cache_dir=str(tmp_path / "cache"))
    assert res["shards_complete"] == 5

    def snapshot() -> dict:
        return {**shard_bytes(out), "plan.parquet": (out / "plan.parquet").read_bytes()}

    before = snapshot()
    _flip(out / "rgb/c/0/0/0/0", 1000)                   # a flipped byte in a shard object
    _truncate(out / "depth/c/1/0/0")                      # a truncated shard object
    (out / "sparse/c/2/0/0").unlink()                     # a deleted shard object
    _flip(out / "manifest" / mf.part_name(3), 200)        # a corrupt manifest part
    _point_outside(out)                                   # a plan row pointing outside the store

    report = verify_store(out)
    assert sorted(b["shard"] for b in report.bad_shards) == [0, 1, 2, 3], report.bad_shards
    assert len(report.plan_problems) == 1 and report.plan_restored
    assert DatasetStore.open(out).complete_shards() == [4]
    repaired = repair_dataset(store=str(out), cache_dir=str(tmp_path / "cache"))
    assert repaired["repaired_shards"] == [0, 1, 2, 3]
    assert verify_store(out).ok
    assert snapshot() == before


def test_inputs_changed_since_the_build_are_flagged(tmp_path):
    import hashlib

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"the photo the shard was built from")
    store = new_store(tmp_path / "ds")
    store.ensure_shards(1)
    arrays = make_arrays(S, 3)
    rows = make_rows(0, S)
    for r, row in enumerate(rows):
        row.update(source_uri=str(photo), content_hash=hashlib.sha256(photo.read_bytes()).hexdigest(),
                   lidar_points=int(np.count_nonzero(arrays["sparse"][r])))
    store.write_shard(0, arrays, rows)
    assert verify_store(tmp_path / "ds", inputs=True, mark=False).ok
    photo.write_bytes(b"another photo saved under the same name")
    report = verify_store(tmp_path / "ds", inputs=True, mark=False)
    assert len(report.inputs_changed) == S and report.bad_shards[0]["shard"] == 0
    assert "content changed since shard 0 was built" in report.bad_shards[0]["reason"]
    photo.unlink()  # a deleted input keeps its samples: not reported
    assert verify_store(tmp_path / "ds", inputs=True, mark=False).ok
