"""`monolidar verify`: check every committed shard of a store end to end and mark the bad ones for repair.

Per complete shard (one whose manifest part exists):
  1. the manifest part parses, its bytes are the canonical encoding of what it holds (a part is written
     deterministically, so a changed byte anywhere shows; checked when this pyarrow wrote it) and its rows
     still hash to the ``rows_sha256`` recorded when it was written;
  2. every array's shard object exists and its sha256 equals the one in the part (``shard_sha256``);
  3. every chunk decodes (zarr checks each chunk's crc32c and the shard index's crc32c on the way);
  4. the manifest statistics agree with the arrays (LiDAR point count, depth range; rows that are not ok and
     padding rows hold only the fill value 0).
Then the build plan: every row lies inside the store (shard < allocated shards, row < shard_size, no two
rows on one slot) and agrees with the copy each committed shard keeps of its own plan rows.

Marking (the default): a bad shard is un-committed (its manifest part is deleted, so readers stop seeing it
and ``monolidar repair`` rebuilds it from the plan) and the reason is recorded under ``verify/``; a damaged
plan row is restored from the committed shards' copies.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from storage import manifest as mf
from storage.plan import PLAN_FILE, PLAN_SCHEMA, read_plan, write_plan
from storage.pngio import depth_metres
from storage.store import ARRAYS, DatasetStore
from tasks.errors import StoreError

VERIFY_DIR = "verify"


@dataclass
class VerifyReport:
    store: str
    shards_checked: int = 0
    bad_shards: list[dict] = field(default_factory=list)  # {"shard", "reason"}
    plan_problems: list[dict] = field(default_factory=list)  # {"sample_id", "shard", "row", "reason"}
    marked: list[int] = field(default_factory=list)
    plan_restored: bool = False
    inputs_changed: list[dict] = field(default_factory=list)  # {"shard", "sample_id", "uri", "reason"}

    @property
    def ok(self) -> bool:
        return not self.bad_shards and not self.plan_problems and not self.inputs_changed

    def to_dict(self) -> dict:
        return {"store": self.store, "ok": self.ok, "shards_checked": self.shards_checked,
                "bad_shards": self.bad_shards, "plan_problems": self.plan_problems,
                "inputs_changed": self.inputs_changed, "marked": self.marked, "plan_restored": self.plan_restored}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_shard(store: DatasetStore, shard: int) -> str | None:
    """None if the committed shard is sound, else the first reason it is not."""
    return _check_shard(store, shard)[0]


def _check_shard(store: DatasetStore, shard: int) -> tuple[str | None, pa.Table | None]:
    """(None, the shard's manifest part) if the committed shard is sound, else (the first reason, None)."""
    # The part and the shard's array objects in one batch (concurrent GETs on object storage: verifying a store
    # of ~16k shards paid ~14 sequential round trips per shard before).
    part_rel = f"{mf.MANIFEST_DIR}/{mf.part_name(shard)}"
    keys = {name: store.shard_object(name, shard) for name in ARRAYS}
    blobs = store.root.read_many([part_rel, *keys.values()])
    if isinstance(blobs[part_rel], FileNotFoundError):
        return "manifest part missing", None
    try:
        part = mf.read_part_bytes(blobs[part_rel], store.root.full(part_rel))
    except StoreError as exc:
        return str(exc).split(": ", 1)[-1], None
    damaged = mf.noncanonical_part(blobs[part_rel], part)
    if damaged:
        return damaged, None
    meta = mf.integrity(part)
    if meta["shard_sha256"] is None or meta["rows_sha256"] is None:
        return "manifest part carries no content hashes (written before format 2)", None
    if mf.rows_digest(part) != meta["rows_sha256"]:
        return "manifest rows differ from the ones recorded when the shard was written", None
    for name, key in keys.items():
        data = blobs[key]
        if isinstance(data, FileNotFoundError):
            return f"{name}: shard object {key} is missing", None
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta["shard_sha256"].get(name):
            return (f"{name}: shard object {key} ({len(data)} bytes) has sha256 {digest[:12]}, the manifest "
                    f"recorded {str(meta['shard_sha256'].get(name))[:12]} (changed, flipped or truncated)"), None
    try:
        arrays = store.read_shard_arrays(shard)
    except Exception as exc:  # crc32c mismatch, undecodable chunk, short index: whatever zarr raises
        return f"a chunk does not decode ({_first_line(exc)})", None
    reason = _check_stats(store, shard, part, arrays)
    return reason, (part if reason is None else None)


def _check_stats(store: DatasetStore, shard: int, part, arrays: dict[str, np.ndarray]) -> str | None:
    rows = part.to_pylist()
    for r in rows:
        if r["shard"] != shard or r["index"] != shard * store.shard_size + r["row"]:
            return f"manifest row {r['row']} names shard {r['shard']} index {r['index']}"
    for row in range(store.shard_size):
        r = rows[row] if row < len(rows) else None
        if r is None or r["status"] != "ok":
            nonzero = [n for n in ARRAYS if np.any(arrays[n][row])]
            if nonzero:
                what = "padding row" if r is None else f"{r['status']} row"
                return f"{what} {row} holds data in {', '.join(nonzero)} (expected the fill value 0)"
            continue
        points = int(np.count_nonzero(arrays["sparse"][row]))
        if r.get("lidar_points") is not None and points != r["lidar_points"]:
            return f"row {row}: sparse has {points} LiDAR points, the manifest says {r['lidar_points']}"
        depth = depth_metres(arrays["depth"][row])
        valid = depth[depth > 0]
        for key, value in (("depth_min", valid.min() if valid.size else 0.0),
                           ("depth_max", valid.max() if valid.size else 0.0)):
            if r.get(key) is not None and np.float32(value) != np.float32(r[key]):
                return f"row {row}: depth {key[6:]} is {float(value):.6g} m, the manifest says {r[key]:.6g} m"
    return None


def check_plan(store: DatasetStore, committed_plans: dict[int, list[dict]]) -> tuple[list[dict], list[dict] | None]:
    """(problems, restored rows or None): each plan row inside the store and equal to its shard's committed
    copy; restored = the plan with every damaged row replaced by its committed copy, when all can be."""
    try:
        rows = read_plan(store.root)
    except StoreError as exc:
        rows, problems = [], [{"sample_id": None, "shard": None, "row": None, "reason": str(exc)}]
    else:
        problems = []
    allocated, size = store.n_shards_allocated, store.shard_size
    by_id = {r["sample_id"]: r for rows_ in committed_plans.values() for r in rows_}
    seen: dict[tuple[int, int], str] = {}
    bad_ids = set()
    for r in rows:
        slot = (int(r["shard"]), int(r["row"]))
        reason = None
        if not (0 <= slot[0] < allocated and 0 <= slot[1] < size):
            reason = (f"plan row of sample {r['sample_id']} points outside the store: shard {slot[0]} row {slot[1]} "
                      f"({allocated} shards of {size} rows allocated)")
        elif slot in seen:
            reason = f"plan rows of samples {seen[slot]} and {r['sample_id']} share shard {slot[0]} row {slot[1]}"
        elif r["sample_id"] in by_id and {k: by_id[r["sample_id"]][k] for k in PLAN_SCHEMA.names} != \
                {k: r[k] for k in PLAN_SCHEMA.names}:
            reason = f"plan row of sample {r['sample_id']} differs from the copy committed with shard {slot[0]}"
        seen.setdefault(slot, r["sample_id"])
        if reason:
            problems.append({"sample_id": r["sample_id"], "shard": slot[0], "row": slot[1], "reason": reason})
            bad_ids.add(r["sample_id"])
    # committed samples missing from the plan
    plan_ids = {r["sample_id"] for r in rows}
    for sid, c in by_id.items():
        if sid not in plan_ids:
            problems.append({"sample_id": sid, "shard": c["shard"], "row": c["row"],
                             "reason": f"sample {sid} of committed shard {c['shard']} is missing from the plan"})
            bad_ids.add(sid)
    if not problems:
        return [], None
    if any(p["sample_id"] is None or p["sample_id"] not in by_id for p in problems):
        return problems, None  # some damage has no committed copy to restore from
    restored = [r for r in rows if r["sample_id"] not in bad_ids] + [by_id[s] for s in sorted(bad_ids)]
    return problems, restored


def check_inputs(shard: int, part: pa.Table) -> list[dict]:
    """Rows of an ok shard (``part``: its manifest part) whose input file's content no longer matches the
    content_hash it was built from (a replaced photo under the same name). Missing inputs are not reported:
    their samples are kept."""
    from storage.root import input_reader

    out = []
    rows = [r for r in part.to_pylist() if r["status"] == "ok" and r.get("content_hash")]
    read_input = input_reader(r["source_uri"] for r in rows)  # remote ones in one concurrent batch
    for r in rows:
        data = read_input(r["source_uri"])
        if isinstance(data, OSError):  # missing inputs keep their samples
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != r["content_hash"]:
            out.append({"shard": shard, "sample_id": r["sample_id"], "uri": r["source_uri"],
                        "reason": f"{r['source_uri']}: content changed since shard {shard} was built"})
    return out


_REMOTE_SHARDS_AT_ONCE = 8  # shards a verify of a remote store checks concurrently


def verify_store(path, *, mark: bool = True, inputs: bool = False, progress=None) -> VerifyReport:
    """Check a store (see the module docstring); with ``mark``, un-commit bad shards and restore the plan.
    ``inputs`` also re-reads every input and flags (and marks) shards built from since-changed files."""
    store = DatasetStore.open(path, mode="r+" if mark else "r")
    report = VerifyReport(store=store.url)
    committed_plans: dict[int, list[dict]] = {}

    def one(shard: int) -> tuple[int, str | None, list[dict] | None, list[dict]]:
        reason, part = _check_shard(store, shard)
        if part is None:
            return shard, reason, None, []
        return shard, None, mf.integrity(part)["plan"] or [], check_inputs(shard, part) if inputs else []

    shards = store.complete_shards()
    with contextlib.ExitStack() as stack:
        if store.root.remote and len(shards) > 1:
            # Shards side by side on object storage: each check waits on a few round trips, not on the CPU.
            from concurrent.futures import ThreadPoolExecutor

            results = stack.enter_context(ThreadPoolExecutor(_REMOTE_SHARDS_AT_ONCE)).map(one, shards)
        else:
            results = map(one, shards)
        for shard, reason, plan, changed in results:  # in shard order either way
            report.shards_checked += 1
            if reason is not None:
                report.bad_shards.append({"shard": shard, "reason": reason})
            else:
                committed_plans[shard] = plan
                report.inputs_changed += changed
                if changed:
                    report.bad_shards.append({"shard": shard, "reason": changed[0]["reason"]})
            if progress is not None:
                progress(shard, reason)
    problems, restored = check_plan(store, committed_plans)
    report.plan_problems = problems
    if mark:
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        for bad in report.bad_shards:
            store.root.write_bytes(f"{VERIFY_DIR}/shard-{bad['shard']:05d}.json",
                                   json.dumps({**bad, "marked": now}, indent=1).encode())
            store.uncommit_shard(bad["shard"])
            report.marked.append(bad["shard"])
        if restored is not None:
            write_plan(store.root, restored)
            report.plan_restored = True
    return report


__all__ = ["VerifyReport", "verify_store", "check_shard", "check_plan", "VERIFY_DIR", "PLAN_FILE"]
