"""storage.shard_encoding writes the exact bytes zarr-python writes for a whole shard, for every codec chain the
store uses, and declines the chains it does not handle."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec

from storage.shard_encoding import encode_shard
from storage.compression import COMPRESSION
from storage.store import ARRAYS, DatasetStore
from tests.helpers import H, W, make_arrays, make_rows


def _zarr_bytes(array, data: np.ndarray, shard: int) -> bytes:
    """What zarr-python stores for shard ``shard`` when given ``data`` (every chunk written, as the store does)."""
    n = data.shape[0]
    with zarr.config.set({"array.write_empty_chunks": True}):
        array[shard * n:(shard + 1) * n] = data
    key = "/".join(["c", str(shard)] + ["0"] * (data.ndim - 1))
    return (array.store_path.store.root / array.path / key).read_bytes()


@pytest.mark.parametrize("compression", sorted(COMPRESSION))
def test_store_arrays_match_zarr_python_byte_for_byte(tmp_path, compression):
    n = 4
    store = DatasetStore.create(tmp_path / "ds", height=H, width=W, shard_size=n, config={}, teacher={},
                                sensor="hdl64e_kitti", code_version="test", compression=compression)
    store.ensure_shards(2)
    arrays = make_arrays(n, 7)
    arrays["rgb"][2] = 0  # a quarantined row: all fill value, still a stored chunk
    for name in ARRAYS:
        data = np.asarray(arrays[name], dtype=store._arrays[name].dtype)
        ours = encode_shard(store._arrays[name], data)
        assert ours is not None, name
        assert ours == _zarr_bytes(store._arrays[name], data, 1), name


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "float32"])
def test_sharded_chains_match_zarr_python(tmp_path, index_location, dtype):
    rng = np.random.default_rng(3)
    shard = (6, 5, 8)
    data = (rng.random(shard) * 200).astype(dtype)
    data[1] = 0  # an all-zero chunk
    data[3] = -0.0 if data.dtype.kind == "f" else 0  # a negative zero is not the fill value
    for filters, chunks in [(None, (1, 5, 8)), ([TransposeCodec(order=(0, 2, 1))], (2, 5, 4))]:
        path = tmp_path / f"{index_location}-{dtype}-{bool(filters)}.zarr"
        array = zarr.create_array(
            store=zarr.storage.LocalStore(path), shape=(2 * shard[0], *shard[1:]), chunks=chunks,
            shards={"shape": shard, "index_location": index_location}, dtype=dtype, fill_value=0, filters=filters,
            config={"write_empty_chunks": True},
            compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=data.dtype.itemsize),
                         Crc32cCodec()],
        )
        ours = encode_shard(array, data)
        assert ours is not None
        assert ours == _zarr_bytes(array, data, 1)
        np.testing.assert_array_equal(array[shard[0]:], data)  # and zarr reads it back as written


def test_unhandled_codecs_and_shapes_are_declined(tmp_path):
    gz = zarr.create_array(store=zarr.storage.LocalStore(tmp_path / "gz.zarr"), shape=(4, 3), shards=(2, 3),
                           chunks=(1, 3), dtype="uint8", compressors=[GzipCodec()])
    assert encode_shard(gz, np.zeros((2, 3), np.uint8)) is None
    plain = zarr.create_array(store=zarr.storage.LocalStore(tmp_path / "plain.zarr"), shape=(4, 3), chunks=(1, 3),
                              dtype="uint8")  # not sharded
    assert encode_shard(plain, np.zeros((1, 3), np.uint8)) is None
    big = zarr.create_array(store=zarr.storage.LocalStore(tmp_path / "b.zarr"), shape=(4, 3), shards=(2, 3),
                            chunks=(1, 3), dtype="uint8", serializer=BytesCodec(), compressors=None,
                            config={"write_empty_chunks": False})
    assert encode_shard(big, np.zeros((3, 3), np.uint8)) is None  # not one shard's shape
    # zarr-python would drop all-zero chunks of this array: its layout is left to zarr-python
    assert encode_shard(big, np.zeros((2, 3), np.uint8)) is None
    every_chunk = big.with_config({"write_empty_chunks": True})  # no compressor at all: handled
    data = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert encode_shard(every_chunk, data) == _zarr_bytes(every_chunk, data, 1)


def test_write_shard_publishes_what_the_manifest_hashes(tmp_path):
    store = DatasetStore.create(tmp_path / "ds", height=H, width=W, shard_size=4, config={}, teacher={},
                                sensor="hdl64e_kitti", code_version="test")
    store.ensure_shards(1)
    arrays = make_arrays(3, 5)  # a short last shard: padded with fill-value rows
    store.write_shard(0, arrays, make_rows(0, 3))
    from storage import manifest as mf

    recorded = mf.integrity(store.manifest_part(0))["shard_sha256"]
    assert recorded == store.shard_hashes(0)  # hashed in memory = hash of the published objects
    for name in ARRAYS:
        got = store.read_arrays(2, names=(name,))[name]
        assert got.tobytes() == arrays[name][2].tobytes(), name
        assert not store.read_arrays(3, names=(name,))[name].any(), name  # the padding row


def test_bytes_do_not_depend_on_blosc_threads_and_the_setting_is_restored(tmp_path):
    """With Blosc's threads switched on for the process (several threads place compressed blocks in the order
    they finish, so plain Blosc calls give varying bytes), encode_shard still gives the same bytes every time;
    concurrent encoders keep the threads off until the last one leaves, then the setting comes back."""
    import threading

    import numcodecs.blosc

    from storage.shard_encoding import _blosc_single_threaded

    n = 8
    store = DatasetStore.create(tmp_path / "ds", height=H, width=W, shard_size=n, config={}, teacher={},
                                sensor="hdl64e_kitti", code_version="test")
    store.ensure_shards(1)
    rgb = np.asarray(make_arrays(n, 3)["rgb"], dtype=store._arrays["rgb"].dtype)
    before = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = True
    try:
        first = encode_shard(store._arrays["rgb"], rgb)
        assert all(encode_shard(store._arrays["rgb"], rgb) == first for _ in range(5))
        assert numcodecs.blosc.use_threads is True
        inside, release = threading.Event(), threading.Event()

        def other_encoder():
            with _blosc_single_threaded():
                inside.set()
                release.wait(10)

        t = threading.Thread(target=other_encoder)
        with _blosc_single_threaded():
            t.start()
            assert inside.wait(10)
        assert numcodecs.blosc.use_threads is False  # the other encoder is still inside
        release.set()
        t.join(10)
        assert numcodecs.blosc.use_threads is True
    finally:
        numcodecs.blosc.use_threads = before
