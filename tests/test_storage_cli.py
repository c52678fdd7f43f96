"""`monolidar inspect` / `export-kitti`: output and one-line errors with exit code 2."""
from __future__ import annotations

import json

import pytest

from flows.cli import main
from tests.helpers import make_arrays, make_rows, new_store, S


def _store(tmp_path):
    store = new_store(tmp_path / "ds")
    store.ensure_shards(3)
    store.write_shard(0, make_arrays(S, 1), make_rows(0, S, ["ok", "ok", "quarantined", "failed"]))
    store.write_shard(1, make_arrays(2, 2), make_rows(1, 2))
    return store


def test_inspect_json_and_text(tmp_path, capsys):
    _store(tmp_path)
    assert main(["inspect", str(tmp_path / "ds"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 6 and info["shards"] == 2 and info["shards_complete"] == [0, 1]
    assert info["shards_allocated"] == 3 and info["shard_size"] == S
    assert info["status"] == {"ok": 4, "quarantined": 1, "failed": 1}
    assert info["lidar_density_mean"] == pytest.approx(0.05)
    assert info["teacher"] == {"sha256": "abc"} and info["sensor"] == "hdl64"
    assert {"height", "width", "code_version", "created", "path"} <= set(info)
    assert main(["inspect", str(tmp_path / "ds")]) == 0
    text = capsys.readouterr().out
    assert "samples     6 (ok 4, quarantined 1, failed 1)" in text and "hdl64, mean density 5.00 %" in text


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_stores_exit_2_with_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["inspect", str(tmp_path / "missing")], "monolidar inspect: error:",
                    f"{tmp_path / 'missing'}: no such store")
    (tmp_path / "plain").mkdir()
    _one_line_error(capsys, ["inspect", str(tmp_path / "plain"), "--json"], f"{tmp_path / 'plain'}: not a monolidar store")
    _one_line_error(capsys, ["export-kitti", str(tmp_path / "plain"), str(tmp_path / "out")],
                    "monolidar export-kitti: error:", "not a monolidar store")
    _store(tmp_path)
    part = tmp_path / "ds/manifest/shard-00001.parquet"
    part.write_bytes(b"PAR1 garbage")
    _one_line_error(capsys, ["inspect", str(tmp_path / "ds")], f"{part}: corrupt manifest part")
    _one_line_error(capsys, ["export-kitti", str(tmp_path / "ds"), str(tmp_path / "out")], f"{part}: corrupt manifest part")
