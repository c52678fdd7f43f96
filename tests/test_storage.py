"""Dataset store: round trips, crash safety, idempotence, manifest merge, Dataset + DataLoader, bad inputs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from storage import manifest as mf
from storage.store import ARRAYS, DatasetStore, sample_shape
from tasks.errors import StoreError
from tests.helpers import H, W, S, make_arrays, make_rows, new_store, tree_hashes

REPO = Path(__file__).resolve().parent.parent


def test_round_trip_every_array_bit_for_bit(tmp_path):
    store = new_store(tmp_path / "ds")
    store.ensure_shards(2)
    full, partial = make_arrays(S, 1), make_arrays(3, 2)
    info0 = store.write_shard(0, full, make_rows(0, S))
    info1 = store.write_shard(1, partial, make_rows(1, 3, ["ok", "failed", "ok"]))
    assert info0["n_rows"] == S and info0["n_ok"] == S
    assert info1 == {"shard": 1, "n_rows": 3, "n_ok": 2, "manifest": str(tmp_path / "ds/manifest/shard-00001.parquet")}

    reopened = DatasetStore.open(tmp_path / "ds")
    for shard, arrays, n in ((0, full, S), (1, partial, 3)):
        for r in range(n):
            got = reopened.read_arrays(shard * S + r)
            for name in ARRAYS:
                assert got[name].dtype == ARRAYS[name][0]
                assert got[name].shape == sample_shape(name, H, W)
                assert got[name].tobytes() == arrays[name][r].tobytes(), (name, shard, r)
    sample = reopened.read_sample(S + 2)
    np.testing.assert_array_equal(sample["sparse"], partial["sparse"][2].astype(np.float32) / 256)
    assert sample["sparse"].dtype == np.float32
    assert sample["row"]["sample_id"] == "img01-2" and sample["row"]["index"] == S + 2
    # padding rows of a partial shard stay at the fill value
    assert not reopened.read_arrays(S + 3)["rgb"].any()
    with pytest.raises(StoreError, match="shard 1 has only 3 rows"):
        reopened.read_sample(S + 3)


def test_attrs_and_exist_ok(tmp_path):
    store = new_store(tmp_path / "ds")
    assert store.attrs["teacher"] == {"sha256": "abc"} and store.attrs["sensor"] == "hdl64"
    assert store.attrs["code_version"] == "test" and "created" in store.attrs
    assert new_store(tmp_path / "ds", exist_ok=True).shard_size == S
    with pytest.raises(StoreError, match="already exists"):
        new_store(tmp_path / "ds")
    with pytest.raises(StoreError, match="shard_size"):
        DatasetStore.create(tmp_path / "ds", height=H, width=W, shard_size=8, config={}, teacher={}, sensor="x",
                            code_version="t", exist_ok=True)


def test_crash_after_first_array_leaves_shard_absent(tmp_path, monkeypatch):
    from storage.dataset import CompletionDataset

    store = new_store(tmp_path / "ds")
    store.ensure_shards(3)
    store.write_shard(0, make_arrays(S, 1), make_rows(0, S))
    store.write_shard(1, make_arrays(S, 2), make_rows(1, S))

    class Boom(RuntimeError):
        pass

    written = []
    real_write = store.root.write_bytes

    def crash_after_first_array(rel, data, **kw):  # shard objects are published through the root
        if "/c/" in rel:
            if written:
                raise Boom("power cut")
            written.append(rel)
        return real_write(rel, data, **kw)

    monkeypatch.setattr(store.root, "write_bytes", crash_after_first_array)
    with pytest.raises(Boom):
        store.write_shard(1, make_arrays(S, 99), make_rows(1, S))  # rewrite of a complete shard
    written.clear()
    with pytest.raises(Boom):
        store.write_shard(2, make_arrays(S, 3), make_rows(2, S))  # a new shard

    reader = DatasetStore.open(tmp_path / "ds")
    assert reader.complete_shards() == [0]
    assert reader.manifest().column("shard").to_pylist() == [0] * S
    with pytest.raises(StoreError, match="not in a complete shard"):
        reader.read_sample(S)
    ds = CompletionDataset(tmp_path / "ds")
    assert len(ds) == S and set(ds.indices.tolist()) == set(range(S))


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from tests.helpers import make_arrays, make_rows, new_store
    from pathlib import Path
    store = new_store(Path({path!r}))
    store.ensure_shards(2)
    store.write_shard(0, make_arrays(4, 1), make_rows(0, 4))
    real_write = store.root.write_bytes

    def slow_after_first_array(rel, data, **kw):
        real_write(rel, data, **kw)
        if "/c/" in rel:
            print("mid-shard", flush=True)
            time.sleep(60)

    store.root.write_bytes = slow_after_first_array
    store.write_shard(1, make_arrays(4, 2), make_rows(1, 4))
    """
)


