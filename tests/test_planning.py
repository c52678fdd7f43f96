"""Input discovery and append-only shard planning (pure functions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.cache import ArrayCache
from tasks.errors import InputError, StoreError
from tasks.planning import discover_inputs, plan_shards, sample_id_for


def _touch(root: Path, names: list[str]) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_discover_folder_sorted_recursive_and_filtered(tmp_path):
    _touch(tmp_path, ["b.jpg", "a.png", "sub/c.JPG", "notes.txt"])
    items = discover_inputs(str(tmp_path))
    assert [i.key for i in items] == ["a.png", "b.jpg", "sub/c.JPG"]
    assert all(Path(i.uri).is_file() for i in items)


def test_discover_glob_text_list_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _touch(tmp_path, ["x/1.jpg", "x/2.jpg", "x/3.png"])
    assert [i.key for i in discover_inputs(str(tmp_path / "x" / "*.jpg"))] == ["1.jpg", "2.jpg"]
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nx/2.jpg\nx/1.jpg\n")
    items = discover_inputs(str(lst))
    assert [i.key for i in items] == ["x/1.jpg", "x/2.jpg"]
    assert Path(items[0].uri).is_file()
    pq.write_table(pa.table({"uri": [str(tmp_path / "x/3.png")]}), tmp_path / "l.parquet")
    assert discover_inputs(str(tmp_path / "l.parquet"))[0].uri.endswith("3.png")


def test_discover_fsspec_memory_filesystem():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/imgs/a.jpg", b"1")
    fs.pipe("/imgs/b.jpg", b"2")
    items = discover_inputs("memory://imgs")
    assert [i.key for i in items] == ["a.jpg", "b.jpg"]
    assert items[0].uri.startswith("memory://")


def test_discover_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover_inputs(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no images"):
        discover_inputs(str(tmp_path))


def _inputs(tmp_path, names):
    _touch(tmp_path, names)
    return discover_inputs(str(tmp_path))


def test_plan_is_deterministic_and_packs_shards(tmp_path):
    inputs = _inputs(tmp_path, [f"{i:03d}.jpg" for i in range(7)])
    a = plan_shards(inputs, shard_size=3, samples_per_image=2, seed=5)
    b = plan_shards(list(reversed(inputs)), shard_size=3, samples_per_image=2, seed=5)
    assert a.samples == b.samples
    assert a.n_shards == 5 and [len(v) for v in a.shards().values()] == [3, 3, 3, 3, 2]
    assert len({s.seed for s in a.samples}) == 14
    assert a.samples[0].sample_id == sample_id_for("000.jpg", 0)
    c = plan_shards(inputs, shard_size=3, samples_per_image=2, seed=6)
    assert [s.seed for s in c.samples] != [s.seed for s in a.samples]


def test_plan_appends_new_inputs_and_keeps_existing(tmp_path):
    first = _inputs(tmp_path, ["b.jpg", "d.jpg", "f.jpg"])
    p1 = plan_shards(first, shard_size=2, samples_per_image=1, seed=0)
    existing = [s.__dict__ for s in p1.samples]
    grown = _inputs(tmp_path, ["a.jpg", "c.jpg"])  # sorts *before* the old ones: must not shift them
    (tmp_path / "f.jpg").unlink()
    grown = discover_inputs(str(tmp_path))
    p2 = plan_shards(grown, shard_size=2, samples_per_image=1, seed=0, existing=existing)
    assert p2.samples[: len(existing)] == p1.samples  # untouched
    new = p2.samples[len(existing):]
    assert [s.key for s in new] == ["a.jpg", "c.jpg"]
    assert {s.shard for s in new} == {2} and p2.new_shards == [2]
    assert p2.removed_keys == ["f.jpg"]
    again = plan_shards(grown, shard_size=2, samples_per_image=1, seed=0, existing=[s.__dict__ for s in p2.samples])
    assert again.samples == p2.samples and again.new_shards == []


def test_array_cache_roundtrip_and_atomicity(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    key = "ab" * 32
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert not cache.has("teacher", key)
    cache.put("teacher", key, arr)
    assert cache.has("teacher", key)
    np.testing.assert_array_equal(cache.get("teacher", key), arr)
    cache.put("teacher", key, arr + 1)  # existing entry wins (content-addressed)
    np.testing.assert_array_equal(cache.get("teacher", key), arr)
    (tmp_path / "c" / "teacher" / "ab" / ".x.tmp-1").mkdir()  # a crashed writer's leftover
    assert cache.clear_temporaries() == 1
    with pytest.raises(ValueError):
        cache.get("teacher", "not-hex")


def test_plan_fast_ids_and_seeds_equal_the_reference_formulas():
    from tasks.planning import InputImage, _sample_seed, sample_id_for
    from tasks.provenance import derive_seed

    items = [InputImage(key=f"dir/ü{i}.jpg", uri=f"/x/{i}.jpg") for i in range(50)]
    plan = plan_shards(items, shard_size=7, samples_per_image=2, seed=123)
    for s in plan.samples:
        assert s.sample_id == sample_id_for(s.key, s.variant)
        assert s.seed == derive_seed(123, s.sample_id) == _sample_seed(123, s.sample_id)


def test_array_cache_float16_maps_roundtrip_bit_exact(tmp_path):
    """Teacher maps are stored as row deltas of their 16-bit patterns: every bit pattern survives (NaN, inf,
    -0.0, subnormals), and other arrays are stored as they are."""
    cache = ArrayCache(tmp_path / "c")
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0, 0.01, (37, 53)), axis=1).astype(np.float16)
    smooth[0, :4] = [np.nan, np.inf, -0.0, np.float16(6e-8)]
    cache.put("teacher", "01" * 32, smooth)
    back = cache.get("teacher", "01" * 32)
    assert back.dtype == np.float16 and back.shape == smooth.shape
    np.testing.assert_array_equal(back.view(np.uint16), smooth.view(np.uint16))
    other = rng.normal(size=(3, 4, 5)).astype(np.float32)
    cache.put("teacher", "02" * 32, other)
    np.testing.assert_array_equal(cache.get("teacher", "02" * 32), other)
    (tmp_path / "c" / "teacher" / "01" / ("01" * 32 + ".npy.zst")).write_bytes(b"garbage")
    with pytest.raises(StoreError, match="unreadable cache entry"):
        cache.get("teacher", "01" * 32)


def test_array_cache_float16_layout_is_low_then_high_byte_plane(tmp_path):
    """Entries written by earlier builds stay readable: the F16D body is the (low, high) byte planes of the
    row deltas, exactly as documented in storage.cache, whatever the encoder does internally."""
    import io

    from storage.cache import _zstd

    cache = ArrayCache(tmp_path / "c")
    a = np.linspace(0, 3, 6 * 7, dtype=np.float16).reshape(6, 7)
    path = cache.put("teacher", "03" * 32, a)
    raw = bytes(_zstd().decode(path.read_bytes()))
    assert raw[:4] == b"F16D"
    planes = np.load(io.BytesIO(raw[4:]))
    d = np.diff(a.view(np.uint16), axis=1, prepend=np.uint16(0))
    np.testing.assert_array_equal(planes, np.stack([d & 0xFF, d >> 8]).astype(np.uint8))


def test_plan_rows_for_shard_reads_only_its_row_groups(tmp_path, monkeypatch):
    """A shard write reads the plan's footer and the row groups whose shard range holds it, not the whole
    plan, and gets exactly the rows a full read + filter gives."""
    import pyarrow.parquet as pq

    import storage.plan as sp

    monkeypatch.setattr(sp, "PLAN_ROW_GROUP", 10)
    rows = [{"sample_id": f"s{i}", "key": f"k{i}", "uri": f"/x/{i}.jpg", "variant": 0, "shard": i // 4,
             "row": i % 4, "seed": i} for i in range(100)][::-1]  # unsorted on purpose: the plan sorts
    sp.write_plan(tmp_path, rows)
    pf = pq.ParquetFile(tmp_path / sp.PLAN_FILE)
    assert pf.metadata.num_row_groups == 10
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, *a, **k: read.append(list(groups)) or real(self, groups, *a, **k))
    full = sp.read_plan(tmp_path)
    for shard in (0, 2, 7, 24):
        got = sp.plan_rows_for_shard(tmp_path, shard)
        assert got == sorted((r for r in full if r["shard"] == shard), key=lambda r: r["row"])
        assert [r["row"] for r in got] == [0, 1, 2, 3]
    assert read == [[0], [0, 1], [2, 3], [9]]  # shard 2 (rows 8-11) straddles groups 0 and 1
    assert sp.plan_rows_for_shard(tmp_path, 99) == []
    assert sp.plan_rows_for_shard(tmp_path / "absent", 0) == []
