"""Parquet manifest of a dataset store: one immutable part file per shard, merged on read.

A part ``manifest/shard-00042.parquet`` is written only after every array of shard 42 is on disk, through a
temporary file and ``os.replace``, so its presence is the commit marker of the shard: a crash at any point
leaves either the old complete shard or no part at all. Parts are never appended in place; rewriting a shard
replaces its part whole.

Row schema (one row per sample slot written; extra keys become extra columns):
``sample_id, source_uri, content_hash, shard, row, index (= shard*shard_size + row), seed, sensor,
status ("ok" | "quarantined" | "failed"), reason ("" when ok), lidar_points, lidar_density (share of pixels
with a LiDAR return), first_row, depth_min, depth_max``. The stat columns are optional (null when missing).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import StoreError

STATUSES = ("ok", "quarantined", "failed")

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("source_uri", pa.string()),
        ("content_hash", pa.string()),
        ("shard", pa.int32()),
        ("row", pa.int32()),
        ("index", pa.int64()),
        ("seed", pa.int64()),
        ("sensor", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("lidar_points", pa.int32()),
        ("lidar_density", pa.float32()),
        ("first_row", pa.int32()),
        ("depth_min", pa.float32()),
        ("depth_max", pa.float32()),
    ]
)
# Keys every caller must supply; shard/row/index/sensor/reason are filled in by normalize_rows.
REQUIRED = ("sample_id", "source_uri", "content_hash", "seed", "status")
OPTIONAL_STATS = ("lidar_points", "lidar_density", "first_row", "depth_min", "depth_max")

MANIFEST_DIR = "manifest"
_PART_RE = re.compile(r"^shard-(\d{5,})\.parquet$")


def part_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def part_shard(name: str) -> int | None:
    """Shard number of a part file name, or None for anything else (temporary files, stray files)."""
    m = _PART_RE.match(name)
    return int(m.group(1)) if m else None


def normalize_rows(rows: list[dict], *, shard: int, shard_size: int, sensor: str) -> list[dict]:
    """Validate caller rows and fill the positional columns (shard, row, index) and defaults.

    A row that already carries shard/row/index must agree with its position, so a caller cannot silently
    point a manifest row at another sample's arrays.
    """
    out = []
    for row_i, raw in enumerate(rows):
        if not isinstance(raw, dict):
            raise StoreError(f"manifest row {row_i} of shard {shard}: expected a dict, got {type(raw).__name__}")
        missing = [k for k in REQUIRED if k not in raw or raw[k] is None]
        if missing:
            raise StoreError(f"manifest row {row_i} of shard {shard}: missing {', '.join(missing)}")
        status = raw["status"]
        if status not in STATUSES:
            raise StoreError(
                f"manifest row {row_i} of shard {shard}: status {status!r} is not one of {', '.join(STATUSES)}"
            )
        row = dict(raw)
        expected = {"shard": shard, "row": row_i, "index": shard * shard_size + row_i}
        for key, value in expected.items():
            if key in row and row[key] is not None and int(row[key]) != value:
                raise StoreError(
                    f"manifest row {row_i} of shard {shard}: {key}={row[key]} but the row sits at {key}={value}"
                )
            row[key] = value
        row.setdefault("sensor", sensor)
        if row.get("reason") is None:
            row["reason"] = ""
        if status != "ok" and not row["reason"]:
            raise StoreError(f"manifest row {row_i} of shard {shard}: status {status!r} needs a reason")
        for key in OPTIONAL_STATS:
            row.setdefault(key, None)
        out.append(row)
    return out


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (already normalised) -> Arrow table with SCHEMA columns first, extra keys after, in sorted order."""
    columns: dict[str, pa.Array] = {}
    for field in SCHEMA:
        columns[field.name] = pa.array([r.get(field.name) for r in rows], type=field.type)
    extras = sorted({k for r in rows for k in r} - set(SCHEMA.names))
    for key in extras:
        try:
            columns[key] = pa.array([r.get(key) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StoreError(f"manifest column {key!r}: values of mixed or unsupported types ({exc})") from None
    return pa.table(columns)


def write_part(path: Path, table: pa.Table) -> None:
    """Write a part atomically: a reader sees the old part, no part, or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as f:  # durable before it becomes visible under the real name
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_part(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path}: corrupt manifest part ({reason})") from None


def merge_parts(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate parts (extra columns missing from some parts become null) and sort by sample index."""
    tables = list(tables)
    if not tables:
        return SCHEMA.empty_table()
    merged = pa.concat_tables(tables, promote_options="default")
    return merged.sort_by([("index", "ascending")])


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()