def test_process_killed_mid_write_leaves_store_readable(tmp_path):
    path = tmp_path / "ds"
    script = _KILL_SCRIPT.format(repo=str(REPO), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "mid-shard"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    reader = DatasetStore.open(path)
    assert reader.complete_shards() == [0]
    expected = make_arrays(4, 1)
    assert reader.read_arrays(3)["depth"].tobytes() == expected["depth"][3].tobytes()
    assert reader.manifest().num_rows == 4


def test_rewrite_is_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for path in (a, b):
        store = new_store(path)
        store.ensure_shards(2)
        store.write_shard(0, make_arrays(S, 1), make_rows(0, S))
        store.write_shard(1, make_arrays(2, 2), make_rows(1, 2, ["ok", "quarantined"]))
    before = tree_hashes(a)
    store = DatasetStore.open(a, mode="r+")
    store.write_shard(1, make_arrays(2, 2), make_rows(1, 2, ["ok", "quarantined"]))
    store.write_shard(0, make_arrays(S, 1), make_rows(0, S))
    assert tree_hashes(a) == before
    # a second store built from the same inputs holds the same bytes (only the group's created time differs)
    assert tree_hashes(a, exclude=("zarr.json",)) == tree_hashes(b, exclude=("zarr.json",))
    assert (a / "rgb/zarr.json").read_bytes() == (b / "rgb/zarr.json").read_bytes()


def test_zero_chunks_are_stored_whatever_zarrs_global_config(tmp_path):
    """Every chunk of a shard is stored, also all-zero ones (padding rows), even when zarr's process-global
    config says otherwise (another thread, or the user, may have set it): same bytes as under the default."""
    import zarr

    a, b = tmp_path / "a", tmp_path / "b"
    for path, empty in ((a, True), (b, False)):
        with zarr.config.set({"array.write_empty_chunks": empty}):
            store = new_store(path)
            store.ensure_shards(1)
            store = DatasetStore.open(path, mode="r+")
            store.write_shard(0, make_arrays(2, 2), make_rows(0, 2, ["ok", "quarantined"]))
    assert tree_hashes(a, exclude=("zarr.json",)) == tree_hashes(b, exclude=("zarr.json",))


def test_rewrite_with_fewer_rows_drops_old_rows(tmp_path):
    store = new_store(tmp_path / "ds")
    store.ensure_shards(1)
    store.write_shard(0, make_arrays(S, 1), make_rows(0, S))
    store.write_shard(0, make_arrays(2, 5), make_rows(0, 2))
    assert store.manifest().num_rows == 2
    assert not store.read_arrays(3)["depth"].any()


def test_manifest_merges_shards_sorted_with_extra_columns(tmp_path):
    store = new_store(tmp_path / "ds")
    store.ensure_shards(3)
    rows2 = make_rows(2, 2)
    for r in rows2:
        r["preprocess"] = "resize-518"
    store.write_shard(2, make_arrays(2, 3), rows2)
    store.write_shard(0, make_arrays(S, 1), make_rows(0, S, ["ok", "quarantined", "ok", "failed"]))
    rows1 = make_rows(1, 1)
    rows1[0].pop("lidar_points")
    store.write_shard(1, make_arrays(1, 2), rows1)

    table = store.manifest()
    assert store.complete_shards() == [0, 1, 2]
    assert table.column("index").to_pylist() == [0, 1, 2, 3, 4, 8, 9]
    assert table.column("row").to_pylist() == [0, 1, 2, 3, 0, 0, 1]
    assert table.column("status").to_pylist()[:4] == ["ok", "quarantined", "ok", "failed"]
    assert table.column("preprocess").to_pylist() == [None] * 5 + ["resize-518"] * 2
    assert table.column("lidar_points").to_pylist()[4] is None
    assert table.column("sensor").to_pylist() == ["hdl64"] * 7
    assert table.column("depth_max").null_count == 7
    for field in mf.SCHEMA:
        assert table.schema.field(field.name).type == field.type


def test_manifest_rows_are_validated(tmp_path):
    store = new_store(tmp_path / "ds")
    store.ensure_shards(1)
    arrays = make_arrays(1, 1)
    bad_status = make_rows(0, 1)
    bad_status[0]["status"] = "maybe"
    with pytest.raises(StoreError, match="status 'maybe' is not one of ok, quarantined, failed"):
        store.write_shard(0, arrays, bad_status)
    missing = make_rows(0, 1)
    del missing[0]["content_hash"]
    with pytest.raises(StoreError, match="missing content_hash"):
        store.write_shard(0, arrays, missing)
    wrong_index = make_rows(0, 1)
    wrong_index[0]["index"] = 5
    with pytest.raises(StoreError, match="index=5 but the row sits at index=0"):
        store.write_shard(0, arrays, wrong_index)
    with pytest.raises(StoreError, match="array depth has shape"):
        store.write_shard(0, {**arrays, "depth": arrays["depth"][:, :5]}, make_rows(0, 1))
    with pytest.raises(StoreError, match="array sparse has dtype float32"):
        store.write_shard(0, {**arrays, "sparse": arrays["depth"] / np.float32(256)}, make_rows(0, 1))
    with pytest.raises(StoreError, match="not allocated"):
        store.write_shard(1, arrays, make_rows(1, 1))
    assert store.complete_shards() == []


def test_open_errors_name_the_path(tmp_path):
    with pytest.raises(StoreError, match=f"{tmp_path / 'nope'}: no such store"):
        DatasetStore.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=f"{tmp_path / 'plain'}: not a monolidar store"):
        DatasetStore.open(tmp_path / "plain")
    import zarr

    zarr.open_group(str(tmp_path / "other"), mode="w")
    with pytest.raises(StoreError, match="not a monolidar store .zarr group without monolidar attributes"):
        DatasetStore.open(tmp_path / "other")
    with pytest.raises(StoreError, match="read-only"):
        new_store(tmp_path / "ds")
        DatasetStore.open(tmp_path / "ds").ensure_shards(1)


