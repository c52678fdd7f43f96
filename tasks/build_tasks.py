"""Prefect tasks of the dataset build: one chain per *shard*, never per image.

prepare_shard  -> decode + validate each input once, fit it to the canvas, cache the canvas (Zarr cache)
teacher_shard  -> batched teacher inference on the shard's canvases, outputs into the Zarr cache
write_shard    -> depth policy + mesh + LiDAR for every planned sample, then one whole-shard store write

Only small references (cache keys, counts, statuses) travel through Prefect results; the arrays live in the
cache beside the store and in the store itself. Every task is an idempotent, seeded unit (Kubric style): a
rerun after a crash recomputes exactly the same bytes.
"""
from __future__ import annotations

import hashlib
import threading

import numpy as np
from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from storage.cache import ArrayCache
from storage.store import DatasetStore
from tasks.build_config import BuildConfig
from tasks.errors import InputError, MonolidarError
from tasks.images import fit_to_canvas, load_image
from tasks.planning import read_bytes
from tasks.provenance import stable_hash


def _retry_transient(task, task_run, state) -> bool:
    """Retry I/O and runtime hiccups, never deterministic input/validation errors."""
    try:
        state.result()
    except MonolidarError:
        return False
    except Exception:
        return True
    return False


RETRY = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.2,
    retry_condition_fn=_retry_transient,
)


# ---------------------------------------------------------------- keys
def canvas_key(content_hash: str, config: BuildConfig) -> str:
    return hashlib.sha256(f"canvas|{content_hash}|{config.height}x{config.width}".encode()).hexdigest()


def teacher_key(canvas: str, teacher: dict) -> str:
    prep = stable_hash({k: teacher.get(k) for k in ("sha256", "output_kind", "short_side", "batch_size")})
    return hashlib.sha256(f"teacher|{canvas}|{prep}".encode()).hexdigest()


def shard_key(samples: list[dict], config: BuildConfig, teacher: dict, code_version: str) -> str:
    """Identity of a shard's content: everything that changes its bytes and nothing else.

    Planned inputs (id, uri, seed, row), the config, the sensor profile's *content* (editing a profile file
    re-runs its shards; its path alone would not), the teacher (weights + preprocessing) and the code version
    of the shard-producing modules (tasks.provenance.code_version). Inputs are identified by their planned
    uri, as the plan does: an input deleted after its shard was built keeps its samples (reported, not
    rebuilt); `monolidar verify --inputs` finds inputs whose content changed under the same name.
    """
    from tasks.provenance import sensor_profile_digest

    return stable_hash(
        {
            "samples": [(s["sample_id"], s["uri"], s["seed"], s["row"]) for s in samples],
            "config": config.hash(),
            "sensor": sensor_profile_digest(config.sensor),
            "teacher": {k: teacher.get(k) for k in ("sha256", "output_kind", "short_side", "batch_size")},
            "code": code_version,
        },
        n=32,
    )


# ---------------------------------------------------------------- teacher instances
_TEACHER_LOCK = threading.Lock()
_TEACHERS: dict[tuple, object] = {}


def _teacher_slot(teacher: dict) -> tuple:
    return (teacher["path"], teacher["sha256"], teacher["output_kind"], teacher["short_side"], teacher.get("threads"))


def register_teacher(model, teacher: dict) -> None:
    """Let tasks in this process reuse a session the flow already loaded (and probed)."""
    with _TEACHER_LOCK:
        _TEACHERS[_teacher_slot(teacher)] = model


def get_teacher(teacher: dict):
    """One onnxruntime session per process, shared by the tasks running in it (threads share it safely)."""
    from model.teacher import Teacher

    slot = _teacher_slot(teacher)
    with _TEACHER_LOCK:
        if slot not in _TEACHERS:
            path, sha256, kind, short_side, threads = slot
            model = Teacher(path, output_kind=kind, short_side=short_side, threads=threads, probe=False)
            if model.sha256 != sha256:  # the file changed under a running build: never mix teachers
                raise MonolidarError(
                    f"{path}: teacher file changed during the build (sha256 {model.sha256[:12]} != {sha256[:12]})"
                )
            _TEACHERS[slot] = model
        return _TEACHERS[slot]


# ---------------------------------------------------------------- tasks
@task(name="prepare-shard", **RETRY)
def prepare_shard(cache_dir: str, samples: list[dict], config: dict) -> dict[str, dict]:
    """Decode and validate each distinct input of the shard once; returns {uri: info} where info is
    {"status": "ok", "content_hash", "canvas_key"} or {"status": "quarantined", "reason"}."""
    cfg = BuildConfig.from_dict(config)
    cache = ArrayCache(cache_dir)
    out: dict[str, dict] = {}
    for uri in dict.fromkeys(s["uri"] for s in samples):
        try:
            data = read_bytes(uri)
        except FileNotFoundError:
            out[uri] = {"status": "quarantined", "reason": f"{uri}: file not found"}
            continue
        except IsADirectoryError:
            out[uri] = {"status": "quarantined", "reason": f"{uri}: is a directory"}
            continue
        content_hash = hashlib.sha256(data).hexdigest()
        key = canvas_key(content_hash, cfg)
        if not cache.has("canvas", key):
            try:
                image = load_image(data, name=uri)
            except InputError as exc:
                out[uri] = {"status": "quarantined", "reason": str(exc), "content_hash": content_hash}
                continue
            canvas, _, _ = fit_to_canvas(image, cfg.height, cfg.width)
            cache.put("canvas", key, np.ascontiguousarray(canvas))
        out[uri] = {"status": "ok", "content_hash": content_hash, "canvas_key": key}
    return out


