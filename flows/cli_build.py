"""`monolidar build`, `monolidar repair`, `monolidar preview`."""
from __future__ import annotations

import argparse
import json
import os

from storage.compression import COMPRESSION
from tasks.build_config import BACKENDS, BUILD_DEFAULTS, RUN_DEFAULTS, RUNNERS


def _add_runner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runner", choices=RUNNERS, default=RUN_DEFAULTS.runner,
                   help="Prefect task runner: threads (default; simulation in a process pool beside the teacher), "
                        "processes, or Dask (prefect-dask)")
    p.add_argument("--workers", type=int, default=None,
                   help="task runner size (default: cores + 2 threads for the thread runner, cores otherwise)")
    p.add_argument("--sim-workers", type=int, default=RUN_DEFAULTS.sim_workers,
                   help="simulation processes beside the teacher (default: one per core with --runner thread, "
                        "none with process/dask; 0 = simulate in the task threads)")
    p.add_argument("--dask-address", default=None,
                   help="scheduler of an existing Dask cluster (tcp://host:8786); default: a local cluster")


def make_task_runner(runner: str, workers: int | None, dask_address: str | None = None):
    """Prefect task runner for the build flows; the per-sample seeds make the output independent of it."""
    if workers is None:
        from flows.build import default_thread_workers
        from tasks.sim_pool import default_workers

        workers = default_thread_workers() if runner == "thread" else default_workers()
    if runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # optional extra
            raise ValueError("--runner dask needs the dask extra: pip install 'monolidar[dask]'") from exc
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    raise ValueError(f"unknown runner {runner!r}; expected thread, process or dask")


def split_sensor(value: str) -> tuple[str, str | None]:
    """--sensor NAME|FILE -> the flow's (sensor, sensor_file): a built-in name, or a profile file path."""
    from tasks.sensors import list_profiles

    if value in list_profiles():
        return value, None
    return BUILD_DEFAULTS.sensor, value


def cmd_build(args: argparse.Namespace) -> int:
    from flows.build import DEFAULT_OUT, DEMO_IMAGES, build_dataset

    demo = args.images is None
    images = str(DEMO_IMAGES) if demo else args.images
    out = args.out or DEFAULT_OUT
    if demo:
        print(f"monolidar build: no --images given, building the demo dataset from {images}")
    sensor, sensor_file = split_sensor(args.sensor)
    flow = build_dataset.with_options(task_runner=make_task_runner(args.runner, args.workers, args.dask_address))
    summary = flow(
        images=images, out=out, teacher=args.teacher, sensor=sensor, sensor_file=sensor_file,
        samples_per_image=args.samples_per_image, shard_size=args.shard_size, seed=args.seed,
        height=args.height, width=args.width, fx=args.fx, backend=args.backend, see_through=args.see_through,
        teacher_batch_size=args.teacher_batch_size, teacher_threads=args.teacher_threads,
        sim_workers=args.sim_workers, cache_dir=args.cache_dir, overwrite=args.overwrite, previews=args.previews,
        progress=not args.quiet, compression=args.compression,
    )
    if args.json:
        print(json.dumps(summary, default=str))
        return 1 if summary["failed_shards"] else 0
    st = summary["status"]
    print(f"dataset written to {summary['store']}: {summary['samples']} samples "
          f"({st['ok']} ok, {st['quarantined']} quarantined, {st['failed']} failed) in "
          f"{summary['shards_complete']} shards, mean LiDAR density {summary['lidar_density_mean']:.4f}, "
          f"{summary['seconds']:.1f} s")
    if summary.get("removed_inputs"):
        print(f"note: {len(summary['removed_inputs'])} inputs planned earlier are no longer present (kept)")
    if summary["failed_shards"]:
        print(f"{len(summary['failed_shards'])} shards failed: run `monolidar repair {summary['store']}`")
        return 1
    print(f"inspect it with: monolidar inspect {summary['store']}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from flows.build import repair_dataset

    flow = repair_dataset.with_options(task_runner=make_task_runner(args.runner, args.workers, args.dask_address))
    res = flow(store=args.store, teacher=args.teacher, cache_dir=args.cache_dir, sim_workers=args.sim_workers,
               progress=not args.quiet)
    if not res["changed"]:
        print(f"{args.store}: every planned shard is complete; nothing to repair")
        return 0
    st = res["status"]
    print(f"{args.store}: repaired shards {res['repaired_shards']}; now {res['samples']} samples "
          f"({st['ok']} ok, {st['quarantined']} quarantined, {st['failed']} failed)")
    return 1 if res["failed_shards"] else 0


def cmd_preview(args: argparse.Namespace) -> int:
    from storage.store import DatasetStore
    from tasks.previews import write_previews

    store = DatasetStore.open(args.store)
    out = write_previews(store, args.out, limit=args.limit)
    n = len(list(os.scandir(out)))
    print(f"wrote {n} previews (RGB | teacher depth | LiDAR overlay) to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("build", help="build a depth-completion dataset from photos (no args: the demo)",
                       description="Build a sharded Zarr dataset: teacher depth -> mesh -> simulated LiDAR. "
                                   "With no arguments, builds the demo dataset from images shipped in the repo.")
    p.add_argument("--images", default=None, help="folder, glob, or .parquet/.txt list of image URIs (fsspec ok)")
    p.add_argument("--out", default=None, help="dataset path (default monolidar-demo/demo.zarr)")
    p.add_argument("--teacher", default=None, help="ONNX depth model (default: the embedded teacher)")
    d, rd = BUILD_DEFAULTS, RUN_DEFAULTS
    p.add_argument("--sensor", default=d.sensor, help=f"LiDAR profile name or file (default {d.sensor})")
    p.add_argument("--samples-per-image", type=int, default=d.samples_per_image)
    p.add_argument("--shard-size", type=int, default=d.shard_size, help=f"samples per shard (default {d.shard_size})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--fx", type=float, default=d.fx, help="canvas focal length in px (default KITTI-like)")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend)
    p.add_argument("--see-through", action="store_true", help="keep LiDAR points hidden behind edges")
    p.add_argument("--teacher-batch-size", type=int, default=rd.teacher_batch_size)
    p.add_argument("--teacher-threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="teacher cache (default .monolidar-cache beside the store)")
    p.add_argument("--overwrite", action="store_true", help="replace a store built with another config")
    p.add_argument("--previews", type=int, default=rd.previews)
    p.add_argument("--compression", choices=list(COMPRESSION), default=None,
                   help="codec profile of a new store: balanced (default; lz4 images, zstd maps), fast (all lz4: "
                        "~1.7x less encode CPU, ~1.1x the bytes) or small (archiving); default: an existing store's own")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the build summary as one JSON object")
    _add_runner_args(p)
    p.set_defaults(func=cmd_build, runs_flows=True)

    r = sub.add_parser("repair", help="re-run only the missing or failed shards of a dataset")
    r.add_argument("store")
    r.add_argument("--teacher", default=None, help="teacher file if the recorded path moved (same sha256)")
    r.add_argument("--cache-dir", default=None)
    r.add_argument("--quiet", action="store_true")
    _add_runner_args(r)
    r.set_defaults(func=cmd_repair, runs_flows=True)

    v = sub.add_parser("preview", help="write preview PNGs: RGB | teacher depth | LiDAR overlay")
    v.add_argument("store")
    v.add_argument("--out", required=True)
    v.add_argument("--limit", type=int, default=16)
    v.set_defaults(func=cmd_preview)
