"""A store is standard Zarr v3: plain zarr-python (in a process that never imports monolidar) and tensorstore
read every array bit for bit, and pyarrow reads the manifest as one dataset."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from storage.store import ARRAYS, DatasetStore
from tests.helpers import S, make_arrays, make_rows, new_store

# Runs with monolidar's packages made unimportable (the venv may hold an editable install of it): only zarr +
# numpy + pyarrow. Prints {array: sha256 of all its bytes} and the codecs seen.
PLAIN_READER = textwrap.dedent(
    """
    import hashlib, importlib.abc, json, sys

    class NoMonolidar(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("storage", "tasks", "model", "flows"):
                raise ImportError(f"{{name}} is blocked: the plain reader must not need monolidar")
            return None

    sys.meta_path.insert(0, NoMonolidar())
    import zarr, pyarrow.parquet as pq
    g = zarr.open_group(sys.argv[1], mode="r")
    out = {{"arrays": {{}}, "codecs": set()}}
    for name, arr in g.arrays():
        data = arr[...]
        out["arrays"][name] = [str(data.dtype), list(data.shape), hashlib.sha256(data.tobytes()).hexdigest()]
        for c in arr.metadata.to_dict()["codecs"]:
            out["codecs"].add(c["name"])
            for inner in c.get("configuration", {{}}).get("codecs", []):
                out["codecs"].add(inner["name"])
    out["codecs"] = sorted(out["codecs"])
    out["manifest_rows"] = pq.read_table(sys.argv[1] + "/manifest").num_rows
    out["monolidar_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("storage", "tasks", "model", "flows"))
    print(json.dumps(out))
    """
)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(params=["balanced", "small"])
def built(tmp_path, request) -> tuple[Path, dict[str, np.ndarray]]:
    store = new_store(tmp_path / "ds", compression=request.param)
    store.ensure_shards(3)
    full, partial = make_arrays(S, 1), make_arrays(2, 2)
    store.write_shard(0, full, make_rows(0, S))
    store.write_shard(2, partial, make_rows(2, 2, ["ok", "quarantined"]))
    store.finalize({"test": True})
    # What every array holds: shard 0, an unwritten shard 1 (fill value), shard 2 with padding rows.
    expected = {}
    for name, (dtype, _) in ARRAYS.items():
        whole = np.zeros((3 * S, *full[name].shape[1:]), dtype)
        whole[:S] = full[name]
        whole[2 * S:2 * S + 2] = partial[name]
        expected[name] = whole
    return tmp_path / "ds", expected


def test_plain_zarr_without_monolidar_reads_every_array_bit_for_bit(built):
    path, expected = built
    proc = subprocess.run([sys.executable, "-c", PLAIN_READER.format(), str(path)], capture_output=True,
                          text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["monolidar_modules"] == []
    assert set(got["codecs"]) <= {"bytes", "blosc", "crc32c", "sharding_indexed", "transpose", "zstd"}
    assert {"crc32c", "sharding_indexed"} <= set(got["codecs"])
    assert got["manifest_rows"] == S + 2
    for name, a in expected.items():
        assert got["arrays"][name] == [str(a.dtype), list(a.shape), _digest(a)], name


def test_tensorstore_reads_every_array_bit_for_bit(built):
    ts = pytest.importorskip("tensorstore")
    path, expected = built
    for name, a in expected.items():
        arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)}},
                      open=True, read=True).result()
        data = arr.read().result()
        assert data.dtype == a.dtype and data.shape == a.shape, name
        assert _digest(data) == _digest(a), name
        # and one sample through a tensorstore slice equals monolidar's own read
        np.testing.assert_array_equal(arr[S + 1].read().result(), DatasetStore.open(path).read_arrays(S + 1)[name])