def _teacher_cache_key(context, parameters) -> str | None:
    """Cache only when every output is already in the Zarr cache, so a Prefect cache hit can never point
    at arrays that were deleted; otherwise run (the body skips what is cached)."""
    cache = ArrayCache(parameters["cache_dir"])
    teacher = parameters["teacher"]
    keys = sorted({i["canvas_key"] for i in parameters["prepared"].values() if i["status"] == "ok"})
    if not all(cache.has("teacher", teacher_key(k, teacher)) for k in keys):
        return None
    return "teacher-" + stable_hash([parameters["cache_dir"], teacher["sha256"], keys], n=32)


@task(name="teacher-shard", cache_key_fn=_teacher_cache_key, persist_result=True, **RETRY)
def teacher_shard(cache_dir: str, prepared: dict[str, dict], teacher: dict) -> dict:
    """Run the teacher on the shard's canvases not yet cached. Returns {"refs": {canvas_key: teacher_key},
    "computed": n, "cached": m}. Batches have a fixed size (the last one padded) so an image's output bits
    never depend on which other images shared its batch."""
    cache = ArrayCache(cache_dir)
    canvas_keys = sorted({i["canvas_key"] for i in prepared.values() if i["status"] == "ok"})
    refs = {k: teacher_key(k, teacher) for k in canvas_keys}
    todo = [k for k in canvas_keys if not cache.has("teacher", refs[k])]
    bs = int(teacher["batch_size"])
    if todo:
        model = get_teacher(teacher)
        for i in range(0, len(todo), bs):
            chunk = todo[i : i + bs]
            batch = np.stack([cache.get("canvas", k) for k in chunk])
            if len(chunk) < bs:
                batch = np.concatenate([batch, np.repeat(batch[-1:], bs - len(chunk), axis=0)])
            pred = model.predict(batch, batch_size=bs)
            for k, p in zip(chunk, pred[: len(chunk)]):
                if not np.all(np.isfinite(p)):
                    raise MonolidarError(f"teacher {teacher['path']}: non-finite output for canvas {k[:12]}")
                cache.put("teacher", refs[k], np.ascontiguousarray(p, dtype=np.float32))
    if todo:
        get_run_logger().info("teacher: %d computed, %d cached", len(todo), len(canvas_keys) - len(todo))
    return {"refs": refs, "computed": len(todo), "cached": len(canvas_keys) - len(todo)}


@task(name="write-shard", **RETRY)
def write_shard(
    store_path: str,
    cache_dir: str,
    shard: int,
    samples: list[dict],
    prepared: dict[str, dict],
    teacher_result: dict,
    config: dict,
    teacher: dict,
    key: str,
) -> dict:
    """Simulate every planned sample of the shard and write the shard whole (arrays, then manifest)."""
    from tasks.sample_sim import empty_arrays, simulate_sample
    from tasks.sensors import load_profile

    cfg = BuildConfig.from_dict(config)
    cache = ArrayCache(cache_dir)
    profile = load_profile(cfg.sensor)
    store = DatasetStore.open(store_path, mode="r+")
    columns: dict[str, list[np.ndarray]] = {}
    rows = []
    for s in samples:
        info = prepared[s["uri"]]
        row = {
            "sample_id": s["sample_id"],
            "source_uri": s["uri"],
            "content_hash": info.get("content_hash", ""),
            "shard": shard,
            "row": s["row"],
            "index": shard * store.shard_size + s["row"],
            "seed": s["seed"],
            "sensor": profile.name,
            "status": "ok",
            "reason": "",
            "shard_key": key,
        }
        arrays = empty_arrays(cfg.height, cfg.width)
        if info["status"] != "ok":
            row.update(status="quarantined", reason=info["reason"])
        else:
            try:
                canvas = cache.get("canvas", info["canvas_key"])
                t_out = cache.get("teacher", teacher_result["refs"][info["canvas_key"]])
                sim = simulate_sample(
                    canvas, t_out, teacher_kind=teacher["output_kind"], config=cfg, profile=profile, seed=s["seed"]
                )
                arrays = sim.arrays
                row.update(sim.stats)
            except MonolidarError as exc:  # deterministic per-sample failure: record it, finish the shard
                row.update(status="failed", reason=f"{s['uri']}: {exc}")
            except (ValueError, FloatingPointError) as exc:
                row.update(status="failed", reason=f"{s['uri']}: {type(exc).__name__}: {exc}")
        for name, arr in arrays.items():
            columns.setdefault(name, []).append(arr)
        rows.append(row)
    result = store.write_shard(shard, {k: np.stack(v) for k, v in columns.items()}, rows)
    result["status"] = {st: sum(r["status"] == st for r in rows) for st in ("ok", "quarantined", "failed")}
    result["lidar_density_mean"] = float(
        np.mean([r["lidar_density"] for r in rows if r["status"] == "ok"]) if result["status"]["ok"] else 0.0
    )
    return result
