"""The CPU side of one build shard, as a plain function: simulate every sample -> one store write.

No Prefect here: ``tasks.build_tasks.write_shard`` runs this in the simulation process pool
(``tasks.sim_pool``) or in its own process, and the result (a small dict) travels back. Every input the
function needs is a path, a key or a small dict, so it pickles cheaply; the teacher's outputs are read from
the teacher cache whether they were computed a second ago or by a build last week, so both paths give the
same bytes. The images are not decoded here: the teacher stage decoded each photo once and wrote the shard's
rgb object (``rgb_sha256``); the simulation never reads the pixels.
"""
from __future__ import annotations

import time

import numpy as np

from storage.cache import ArrayCache
from storage.store import ARRAYS, DatasetStore, sample_shape
from tasks.build_config import BuildConfig
from tasks.errors import MonolidarError
from tasks.float16 import float16_to_float32, to_float16


def teacher_at_canvas(compact: np.ndarray, height: int, width: int) -> np.ndarray:
    """A cached teacher output (float16, network or canvas resolution) at canvas resolution, as float16: the
    simulation consumes exactly what the store keeps."""
    import cv2

    if compact.shape == (height, width):  # already at the canvas (a network larger than it): no float32 round trip
        return np.asarray(compact, dtype=np.float16)
    small = float16_to_float32(compact) if compact.dtype == np.float16 else np.ascontiguousarray(compact, np.float32)
    # Bilinear with half-pixel centres (as torch's align_corners=False); OpenCV's is ~5x faster than numpy's.
    return to_float16(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))


def _shard_buffers(n: int, height: int, width: int, names: tuple[str, ...] = tuple(ARRAYS)) -> dict[str, np.ndarray]:
    # Filled in place (no per-sample list + np.stack copy); zeros = the store's fill value for bad rows.
    return {name: np.zeros((n, *sample_shape(name, height, width)), dtype=ARRAYS[name][0]) for name in names}


# Arrays the shard writer fills: all but the images, which the teacher stage wrote (tasks.build_tasks).
SIMULATED_ARRAYS = tuple(name for name in ARRAYS if name != "rgb")


def simulate_and_write_shard(
    store_path: str,
    cache_dir: str,
    shard: int,
    samples: list[dict],
    prepared: dict[str, dict],
    config: dict,
    teacher: dict,
    key: str,
    rgb_sha256: str,
) -> dict:
    """Simulate every planned sample of ``shard`` and write the shard whole (arrays, then manifest part).

    ``prepared`` is the teacher task's result: {uri: {"status": "ok", "content_hash", "teacher_key"} or
    {"status": "quarantined", "reason", ...}}; ``rgb_sha256`` the hash of the rgb object it wrote. A
    deterministic per-sample failure is recorded as ``failed`` with its message (its row of the images keeps the
    photo, the other arrays the fill value); I/O errors propagate so the task is retried.
    Returns {"shard", "n_rows", "n_ok", "manifest", "status", "lidar_density_mean", "cpu_s"}.
    """
    from tasks.sample_sim import simulate_sample
    from tasks.sensors import load_profile

    cpu0 = time.process_time()
    cfg = BuildConfig.from_dict(config)
    cache = ArrayCache(cache_dir)
    profile = load_profile(cfg.sensor)
    store = DatasetStore.open(store_path, mode="r+")
    arrays = _shard_buffers(len(samples), cfg.height, cfg.width, SIMULATED_ARRAYS)
    rows = []
    for i, s in enumerate(samples):
        uri = s["uri"]
        info = prepared[uri]
        row = {
            "sample_id": s["sample_id"],
            "source_uri": uri,
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
        rows.append(row)
        if info["status"] != "ok":
            row.update(status="quarantined", reason=info["reason"])
            continue
        try:
            t_out = teacher_at_canvas(cache.get("teacher", info["teacher_key"]), cfg.height, cfg.width)
            sim = simulate_sample(None, t_out, teacher_kind=teacher["output_kind"], config=cfg, profile=profile,
                                  seed=s["seed"])
        except MonolidarError as exc:  # deterministic per-sample failure: record it, finish the shard
            row.update(status="failed", reason=f"{uri}: {exc}")
            continue
        except (ValueError, FloatingPointError) as exc:
            row.update(status="failed", reason=f"{uri}: {type(exc).__name__}: {exc}")
            continue
        for name, a in sim.arrays.items():
            arrays[name][i] = a
        row.update(sim.stats)
    result = store.write_shard(shard, arrays, rows, written={"rgb": rgb_sha256})
    result["status"] = {st: sum(r["status"] == st for r in rows) for st in ("ok", "quarantined", "failed")}
    dens = [r["lidar_density"] for r in rows if r["status"] == "ok"]
    result["lidar_density_mean"] = float(np.mean(dens)) if dens else 0.0
    result["cpu_s"] = time.process_time() - cpu0
    return result