def test_corrupt_manifest_part_is_named(tmp_path):
    store = new_store(tmp_path / "ds")
    store.ensure_shards(2)
    store.write_shard(0, make_arrays(S, 1), make_rows(0, S))
    store.write_shard(1, make_arrays(S, 2), make_rows(1, S))
    part = tmp_path / "ds/manifest/shard-00001.parquet"
    part.write_bytes(part.read_bytes()[:40])
    with pytest.raises(StoreError, match=f"{part}: corrupt manifest part"):
        DatasetStore.open(tmp_path / "ds").manifest()


def test_finalize_consolidates_and_writes_card(tmp_path):
    import json

    import zarr

    store = new_store(tmp_path / "ds")
    store.ensure_shards(1)
    store.write_shard(0, make_arrays(S, 1), make_rows(0, S))
    store.finalize({"elapsed_s": 1.5, "samples": S})
    assert "consolidated_metadata" in json.loads((tmp_path / "ds/zarr.json").read_text())
    card = (tmp_path / "ds/README.md").read_text()
    assert "samples: 4 in 1 complete shards" in card and "hdl64" in card and '"sha256": "abc"' in card
    assert DatasetStore.open(tmp_path / "ds").attrs["summary"] == {"elapsed_s": 1.5, "samples": S}
    # growing a finalized store keeps the consolidated view in step with the arrays
    DatasetStore.open(tmp_path / "ds", mode="r+").ensure_shards(3)
    assert zarr.open_group(str(tmp_path / "ds"), mode="r")["depth"].shape[0] == 3 * S


