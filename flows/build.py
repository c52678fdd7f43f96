"""Dataset build and repair flows (wiring only; the work is in ``tasks.build_tasks``).

build-dataset: validate teacher -> discover inputs -> append-only plan (stored in the dataset) -> per shard
``teacher -> write`` -> finalize (consolidated metadata, dataset card, summary, artifacts).
repair-shards: re-run, from the stored plan and config, only the shards that are missing or hold failed rows.
"""

import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.failures import readable_failures

from storage.cache import ArrayCache, default_cache_dir
from storage.compression import DEFAULT_COMPRESSION, Compression
from storage.plan import read_plan, write_plan
from storage.root import StoreRoot, is_remote
from storage.store import DatasetStore
from tasks.build_config import BACKENDS, BUILD_DEFAULTS, RUN_DEFAULTS, Backend, BuildConfig, SensorName
from storage.manifest_summary import mean_ok_density, shard_state, status_counts
from tasks.build_tasks import register_teacher, shard_key, teacher_shard, teacher_tags, write_shard
from tasks.sim_pool import default_workers
from tasks.errors import InputError, StoreError
from tasks.planning import discover_inputs, plan_shards
from tasks.provenance import code_version

DEMO_IMAGES = Path(__file__).resolve().parent / "demo_images"
DEFAULT_OUT = "monolidar-demo/demo.zarr"


def load_validated_teacher(teacher: str | None, *, batch_size: int, threads: int | None) -> dict:
    """Load + probe the teacher in the flow process, before any shard work; returns its identity dict."""
    from model.teacher import Teacher

    t = Teacher(teacher, threads=threads, probe=True)
    ident = dict(t.identity())
    ident.update(path=str(Path(t.path).resolve()), batch_size=int(batch_size), threads=threads)
    register_teacher(t, ident)  # thread-runner tasks reuse this session instead of loading it again
    return ident


def _shard_state(store: DatasetStore) -> dict[int, dict]:
    """{shard: {"key": shard_key, "failed": n}} for the complete shards of a store."""
    return shard_state(store.manifest())


def resolve_sim_workers(sim_workers: int | None) -> int:
    """Simulation processes for this flow run: as asked, or (None) one per core when the flow's task runner
    is a thread pool; 0 under the process and Dask runners, whose tasks already run in worker processes."""
    if sim_workers is not None:
        return max(0, int(sim_workers))
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    return default_workers() if isinstance(runner, ThreadPoolTaskRunner) else 0


# Teacher tasks in flight with the thread runner: the one on the device and the next one decoding its images.
TEACHER_AHEAD = 2


