"""The build plan stored inside a dataset: which input goes to which shard and row, with which seed.

``<store>/plan.parquet`` is rewritten whole (tmp + rename locally, one PUT on object storage) by the single
process holding the build lock, before any shard is written. Repair reads it to know what a missing shard
must contain, and an incremental build reads it to keep existing samples where they are. Each committed
shard also keeps its own plan rows in its manifest part (storage.manifest), so `verify` can find a damaged
plan row and restore it.
"""
from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from storage.root import StoreRoot
from tasks.errors import InputError, StoreError

PLAN_FILE = "plan.parquet"
# Rows per Parquet row group. The plan is sorted by shard, so each row group's min/max statistics of the
# shard column let a shard writer read just the group(s) holding its rows (plan_rows_for_shard) instead of
# the whole plan (~30 MB at a million samples).
PLAN_ROW_GROUP = 8192
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


def _root(store: "str | os.PathLike | StoreRoot") -> StoreRoot:
    return store if isinstance(store, StoreRoot) else StoreRoot(store)


def plan_bytes(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(
        [{k: r[k] for k in PLAN_SCHEMA.names} for r in rows], schema=PLAN_SCHEMA
    ).sort_by([("shard", "ascending"), ("row", "ascending")])
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=PLAN_ROW_GROUP)
    return buf.getvalue()


def write_plan(store_path: "str | os.PathLike | StoreRoot", rows: list[dict]) -> str:
    """Replace the store's plan with ``rows``; returns its path/URL."""
    root = _root(store_path)
    root.write_bytes(PLAN_FILE, plan_bytes(rows))
    return root.full(PLAN_FILE)


def read_plan(store_path: "str | os.PathLike | StoreRoot") -> list[dict]:
    """Rows of the stored plan; [] for a store that has none yet."""
    root = _root(store_path)
    try:
        data = root.read_bytes(PLAN_FILE)
    except FileNotFoundError:
        return []
    try:
        return pq.read_table(pa.BufferReader(data)).to_pylist()
    except Exception as exc:
        raise StoreError(f"{root.full(PLAN_FILE)}: unreadable build plan ({type(exc).__name__}: {exc})") from exc


def plan_rows_for_shard(store_path: "str | os.PathLike | StoreRoot", shard: int) -> list[dict]:
    """The plan rows of one shard, sorted by row ([] when the store has no plan). An unreadable plan raises
    StoreError: the rows go into the shard's manifest part, so a shard written without them would differ
    from the same shard written a moment later (a transient read error must fail the write, which is then
    retried or repaired, never commit different bytes).

    Reads the footer and only the row groups whose shard statistics can hold ``shard`` (ranged reads on
    object storage too), not the whole plan."""
    root = _root(store_path)
    shard = int(shard)
    try:
        if root.path is not None:
            pf = pq.ParquetFile(str(root.path / PLAN_FILE))
        else:
            pf = pq.ParquetFile(root.fs.open(f"{root.base}/{PLAN_FILE}", "rb"))
        col = pf.schema_arrow.get_field_index("shard")
        groups = []
        for g in range(pf.metadata.num_row_groups):
            st = pf.metadata.row_group(g).column(col).statistics
            if st is None or not st.has_min_max or st.min <= shard <= st.max:
                groups.append(g)
        table = pf.read_row_groups(groups) if groups else PLAN_SCHEMA.empty_table()
    except FileNotFoundError:
        return []
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"{root.full(PLAN_FILE)}: build plan unreadable ({e})") from e
    rows = table.filter(pa.compute.equal(table.column("shard"), shard)).to_pylist()
    return sorted(rows, key=lambda r: r["row"])


def read_input_uris(spec: str) -> list[str]:
    """The non-empty entries of the ``uri`` (or ``path``, ``url``) column of a Parquet input list, in file
    order; local or fsspec URL. Planning (tasks.planning) resolves them; the Parquet format stays here."""
    import fsspec

    with fsspec.open(spec, "rb") as f:
        table = pq.read_table(f)
    col = next((c for c in ("uri", "path", "url") if c in table.column_names), None)
    if col is None:
        raise InputError(f"{spec}: Parquet input list needs a 'uri' column (has {table.column_names})")
    return [u for u in table.column(col).to_pylist() if u]