def test_build_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path):
    import json
    import socket

    store = new_store(tmp_path / "ds")
    with store.lock(owner="build") as lock_path:
        holder = json.loads(lock_path.read_text())
        assert holder["pid"] == os.getpid() and holder["owner"] == "build"
        (tmp_path / "ds/.build.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "owner": "x"}))
        with pytest.raises(StoreError, match=r"is being built by pid 1 on elsewhere \(lock .*\.build\.lock\)"):
            with DatasetStore.open(tmp_path / "ds", mode="r+").lock():
                pass
        lock_path.write_text(json.dumps(holder))
    assert not (tmp_path / "ds/.build.lock").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "ds/.build.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with store.lock(owner="repair") as lock_path:
        assert json.loads(lock_path.read_text())["owner"] == "repair"


def _dataset_store(path: Path) -> dict[str, np.ndarray]:
    store = new_store(path)
    store.ensure_shards(3)
    arrays = [make_arrays(S, s) for s in range(3)]
    store.write_shard(0, arrays[0], make_rows(0, S))
    store.write_shard(1, arrays[1], make_rows(1, S, ["ok", "quarantined", "ok", "ok"]))
    store.write_shard(2, arrays[2], make_rows(2, S))
    return {name: np.concatenate([a[name] for a in arrays]) for name in ARRAYS}


def test_completion_dataset_items_and_crop(tmp_path):
    import torch

    from storage.dataset import CompletionDataset

    expected = _dataset_store(tmp_path / "ds")
    ds = CompletionDataset(tmp_path / "ds")
    assert len(ds) == 3 * S - 1 and S + 1 not in ds.indices.tolist()
    item = ds[5]
    index = item["index"]
    assert index == int(ds.indices[5])
    assert item["rgb"].shape == (3, H, W) and item["rgb"].dtype == torch.float32
    torch.testing.assert_close(item["rgb"], torch.from_numpy(expected["rgb"][index].transpose(2, 0, 1) / 255.0).float())
    torch.testing.assert_close(item["sparse"][0], torch.from_numpy(expected["sparse"][index] / 256.0).float())
    torch.testing.assert_close(item["depth"][0], torch.from_numpy(expected["depth"][index] / np.float32(256)))
    torch.testing.assert_close(item["teacher"][0], torch.from_numpy(expected["teacher_output"][index].astype(np.float32)))

    cropped = CompletionDataset(tmp_path / "ds", crop=(8, 10))
    c = cropped[5]
    assert c["rgb"].shape == (3, 8, 10) and c["sparse"].shape == (1, 8, 10)
    assert c["K"][0, 2].item() == pytest.approx(W / 2 - 5) and c["K"][1, 2].item() == pytest.approx(H / 2 - 2)
    torch.testing.assert_close(c["depth"][0], torch.from_numpy(expected["depth"][index][2:10, 5:15] / np.float32(256)))

    rand = CompletionDataset(tmp_path / "ds", crop=(8, 10), random_crop_seed=3)
    first = [rand[i]["K"][:2, 2].tolist() for i in range(len(rand))]
    assert first == [rand[i]["K"][:2, 2].tolist() for i in range(len(rand))]  # deterministic
    assert len({tuple(k) for k in first}) > 1
    from tasks.errors import InputError

    with pytest.raises(InputError, match="does not fit"):
        CompletionDataset(tmp_path / "ds", crop=(H + 1, W))


def test_dataloader_with_two_workers_and_shard_sampler(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from storage.dataset import CompletionDataset, ShardOrderedSampler

    expected = _dataset_store(tmp_path / "ds")
    ds = CompletionDataset(tmp_path / "ds")
    sampler = ShardOrderedSampler(ds, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(len(ds)))
    shards_seen = [int(ds.shards[p]) for p in order]
    assert shards_seen == sorted(shards_seen, key=shards_seen.index)  # each shard is one contiguous run
    sampler.set_epoch(1)
    assert list(sampler) != order or len(ds) < 3
    ds[0]  # open the store in the parent: the workers must not inherit a broken handle
    # spawn: in a process that has run Prefect flows (as this test session has), forked workers exit with
    # status 1 on Prefect's at-fork handlers; spawn is also what CUDA and macOS need.
    loader = DataLoader(ds, batch_size=4, sampler=ShardOrderedSampler(ds, seed=1), num_workers=2,
                        multiprocessing_context="spawn")
    seen = []
    for batch in loader:
        assert batch["rgb"].shape[1:] == (3, H, W)
        for j, index in enumerate(batch["index"].tolist()):
            seen.append(index)
            torch.testing.assert_close(batch["depth"][j, 0], torch.from_numpy(expected["depth"][index] / np.float32(256)))
    assert sorted(seen) == sorted(ds.indices.tolist())


def test_format_1_store_asks_for_a_rebuild(tmp_path):
    import json

    new_store(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "zarr.json").read_text())
    meta["attributes"]["monolidar"]["format_version"] = 1  # the custom-codec format
    (tmp_path / "ds" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=f"{tmp_path / 'ds'}: store format 1 used a custom rgb codec.*rebuild"):
        DatasetStore.open(tmp_path / "ds")


def test_unknown_compression_profile_is_refused(tmp_path):
    with pytest.raises(StoreError, match="unknown compression 'tiny'; expected one of balanced, fast, small"):
        new_store(tmp_path / "ds", compression="tiny")


def test_a_store_keeps_the_codecs_it_was_created_with(tmp_path, monkeypatch):
    """Profiles can be retuned between releases (balanced's RGB went from zstd to lz4): a store created under
    the earlier definition keeps writing its later shards with the codecs its array metadata records, and plain
    zarr-python reads both kinds of shard bit for bit."""
    import zarr

    from storage import compression

    earlier = dict(compression.COMPRESSION["balanced"], rgb=(None, "zstd", 1, "bitshuffle", 256 << 10))
    monkeypatch.setitem(compression.COMPRESSION, "balanced", earlier)
    store = new_store(tmp_path / "ds")
    store.ensure_shards(2)
    first = make_arrays(S, 1)
    store.write_shard(0, first, make_rows(0, S))
    monkeypatch.undo()  # today's definition from here on
    assert compression.COMPRESSION["balanced"]["rgb"][1] == "lz4"
    second = make_arrays(S, 2)
    reopened = DatasetStore.open(tmp_path / "ds", mode="r+")
    digest = reopened.write_array(1, "rgb", second["rgb"])
    reopened.write_shard(1, {k: v for k, v in second.items() if k != "rgb"}, make_rows(1, S), written={"rgb": digest})
    group = zarr.open_group(str(tmp_path / "ds"), mode="r")
    inner = group["rgb"].metadata.codecs[0].codecs
    assert [c.cname.value for c in inner if hasattr(c, "cname")] == ["zstd"]
    np.testing.assert_array_equal(group["rgb"][:S], first["rgb"])
    np.testing.assert_array_equal(group["rgb"][S:2 * S], second["rgb"])
    # The bytes themselves: Blosc's header names the compressor that wrote each chunk (flags bits 5-7, 4 =
    # zstd), and any codec decodes, so the values alone would not show it. Chunk 0 opens each shard object.
    for shard in (0, 1):
        head = (tmp_path / "ds" / reopened.shard_object("rgb", shard)).read_bytes()[:3]
        assert head[2] >> 5 == 4, shard


def test_compression_type_lists_every_profile():
    """The flow's typed parameter (the Prefect UI's dropdown) offers exactly the profiles the store knows."""
    from typing import get_args

    from storage.compression import COMPRESSION, DEFAULT_COMPRESSION, Compression

    assert sorted(get_args(Compression)) == sorted(COMPRESSION) and DEFAULT_COMPRESSION in COMPRESSION


def test_read_only_store_reads_through_tensorstore_with_checksums(tmp_path):
    """A read-only local store reads samples through tensorstore: the same values as zarr-python (the writable
    handle's path), and a flipped byte in a shard object is refused with a StoreError naming the array."""
    store = new_store(tmp_path / "ds")
    store.ensure_shards(1)
    arrays = make_arrays(S, 7)
    store.write_shard(0, arrays, make_rows(0, S))
    reader = DatasetStore.open(tmp_path / "ds")
    assert reader._fast_readers() is not None and store._fast_readers() is None
    for i in (0, S - 1):
        fast, plain = reader.read_arrays(i), store.read_arrays(i)
        for name in ARRAYS:
            assert fast[name].dtype == plain[name].dtype and fast[name].tobytes() == plain[name].tobytes(), name
    obj = tmp_path / "ds" / store.shard_object("depth", 0)
    data = bytearray(obj.read_bytes())
    data[len(data) // 3] ^= 0x10
    obj.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="depth: .*(Digest mismatch|DATA_LOSS)"):
        for i in range(S):
            DatasetStore.open(tmp_path / "ds").read_arrays(i)


def test_a_child_forked_after_a_tensorstore_read_still_reads(tmp_path):
    """tensorstore aborts a forked child that uses it (fork-based DataLoader workers): a child forked after the
    parent read through tensorstore reads through zarr-python instead, with the same values."""
    store = new_store(tmp_path / "ds")
    store.ensure_shards(1)
    store.write_shard(0, make_arrays(S, 3), make_rows(0, S))
    reader = DatasetStore.open(tmp_path / "ds")
    want = reader.read_arrays(1)["depth"].tobytes()  # tensorstore has run in this process
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if it read the same bytes
        ok = False
        try:
            ok = DatasetStore.open(tmp_path / "ds").read_arrays(1)["depth"].tobytes() == want
        finally:
            os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_format_3_keeps_depth_as_kitti_uint16_and_reads_format_2_stores(tmp_path):
    import zarr

    from storage.dataset import CompletionDataset

    arrays = make_arrays(S, 4)
    metres = arrays["depth"] / np.float32(256)
    new = new_store(tmp_path / "v3")
    new.ensure_shards(1)
    new.write_shard(0, {**arrays, "depth": metres}, make_rows(0, S))  # metres in: stored as uint16
    raw = zarr.open_group(str(tmp_path / "v3"), mode="r")
    assert raw["depth"].dtype == np.uint16 and raw["K"].chunks[0] == S  # K: one chunk per shard
    np.testing.assert_array_equal(raw["depth"][:S], arrays["depth"])
    np.testing.assert_array_equal(new.read_sample(1)["depth"], metres[1])

    # A format-2 store (float32 metres, one K chunk per sample) built before: read and written in its own form.
    new_store(tmp_path / "v2")
    g = zarr.open_group(str(tmp_path / "v2"), mode="r+")
    fmt = dict(g.attrs["monolidar"], format_version=2)
    g.attrs["monolidar"] = fmt
    del g["depth"]
    g.create_array("depth", shape=(0, H, W), dtype="float32", chunks=(1, H, W), shards=(S, H, W), fill_value=0)
    old = DatasetStore.open(tmp_path / "v2", mode="r+")
    old.ensure_shards(1)
    old.write_shard(0, arrays, make_rows(0, S))  # uint16 in: stored as float32 metres
    assert zarr.open_group(str(tmp_path / "v2"), mode="r")["depth"].dtype == np.float32
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "v2"), mode="r")["depth"][:S], metres)
    for store in ("v2", "v3"):
        item = CompletionDataset(tmp_path / store)[2]
        np.testing.assert_array_equal(item["depth"][0].numpy(), metres[item["index"]])
        np.testing.assert_array_equal(DatasetStore.open(tmp_path / store).read_sample(3)["depth"], metres[3])


