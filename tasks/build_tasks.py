"""Prefect tasks of the dataset build: one chain per *shard*, never per image.

teacher_shard -> read + hash each distinct input of the shard, decode it once to the canvas and write the
                 shard's images (the store's rgb object: the only copy of the canvas); for inputs whose teacher
                 output is not cached, resample the canvas to the teacher's network size and run the teacher in
                 fixed-size batches (one session per process; the device serves one shard's batches at a time,
                 lowest started shard first); outputs go to the teacher cache as float16 at the network's own
                 resolution (or the canvas's, if the network ran larger)
write_shard   -> read each teacher output from the cache, depth policy + mesh + LiDAR, then the shard's other
                 arrays and its manifest part (the commit marker) in one store write (tasks.shard_writer), in the
                 simulation process pool beside the teacher (tasks.sim_pool) or in the task's own process

Only small references (cache keys, hashes, counts, statuses) travel through Prefect results. Nothing is
written twice and nothing is decoded twice: the canvas goes straight into the store where it is decoded, and
the simulation never needs its pixels. Every task is an idempotent, seeded unit (Kubric style): a rerun after a
crash recomputes exactly the same bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np
from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from storage.cache import ArrayCache
from storage.root import read_uris
from tasks.build_config import BuildConfig
from tasks.errors import InputError, MonolidarError
from tasks.float16 import to_float16
from tasks.images import load_fitted, opencv_single_threaded
from tasks.provenance import stable_hash
from tasks.shard_writer import simulate_and_write_shard
from tasks.sim_pool import run_in_pool


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
# Version of the teacher-input preprocessing (decode + crop + resample to the network size) and of the cached
# value's form (float16 at the network resolution); bump it when either changes, and old entries are unused.
# 3: reductions by 1.5x or more through tasks.images.area_reduce instead of OpenCV's INTER_AREA.
# 4: the teacher's input is the canvas resampled to the network size (tasks.images.resize_image), not a second
#    decode of the photo: each photo is decoded once.
TEACHER_PREP_VERSION = 4


def teacher_key(content_hash: str, teacher: dict, config: BuildConfig) -> str:
    """Cache key of one image's teacher output: image bytes, canvas (it decides the crop), teacher, prep."""
    prep = stable_hash({**{k: teacher.get(k) for k in ("sha256", "output_kind", "short_side", "batch_size")},
                        "prep": TEACHER_PREP_VERSION})
    return hashlib.sha256(f"teacher|{content_hash}|{config.height}x{config.width}|{prep}".encode()).hexdigest()


