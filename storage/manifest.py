"""Parquet manifest of a dataset store: one immutable part file per shard, merged on read.

A part ``manifest/shard-00042.parquet`` is written only after every array of shard 42 is stored, in one
whole-file write (tmp + ``os.replace`` locally, one PUT on object storage), so its presence is the commit
marker of the shard: a crash at any point leaves either the old complete shard or no part at all. Parts are
never appended in place; rewriting a shard replaces its part whole.

Integrity (Parquet key-value metadata of each part, JSON values):
``monolidar.shard_sha256`` {array name: sha256 of that array's shard object}, ``monolidar.rows_sha256``
(sha256 of the rows as canonical JSON: an edited row is detected), ``monolidar.plan`` (this shard's rows of the
build plan, so a damaged plan.parquet can be restored from the committed shards). `monolidar verify` checks
them all.

Row schema (one row per sample slot written; extra keys become extra columns):
``sample_id, source_uri, content_hash, shard, row, index (= shard*shard_size + row), seed, sensor,
status ("ok" | "quarantined" | "failed"), reason ("" when ok), lidar_points, lidar_density (share of pixels
with a LiDAR return), first_row, depth_min, depth_max``. The stat columns are optional (null when missing).
"""
from __future__ import annotations

import hashlib
import io
import json
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


def write_part(path: str | Path, table: pa.Table) -> None:
    """Publish a part (local path or URL) in one whole-file write: a reader sees the old part, no part, or the
    complete new one."""
    from storage.root import StoreRoot

    parent, _, name = str(path).rpartition("/")
    StoreRoot(parent).write_bytes(name, table_bytes(table))


def read_part(path: str | Path) -> pa.Table:
    from storage.root import StoreRoot

    parent, _, name = str(path).rpartition("/")
    try:
        data = StoreRoot(parent).read_bytes(name)
    except OSError as exc:
        raise StoreError(f"{path}: corrupt manifest part ({exc})") from None
    return read_part_bytes(data, str(path))


def merge_parts(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate parts (extra columns missing from some parts become null) and sort by sample index."""
    tables = list(tables)
    if not tables:
        return SCHEMA.empty_table()
    merged = pa.concat_tables(tables, promote_options="default")
    return merged.sort_by([("index", "ascending")])


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


META_SHARD_SHA256 = b"monolidar.shard_sha256"
META_ROWS_SHA256 = b"monolidar.rows_sha256"
META_PLAN = b"monolidar.plan"


def rows_digest(table: pa.Table) -> str:
    """sha256 of a part's rows (without its metadata) as canonical JSON."""
    blob = json.dumps(table.to_pylist(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def with_integrity(table: pa.Table, *, shard_sha256: dict[str, str], plan: list[dict] | None) -> pa.Table:
    """The table with the integrity metadata attached (see the module docstring)."""
    meta = dict(table.schema.metadata or {})
    meta[META_SHARD_SHA256] = json.dumps(shard_sha256, sort_keys=True).encode()
    meta[META_ROWS_SHA256] = rows_digest(table).encode()
    meta[META_PLAN] = json.dumps(plan or [], sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def integrity(table: pa.Table) -> dict:
    """{"shard_sha256": dict | None, "rows_sha256": str | None, "plan": list | None} of a part."""
    meta = table.schema.metadata or {}
    out: dict = {}
    for key, name in ((META_SHARD_SHA256, "shard_sha256"), (META_ROWS_SHA256, "rows_sha256"), (META_PLAN, "plan")):
        raw = meta.get(key)
        if raw is None:
            out[name] = None
        elif name == "rows_sha256":
            out[name] = raw.decode()
        else:
            out[name] = json.loads(raw)
    return out


def table_bytes(table: pa.Table) -> bytes:
    """A part's file content (deterministic for the same table)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_part_bytes(data: bytes, where: str) -> pa.Table:
    """Parse a part's bytes; StoreError naming ``where`` if it is not a readable part."""
    try:
        return pq.read_table(pa.BufferReader(data))
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{where}: corrupt manifest part ({reason})") from None


def noncanonical_part(data: bytes, table: pa.Table) -> str | None:
    """A reason if a part's bytes differ from the encoding this code gives its parsed content: a byte changed
    where parsing does not notice (Parquet has no checksum over its footer). Parts are written
    deterministically, so a sound part always re-encodes to itself; only checked when the part was written by
    this pyarrow version (another version may encode differently), else None."""
    try:
        created_by = pq.ParquetFile(pa.BufferReader(data)).metadata.created_by
    except (OSError, pa.ArrowException):
        return "unreadable Parquet footer"
    if created_by != _WRITER:
        return None
    if table_bytes(table) != data:
        return "manifest part bytes differ from their canonical encoding (the file was changed after it was written)"
    return None


_WRITER = f"parquet-cpp-arrow version {pa.__version__}"