@pytest.mark.parametrize("n_rows", [S, 3])
def test_array_written_ahead_gives_the_same_shard_as_one_write(tmp_path, n_rows):
    """write_array (the build's teacher stage writes rgb where it decodes the photos, its chunks encoded by
    threads) + write_shard(written=...) leave exactly the files of one plain write_shard; write_array uncommits
    a complete shard first; write_shard refuses an array that is neither given nor written."""
    from concurrent.futures import ThreadPoolExecutor

    arrays, rows = make_arrays(n_rows, 5), make_rows(0, n_rows)
    plain = new_store(tmp_path / "plain")
    plain.ensure_shards(1)
    plain.write_shard(0, arrays, rows)
    ahead = new_store(tmp_path / "ahead")
    ahead.ensure_shards(1)
    ahead.write_shard(0, make_arrays(S, 9), make_rows(0, S))  # an older complete shard 0
    with ThreadPoolExecutor(3) as pool:
        digest = ahead.write_array(0, "rgb", arrays["rgb"], executor=pool)
    assert ahead.complete_shards() == []  # the older manifest part no longer vouches for the new image object
    rest = {k: v for k, v in arrays.items() if k != "rgb"}
    ahead.write_shard(0, rest, rows, written={"rgb": digest})
    assert tree_hashes(tmp_path / "ahead") == tree_hashes(tmp_path / "plain")
    assert np.array_equal(DatasetStore.open(tmp_path / "ahead").read_sample(1)["rgb"], arrays["rgb"][1])

    with pytest.raises(StoreError, match="missing"):
        ahead.write_shard(0, rest, rows)  # rgb neither given nor written
    with pytest.raises(StoreError, match="both"):
        ahead.write_shard(0, arrays, rows, written={"rgb": digest})
    (tmp_path / "ahead" / ahead.shard_object("rgb", 0)).unlink()
    with pytest.raises(StoreError, match="rgb.*missing"):
        ahead.write_shard(0, rest, rows, written={"rgb": digest})
    with pytest.raises(StoreError, match="shape"):
        ahead.write_array(0, "rgb", arrays["rgb"][:, :5])