def compact_teacher_output(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    """What the cache keeps of one raw output: float16 at the network's resolution, or at the canvas's when
    the network ran larger than the canvas (nothing finer than the canvas is ever used)."""
    from model.teacher import resize_bilinear

    if pred.shape[0] * pred.shape[1] > height * width:
        pred = resize_bilinear(pred[None].astype(np.float32), height, width)[0]
    return to_float16(pred)


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


class ShardOrderedLock:
    """The teacher device, granted in shard order: a shard's task ``enter``s when it starts (before decoding),
    and ``hold`` is granted only to the lowest shard that has entered and not yet left.

    Why: a build keeps the next shard's teacher task running beside the current one (it decodes its images
    meanwhile). With a plain lock their batches interleaved in arbitrary order, and a shard whose decode
    finished first took the device, so shard k's outputs were complete only after shard k+1's and its write
    started late (measured: the simulation pool idle for seconds, then working alone at the end). In order,
    shard k's outputs are complete as early as possible and its write overlaps the teacher's work on k+1.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._entered: list[tuple[int, int]] = []  # heap of (shard, ticket)
        self._tickets = 0

    @contextlib.contextmanager
    def enter(self, shard: int) -> Iterator[tuple[int, int]]:
        with self._cond:
            self._tickets += 1
            me = (int(shard), self._tickets)
            heapq.heappush(self._entered, me)
        try:
            yield me
        finally:
            with self._cond:
                self._entered.remove(me)
                heapq.heapify(self._entered)
                self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, me: tuple[int, int]) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._busy and self._entered[0] == me)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


# The teacher's device in this process: one shard's batches at a time, in shard order (several shard chains
# reach their teacher step together, and interleaving their batches on one session only adds contention).
_TEACHER_RUN_LOCK = ShardOrderedLock()
TEACHER_TAG = "monolidar-teacher"


def teacher_tags() -> list[str]:
    """Tags for this build's teacher tasks: ``[TEACHER_TAG]`` when the Prefect server holds a concurrency limit
    for it (``prefect gcl create tag:monolidar-teacher --limit N``, or a v1 tag limit), else none.

    Why not always: a tagged task run asks the server for a slot before it starts, one locked database
    transaction per task run; on the ephemeral SQLite server that took ~2 s per teacher task during a build
    (measured: the first teacher task started 2.7 s into the shard phase, 0.6 s without the tag). Without a
    limit the answer is always "go", so the tag is applied only when a limit can act on it.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(f"tag:{TEACHER_TAG}")
        except ObjectNotFound:
            return []
    return [TEACHER_TAG]


# ---------------------------------------------------------------- tasks
# Threads that decode a shard's photos to the canvas and make the teacher's inputs (and, after the device turn,
# encode the images and fill the cache). libjpeg-turbo (simplejpeg), OpenCV's
# resize and Blosc run without the GIL, so they work in parallel; a GPU teacher consumes images far faster than
# one core prepares them (~6.5 ms to decode and resample one at 352x1216, ~6.5 ms more to encode and cache).
TEACHER_DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


def _decode_shard(inputs: dict[str, bytes], rows: dict[str, list[int]], todo: dict[str, str], cfg: BuildConfig,
                  size: tuple[int, int] | None, out: dict[str, dict], pool,
                  rgb: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """Decode every input to the canvas in ``pool``'s threads, straight into its ``rows`` of the shard's image
    buffer ``rgb``; return [(uri, key, teacher input)] for the uris in ``todo`` = {uri: teacher key}, in
    ``inputs``' order. A bad image is marked quarantined in ``out`` instead (its rows stay 0, the fill value)."""
    from tasks.images import resize_image

    def decode(item: tuple[str, bytes]) -> np.ndarray | None | InputError:
        uri, data = item
        try:
            canvas = load_fitted(data, name=uri, canvas=(cfg.height, cfg.width))
        except InputError as exc:
            return exc
        for i in rows[uri]:  # each thread writes only its own input's rows
            rgb[i] = canvas
        return resize_image(canvas, size) if uri in todo else None

    net_inputs: list[tuple[str, str, np.ndarray]] = []
    for uri, res in zip(inputs, pool.map(decode, inputs.items())):
        if isinstance(res, InputError):
            out[uri] = {"status": "quarantined", "reason": str(res), "content_hash": out[uri]["content_hash"]}
        elif res is not None:
            net_inputs.append((uri, todo[uri], res))
    return net_inputs


@task(name="teacher-shard", **RETRY)
def teacher_shard(store_path: str, cache_dir: str, samples: list[dict], config: dict, teacher: dict,
                  shard: int = 0) -> dict:
    """Read, hash and decode each distinct input of the shard once; write the shard's images; make sure each
    input's teacher output is in the cache.

    Returns {"inputs": {uri: info}, "computed": n, "cached": m, "rgb_sha256": hash of the rgb object} where
    info is {"status": "ok", "content_hash", "teacher_key"} or {"status": "quarantined", "reason"}. Batches
    have a fixed size (the last one padded) so an image's output bits never depend on which other images shared
    its batch; lower ``shard`` numbers get the teacher first (ShardOrderedLock).
    """
    from concurrent.futures import ThreadPoolExecutor

    from storage.store import DatasetStore

    cfg = BuildConfig.from_dict(config)
    cache = ArrayCache(cache_dir)
    out: dict[str, dict] = {}
    inputs: dict[str, bytes] = {}
    todo: dict[str, str] = {}  # uri -> teacher key, for outputs not cached yet
    rows: dict[str, list[int]] = {}  # uri -> its rows in the shard (an input listed twice fills both)
    for i, s in enumerate(samples):
        rows.setdefault(s["uri"], []).append(i)
    for uri, data in read_uris(s["uri"] for s in samples).items():  # remote inputs fetched concurrently
        if isinstance(data, OSError):
            why = "is a directory" if isinstance(data, IsADirectoryError) else "file not found"
            out[uri] = {"status": "quarantined", "reason": f"{uri}: {why}"}
            continue
        content_hash = hashlib.sha256(data).hexdigest()
        key = teacher_key(content_hash, teacher, cfg)
        out[uri] = {"status": "ok", "content_hash": content_hash, "teacher_key": key}
        inputs[uri] = data
        if not cache.has("teacher", key):
            todo[uri] = key
    model = get_teacher(teacher) if todo else None
    size = model.input_size(cfg.height, cfg.width) if model is not None else None
    # Store paths stay absolute for pool workers and Dask workers alike (see write_shard).
    store_path = store_path if "://" in store_path else os.path.abspath(store_path)
    rgb = np.zeros((len(samples), cfg.height, cfg.width, 3), np.uint8)  # the shard's images, decoded once
    with opencv_single_threaded(), \
            ThreadPoolExecutor(TEACHER_DECODE_THREADS, thread_name_prefix="teacher-stage") as pool:

        def decode() -> list[tuple[str, str, np.ndarray]]:
            return _decode_shard(inputs, rows, todo, cfg, size, out, pool, rgb)

        if model is None:
            decode()
            batches, preds = [], []
        else:
            batches, preds = _predict_in_shard_order(model, shard, decode, int(teacher["batch_size"]))
        # After the shard's device turn (the next shard has it now), the same threads put its outputs into the
        # cache and encode its images into the store, at normal priority. Not under SCHED_IDLE as the simulation
        # workers: this shard's write task waits for them, and the next teacher task is submitted only when this
        # one ends (TEACHER_AHEAD), so on a GPU box they must not wait for a core behind every simulation worker.
        # (Beside this box's CPU teacher the two priorities gave the same build times within noise; under
        # SCHED_IDLE the first write started ~0.8 s later.)
        puts = [pool.submit(_cache_outputs, batch, pred, cache, cfg, teacher) for batch, pred in zip(batches, preds)]
        rgb_sha256 = DatasetStore.open(store_path, mode="r+").write_array(shard, "rgb", rgb, executor=pool)
        computed = sum(f.result() for f in puts)
    if model is not None:
        get_run_logger().info("teacher: %d computed, %d cached", computed, len(out) - len(todo))
    n_ok = sum(i["status"] == "ok" for i in out.values())
    return {"inputs": out, "computed": computed, "cached": n_ok - computed, "rgb_sha256": rgb_sha256}


def _predict_in_shard_order(model, shard: int, prepare: Callable[[], list[tuple[str, str, np.ndarray]]],
                            bs: int) -> tuple[list[list], list[np.ndarray]]:
    """Prepare the shard (``prepare``: decode, return the teacher's inputs) after taking a
    place in the shard-ordered device lock, then run every batch in one turn of it: a lower shard that is still
    decoding goes first, so shard k's outputs are complete before shard k+1 gets the device. (A module-level
    helper, not inline in the task: Dask pickles the task function by value, and a lock among its globals does
    not pickle.)"""
    with _TEACHER_RUN_LOCK.enter(shard) as turn:
        decoded = prepare()
        batches = [decoded[i:i + bs] for i in range(0, len(decoded), bs)]
        with _TEACHER_RUN_LOCK.hold(turn):
            preds = [_predict_batch(model, batch, bs) for batch in batches]
    return batches, preds


def _predict_batch(model, batch: list[tuple[str, str, np.ndarray]], bs: int) -> np.ndarray:
    images = np.stack([im for _, _, im in batch])
    if len(batch) < bs:  # pad with copies of the last image: a fixed batch shape, fixed bits
        images = np.concatenate([images, np.repeat(images[-1:], bs - len(batch), axis=0)])
    return model.predict(images, batch_size=bs)[: len(batch)]


def _cache_outputs(batch: list[tuple[str, str, np.ndarray]], pred: np.ndarray, cache: ArrayCache, cfg: BuildConfig,
                   teacher: dict) -> int:
    for (uri, key, _), p in zip(batch, pred):
        if not np.all(np.isfinite(p)):
            raise MonolidarError(f"teacher {teacher['path']}: non-finite output for {uri}")
        cache.put("teacher", key, compact_teacher_output(p, cfg.height, cfg.width))
    return len(batch)


@task(name="write-shard", **RETRY)
def write_shard(
    store_path: str,
    cache_dir: str,
    shard: int,
    samples: list[dict],
    teacher_result: dict,
    config: dict,
    teacher: dict,
    key: str,
    sim_workers: int = 0,
) -> dict:
    """Simulate every planned sample of the shard and write the shard whole (arrays, then manifest), in the
    simulation pool when ``sim_workers`` > 0 (see tasks.sim_pool), else in this process."""
    # Pool workers keep the working directory they were started in: hand them absolute local paths.
    store_path, cache_dir = (p if "://" in p else os.path.abspath(p) for p in (store_path, cache_dir))
    return run_in_pool(sim_workers, simulate_and_write_shard, store_path, cache_dir, shard, samples,
                       teacher_result["inputs"], config, teacher, key, teacher_result["rgb_sha256"])
