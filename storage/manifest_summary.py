"""Summaries of a build's manifest table, computed column-wise with Arrow (no per-row Python objects), so
planning and finalizing stay a few seconds at a million samples (timed by bench/bench_build_scale.py). Lives in storage/: only storage reads Arrow tables."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

STATUSES = ("ok", "quarantined", "failed")


def status_counts(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {st: 0 for st in STATUSES}
    counts = {r["values"]: r["counts"] for r in pc.value_counts(table.column("status")).to_pylist()}
    return {st: int(counts.get(st, 0)) for st in STATUSES}


def mean_ok_density(table: pa.Table) -> float:
    """Mean LiDAR density over the ``ok`` rows (0.0 when there are none)."""
    if table.num_rows == 0 or "lidar_density" not in table.column_names:
        return 0.0
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    mean = pc.mean(ok.column("lidar_density")).as_py() if ok.num_rows else None
    return float(mean) if mean is not None else 0.0


def shard_state(table: pa.Table) -> dict[int, dict]:
    """{shard: {"key": shard_key, "failed": n}} for the shards present in a manifest table."""
    if table.num_rows == 0:
        return {}
    keys = table.column("shard_key") if "shard_key" in table.column_names else pa.nulls(table.num_rows, pa.string())
    t = pa.table({"shard": table.column("shard"), "key": keys,
                  "failed": pc.cast(pc.equal(table.column("status"), "failed"), pa.int64())})
    g = t.group_by("shard", use_threads=False).aggregate([("key", "first"), ("failed", "sum")]).to_pydict()
    return {int(s): {"key": k, "failed": int(f)} for s, k, f in zip(g["shard"], g["key_first"], g["failed_sum"])}
