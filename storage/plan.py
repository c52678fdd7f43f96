"""The build plan stored inside a dataset: which input goes to which shard and row, with which seed.

``<store>/plan.parquet`` is rewritten (atomically: temp file + rename) by the single process holding the
build lock, before any shard is written. Repair reads it to know what a missing shard must contain, and
an incremental build reads it to keep existing samples where they are.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import StoreError

PLAN_FILE = "plan.parquet"
PLAN_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("key", pa.string()),
        ("uri", pa.string()),
        ("variant", pa.int32()),
        ("shard", pa.int32()),
        ("row", pa.int32()),
        ("seed", pa.int64()),
    ]
)


def write_plan(store_path: str | os.PathLike, rows: list[dict]) -> Path:
    path = Path(store_path) / PLAN_FILE
    table = pa.Table.from_pylist(
        [{k: r[k] for k in PLAN_SCHEMA.names} for r in rows], schema=PLAN_SCHEMA
    ).sort_by([("shard", "ascending"), ("row", "ascending")])
    tmp = path.with_name(f".{PLAN_FILE}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_plan(store_path: str | os.PathLike) -> list[dict]:
    """Rows of the stored plan; [] for a store that has none yet."""
    path = Path(store_path) / PLAN_FILE
    if not path.exists():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:
        raise StoreError(f"{path}: unreadable build plan ({type(exc).__name__}: {exc})") from exc