def _run_shards(store: DatasetStore, cache_dir: str, shards: dict[int, list[dict]], cfg: BuildConfig,
                teacher: dict, *, sim_workers: int, progress: bool) -> list[dict]:
    """Run one teacher -> write chain per shard; collect small per-shard summaries.

    With the simulation pool (thread runner), shards go through a bounded pipeline in shard order: at most
    TEACHER_AHEAD teacher tasks in flight (the one on the device and the next one decoding), and a shard's
    write task is submitted when its teacher task has finished, at most ``sim_workers`` at a time. Why: a task
    waiting for an upstream future holds a runner thread, so submitting every chain at once filled the few
    threads with waiting writes while the next teacher task queued behind them (measured: the teacher idled
    for seconds between shards). Other runners (process, Dask) get every chain at once, as before.
    """
    logger = get_run_logger()
    code = code_version()
    cfg_d = cfg.to_dict()
    order = list(shards)
    keys = {shard: shard_key(shards[shard], cfg, teacher, code) for shard in order}
    tags = teacher_tags()  # checked once per build, not per task run
    teacher_window = TEACHER_AHEAD if sim_workers > 0 else len(order)
    write_window = sim_workers if sim_workers > 0 else len(order)
    teachers: dict = {}  # teacher future -> shard
    writes: dict = {}    # write future -> (shard, teacher future)
    waiting: list = []   # (shard, teacher future) whose teacher finished, write not yet submitted

    def submit_more() -> None:
        while order and len(teachers) < teacher_window:
            shard = order.pop(0)
            fut = teacher_shard.with_options(task_run_name=f"teacher-shard-{shard:05d}", tags=tags).submit(
                str(store.path), cache_dir, shards[shard], cfg_d, teacher, shard)
            teachers[fut] = shard
        waiting.sort(key=lambda w: w[0])
        while waiting and len(writes) < write_window:
            shard, tout = waiting.pop(0)
            fut = write_shard.with_options(task_run_name=f"write-shard-{shard:05d}").submit(
                str(store.path), cache_dir, shard, shards[shard], tout, cfg_d, teacher, keys[shard], sim_workers)
            writes[fut] = (shard, tout)

    def completed():
        # One finished task at a time, teacher or write; new tasks are submitted in between.
        while teachers or writes or waiting or order:
            submit_more()
            fut = next(as_completed([*teachers, *writes]))
            fut.wait()  # as_completed can yield before the client-side state is final
            if fut in teachers:
                waiting.append((teachers.pop(fut), fut))
                continue
            yield fut, writes.pop(fut)
    bar = None
    if progress and shards:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(v) for v in shards.values()), unit="sample", desc="build", file=sys.stderr)
    n_shards = len(shards)
    artifact = create_progress_artifact(0.0, key="build-progress",  # key = the card's title in the UI
                                        description=f"{n_shards} shards to write into {store.path}") if n_shards else None
    results = []
    for done, (fut, (shard, tout)) in enumerate(completed(), start=1):
        state = fut.state
        if state.is_completed():
            res = fut.result()
            t = tout.result(raise_on_failure=False)
            res["teacher_computed"] = t.get("computed", 0) if isinstance(t, dict) else 0
        else:
            reason = str(state.message or state.name)
            logger.error("shard %05d failed: %s", shard, reason)
            res = {"shard": shard, "n_rows": len(shards[shard]), "failed_shard": True, "reason": reason,
                   "status": {"ok": 0, "quarantined": 0, "failed": 0}, "teacher_computed": 0}
        results.append(res)
        if bar is not None:
            bar.update(len(shards[shard]))
        if artifact is not None and (done == n_shards or done % max(1, n_shards // 100) == 0):
            update_progress_artifact(artifact, 100.0 * done / n_shards)
    if bar is not None:
        bar.close()
    return sorted(results, key=lambda r: r["shard"])


def _finalize(store: DatasetStore, cfg: BuildConfig, teacher: dict, results: list[dict], extra: dict,
              previews: int) -> dict:
    from tasks.previews import write_previews

    table = store.manifest()
    status = status_counts(table)
    failed_shards = [r["shard"] for r in results if r.get("failed_shard")]
    written = sum(r.get("n_rows", 0) for r in results if not r.get("failed_shard"))
    summary = {
        "store": str(store.path),
        "samples": table.num_rows,
        "status": status,
        "shards_complete": len(store.complete_shards()),
        "shards_planned": store.n_shards_allocated,
        "shards_run": len(results),
        "task_runs": 2 * len(results),  # one teacher + one write task per shard
        "failed_shards": failed_shards,
        "teacher_computed": int(sum(r.get("teacher_computed", 0) for r in results)),
        # CPU seconds per written sample in the shard writers (simulate, encode, write), teacher stage excluded
        "write_cpu_ms_per_sample": round(1000 * sum(r.get("cpu_s", 0.0) for r in results) / written, 2)
        if written else 0.0,
        "lidar_density_mean": mean_ok_density(table),
        "teacher_sha256": teacher["sha256"],
        "sensor": cfg.sensor,
        "code_version": code_version(),
        **extra,
    }
    store.finalize(summary)
    if results:
        create_table_artifact(
            [
                {
                    "shard": r["shard"],
                    "rows": r.get("n_rows", 0),
                    "ok": r["status"]["ok"],
                    "quarantined": r["status"]["quarantined"],
                    "failed": r["status"]["failed"],
                    "lidar_density_mean": round(r.get("lidar_density_mean", 0.0), 5),
                    "teacher_computed": r.get("teacher_computed", 0),
                    "error": r.get("reason", ""),
                }
                for r in results
            ],
            key="build-shards",
            description=f"Per-shard statistics of {store.path}",
        )
    if previews > 0 and status["ok"] and store.root.path is not None:  # previews live in a local store only
        md = write_previews(store, store.path / "previews", limit=previews, markdown=True)
        create_markdown_artifact(md, key="build-previews", description="RGB | teacher depth | sparse LiDAR")
    return summary


def default_thread_workers() -> int:
    """Threads of the default task runner: one per simulation process, plus the teacher, plus one spare so a
    finished shard's bookkeeping never waits for a thread."""
    return default_workers() + 2


@flow(name="build-dataset", task_runner=ThreadPoolTaskRunner(max_workers=default_thread_workers()),
      log_prints=True)
@readable_failures
def build_dataset(
    images: str = str(DEMO_IMAGES),
    out: str = DEFAULT_OUT,
    teacher: str | None = None,
    sensor: SensorName = BUILD_DEFAULTS.sensor,
    sensor_file: str | None = None,
    samples_per_image: int = BUILD_DEFAULTS.samples_per_image,
    shard_size: int = BUILD_DEFAULTS.shard_size,
    seed: int = BUILD_DEFAULTS.seed,
    height: int = BUILD_DEFAULTS.height,
    width: int = BUILD_DEFAULTS.width,
    fx: float | None = BUILD_DEFAULTS.fx,
    backend: Backend = BUILD_DEFAULTS.backend,
    see_through: bool = BUILD_DEFAULTS.see_through,
    teacher_batch_size: int = RUN_DEFAULTS.teacher_batch_size,
    teacher_threads: int | None = None,
    sim_workers: int | None = RUN_DEFAULTS.sim_workers,
    cache_dir: str | None = None,
    overwrite: bool = False,
    previews: int = RUN_DEFAULTS.previews,
    progress: bool = False,
    compression: Compression | None = None,
) -> dict:
    """Build (or grow) a sharded Zarr depth-completion dataset from photos.

    Args:
        images: folder (recursive), glob, or .parquet/.txt list of image URIs; local or fsspec (s3://, gs://…).
        out: dataset store path (a Zarr v3 group); re-running on an existing store adds only new inputs.
        teacher: ONNX depth model (Depth Anything V2 I/O); empty = the embedded default teacher.
        sensor: built-in LiDAR profile (HDL-64E as in KITTI, Velodyne VLP-16/32C, Ouster OS1-64/128, Livox Avia).
        sensor_file: a LiDAR profile file (.yaml/.toml) to use instead of a built-in one; empty = use `sensor`.
        samples_per_image: variants per image, each with its own seed (depth scale, sensor jitter, noise).
        shard_size: samples per shard = the unit one task writes whole (64: shard files of tens of MB).
        seed: global seed; per-sample seeds are hash(seed, sample id).
        height: canvas rows (KITTI crop: 352).
        width: canvas columns (KITTI crop: 1216).
        fx: canvas focal length in pixels; empty = KITTI-like field of view.
        backend: ray caster: fast (default), embree (reference) or pyrender (raster).
        see_through: keep LiDAR returns hidden from the camera behind foreground edges, like real KITTI input.
        teacher_batch_size: images per teacher batch (fixed; the last batch of a shard is padded).
        teacher_threads: onnxruntime intra-op threads per session; empty = onnxruntime's default.
        sim_workers: simulation processes beside the teacher; empty = one per CPU core (thread runner) or
            none (process/Dask runners, whose workers are processes already); 0 = simulate in the task thread.
        cache_dir: teacher-output cache; empty = ``.monolidar-cache`` beside the store.
        overwrite: delete an existing store built with another configuration instead of refusing.
        previews: number of preview images written into the store and attached as an artifact.
        progress: show a progress bar on stderr.
        compression: codec profile of a new store: balanced (default; lz4 images, zstd maps), fast (all
            lz4: ~1.7x less encode CPU, ~1.1x the bytes) or small (archiving); empty = the existing store's own, or balanced.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    cfg = BuildConfig(height=height, width=width, fx=fx, sensor=sensor_file or sensor, backend=backend,
                      see_through=see_through, samples_per_image=samples_per_image, shard_size=shard_size, seed=seed)
    _check_sensor_and_backend(cfg)
    inputs = discover_inputs(images)
    # A missing or broken teacher fails here, before any shard runs.
    ident = load_validated_teacher(teacher, batch_size=teacher_batch_size, threads=teacher_threads)
    t_plan = time.perf_counter()
    store_path = out if is_remote(out) else Path(out)
    cache = str(Path(cache_dir) if cache_dir else _default_cache(store_path))
    store = _open_or_create(store_path, cfg, ident, images, overwrite=overwrite, compression=compression)
    with store.lock(owner="build-dataset"):
        ArrayCache(cache).clear_temporaries()
        plan = plan_shards(inputs, shard_size=shard_size, samples_per_image=samples_per_image, seed=seed,
                           existing=read_plan(store.path))
        if plan.removed_keys:
            logger.warning("%d planned inputs are gone from %s (kept in the dataset): %s", len(plan.removed_keys),
                           images, ", ".join(plan.removed_keys[:10]))
        write_plan(store.path, [s.__dict__ for s in plan.samples])
        store.ensure_shards(plan.n_shards)
        code = code_version()
        state = _shard_state(store)
        todo = {
            shard: [s.__dict__ for s in samples]
            for shard, samples in plan.shards().items()
            if state.get(shard, {}).get("key") != shard_key([s.__dict__ for s in samples], cfg, ident, code)
        }
        logger.info("%d inputs, %d samples in %d shards; %d shards to write (%d up to date)", len(inputs),
                    len(plan.samples), plan.n_shards, len(todo), plan.n_shards - len(todo))
        t_shards = time.perf_counter()
        results = _run_shards(store, cache, todo, cfg, ident, sim_workers=resolve_sim_workers(sim_workers),
                              progress=progress)
        t_finalize = time.perf_counter()
        summary = _finalize(store, cfg, ident, results, {"removed_inputs": plan.removed_keys,
                                                         "inputs": len(inputs)}, previews)
    t_end = time.perf_counter()
    # Where the time went: everything but the shard chains is per-build overhead (teacher load + probe,
    # discovery, planning, manifest reads, finalize, previews), which must stay small at scale.
    summary["seconds"] = round(t_end - t0, 2)
    summary["seconds_teacher_load"] = round(t_plan - t0, 2)
    summary["seconds_plan"] = round(t_shards - t_plan, 2)
    summary["seconds_shards"] = round(t_finalize - t_shards, 2)
    summary["seconds_finalize"] = round(t_end - t_finalize, 2)
    logger.info("dataset %s: %s", store.path, {k: summary[k] for k in ("samples", "status", "lidar_density_mean")})
    return summary


def _check_sensor_and_backend(cfg: BuildConfig) -> None:
    from tasks.sensors import load_profile

    load_profile(cfg.sensor)  # unknown name -> GeometryError listing the known ones
    if cfg.backend not in BACKENDS:
        raise InputError(f"unknown backend {cfg.backend!r}; expected one of {', '.join(BACKENDS)}")


def _default_cache(store_path: Path | str) -> Path:
    # A store on object storage keeps its teacher/canvas cache on local disk, in the working directory.
    return Path(".monolidar-cache").resolve() if is_remote(store_path) else default_cache_dir(store_path)


def _open_or_create(path: Path | str, cfg: BuildConfig, teacher: dict, images: str, *,
                    overwrite: bool, compression: str | None = None) -> DatasetStore:
    config = {"build": cfg.to_dict(), "config_hash": cfg.hash(), "images": str(images)}
    teacher_attrs = {k: teacher[k] for k in teacher if k != "threads"}
    root = StoreRoot(path)
    if not root.is_empty():
        store = DatasetStore.open(path, mode="r+")  # StoreError if it is not a monolidar store
        old = store.attrs.get("config", {})
        old_teacher = store.attrs.get("teacher", {}).get("sha256")
        mismatch = []
        if old.get("config_hash") != cfg.hash():
            mismatch.append("configuration")
        if old_teacher != teacher["sha256"]:
            mismatch.append("teacher")
        # The codecs are fixed when a store is created; None = keep the store's own profile.
        if compression is not None and compression != store.compression:
            mismatch.append(f"compression ({store.compression}, not {compression})")
        if not mismatch:
            return store
        if not overwrite:
            raise StoreError(
                f"{path}: existing dataset was built with another {' and '.join(mismatch)}; "
                "choose a new --out or pass --overwrite to replace it"
            )
        root.remove_tree()
    return DatasetStore.create(path, height=cfg.height, width=cfg.width, shard_size=cfg.shard_size, config=config,
                               teacher=teacher_attrs, sensor=cfg.sensor, code_version=code_version(),
                               compression=compression or DEFAULT_COMPRESSION)


@flow(name="repair-shards", task_runner=ThreadPoolTaskRunner(max_workers=default_thread_workers()),
      log_prints=True)
@readable_failures
def repair_dataset(store: str, teacher: str | None = None, cache_dir: str | None = None,
                   sim_workers: int | None = RUN_DEFAULTS.sim_workers, progress: bool = False) -> dict:
    """Re-run only the shards of ``store`` that are missing or hold failed samples, from its stored plan and
    configuration. Idempotent: on a complete store it changes nothing.

    Args:
        store: dataset store path.
        teacher: ONNX teacher to use if the recorded one moved (must have the same sha256).
        cache_dir: teacher-output cache; empty = ``.monolidar-cache`` beside the store.
        sim_workers: simulation processes; empty = one per CPU core (thread runner) or none (other runners).
        progress: show a progress bar on stderr.
    """
    logger = get_run_logger()
    ds = DatasetStore.open(store, mode="r+")
    config = ds.attrs.get("config", {})
    cfg = BuildConfig.from_dict(config.get("build", {}))
    recorded = ds.attrs.get("teacher", {})
    ident = load_validated_teacher(teacher or recorded.get("path"),
                                   batch_size=recorded.get("batch_size", RUN_DEFAULTS.teacher_batch_size),
                                   threads=None)
    if ident["sha256"] != recorded.get("sha256"):
        raise StoreError(f"{store}: teacher {ident['path']} (sha256 {ident['sha256'][:12]}) is not the one the "
                         f"dataset was built with (sha256 {str(recorded.get('sha256'))[:12]})")
    cache = str(Path(cache_dir) if cache_dir else _default_cache(ds.path))
    with ds.lock(owner="repair-shards"):
        ArrayCache(cache).clear_temporaries()
        plan_rows = read_plan(ds.path)
        if not plan_rows:
            raise StoreError(f"{store}: no build plan recorded (plan.parquet missing); rebuild it instead")
        shards: dict[int, list[dict]] = {}
        for r in plan_rows:
            shards.setdefault(int(r["shard"]), []).append(r)
        state = _shard_state(ds)
        todo = {s: sorted(rows, key=lambda r: r["row"]) for s, rows in sorted(shards.items())
                if s not in state or state[s]["failed"] > 0}
        logger.info("%s: %d of %d shards need repair: %s", store, len(todo), len(shards), sorted(todo)[:20])
        if not todo:
            return {"store": str(ds.path), "repaired_shards": [], "changed": False}
        results = _run_shards(ds, cache, todo, cfg, ident, sim_workers=resolve_sim_workers(sim_workers),
                              progress=progress)
        summary = _finalize(ds, cfg, ident, results, {"repaired": sorted(todo)}, previews=0)
    # Only shards whose write task completed are repaired; the others stay listed in failed_shards.
    repaired = sorted(r["shard"] for r in results if not r.get("failed_shard"))
    if summary["failed_shards"]:
        logger.error("%s: %d shard(s) could not be repaired: %s", store, len(summary["failed_shards"]),
                     summary["failed_shards"][:20])
    summary.update(repaired_shards=repaired, changed=bool(repaired))
    return summary
