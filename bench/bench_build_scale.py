"""Build at scale: samples/s, peak memory, bytes written vs stored, task runs, per-build overhead; and a
simulated one-million-sample plan + manifest summary.

Each build runs the real CLI (`python -m flows.cli build`) in a child process over a list of distinct photos
(bench/synth_images.py: seeded crops/flips/colour jitter of the shared photos, so every content hash differs):

- samples/s and the flow's own split of its wall time (teacher load, planning, shard chains, finalize);
- peak RSS of the whole process tree (flow process + simulation workers + Prefect's server), sampled;
- bytes written to disk by the tree (``getrusage(RUSAGE_CHILDREN).ru_oublock`` x 512, Prefect's database
  kept on tmpfs so only the build's own files count) / bytes stored in the dataset (the store folder);
- task runs (two per shard) and the shard writers' CPU ms per sample.

Flat memory = the peak at the largest build is about the peak at the smallest (--sizes 500,5000).

    python bench/synth_images.py /tmp/synth --n 5000
    python bench/bench_build_scale.py --images-dir /tmp/synth --sizes 500,5000 --height 176 --width 608
    python bench/bench_build_scale.py --plan-only --plan-samples 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_build(list_file: Path, work: Path, args: argparse.Namespace) -> dict:
    store, cache = work / "store.zarr", work / "cache"
    prefect_home = Path(tempfile.mkdtemp(prefix="bench-prefect-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": "", "PYTHONPATH": str(REPO),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    cmd = [sys.executable, "-m", "flows.cli", "build", "--quiet", "--images", str(list_file), "--out", str(store),
           "--cache-dir", str(cache), "--height", str(args.height), "--width", str(args.width),
           "--shard-size", str(args.shard_size), "--previews", "0", "--json"]
    if args.teacher:
        cmd += ["--teacher", args.teacher]
    if args.compression:
        cmd += ["--compression", args.compression]
    blocks0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], tree_rss(child.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    written = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock - blocks0) * 512
    shutil.rmtree(prefect_home, ignore_errors=True)
    if child.returncode != 0:
        raise SystemExit(f"build failed ({child.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    stored, cached = du(store), du(cache)
    return {"wall_s": wall, "peak_rss": peak[0], "written": written, "stored": stored, "cache": cached,
            "summary": summary}


def report_build(n: int, r: dict) -> None:
    s = r["summary"]
    overhead = s["seconds_teacher_load"] + s["seconds_plan"] + s["seconds_finalize"]
    print(f"  {n:6d} samples: {n / r['wall_s']:6.2f} samples/s end to end ({r['wall_s']:.0f} s; flow "
          f"{s['seconds']:.0f} s = teacher load {s['seconds_teacher_load']:.1f} + plan {s['seconds_plan']:.1f} + "
          f"shards {s['seconds_shards']:.0f} + finalize {s['seconds_finalize']:.1f}), overhead outside the shard "
          f"chains {100 * overhead / s['seconds']:.1f} % (plan + finalize alone "
          f"{100 * (s['seconds_plan'] + s['seconds_finalize']) / s['seconds']:.1f} %)")
    print(f"          peak RSS (process tree) {r['peak_rss'] / 2**20:.0f} MiB; task runs {s['task_runs']} "
          f"({s['shards_run']} shards); shard-writer CPU {s['write_cpu_ms_per_sample']:.1f} ms/sample; "
          f"status {s['status']}")
    print(f"          bytes written {r['written'] / n / 1024:.0f} KiB/sample, stored {r['stored'] / n / 1024:.0f} "
          f"KiB/sample (teacher cache {r['cache'] / n / 1024:.0f} KiB/sample): write amplification "
          f"{r['written'] / r['stored']:.3f}")


def simulated_plan(n: int, shard_size: int) -> None:
    """Time what a build does outside the shard chains for n samples, on synthetic rows (no images)."""
    import numpy as np
    import pyarrow as pa

    from storage.plan import read_plan, write_plan
    from tasks.build_config import BuildConfig
    from storage.manifest_summary import mean_ok_density, shard_state, status_counts
    from tasks.build_tasks import shard_key
    from tasks.planning import InputImage, plan_shards

    cfg = BuildConfig(shard_size=shard_size)
    teacher = {"sha256": "0" * 64}
    inputs = [InputImage(key=f"photos/{i:08d}.jpg", uri=f"/data/photos/{i:08d}.jpg") for i in range(n)]
    work = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    times = {}
    try:
        t = time.perf_counter()
        plan = plan_shards(inputs, shard_size=shard_size, samples_per_image=1, seed=0)
        times["plan_shards"] = time.perf_counter() - t
        t = time.perf_counter()
        write_plan(work, [s.__dict__ for s in plan.samples])
        times["write_plan"] = time.perf_counter() - t
        t = time.perf_counter()
        rows = read_plan(work)
        times["read_plan"] = time.perf_counter() - t
        t = time.perf_counter()
        keys = {sh: shard_key([s.__dict__ for s in ss], cfg, teacher, "code") for sh, ss in plan.shards().items()}
        times["shard_keys"] = time.perf_counter() - t
        rng = np.random.default_rng(0)
        table = pa.table({
            "shard": pa.array([r["shard"] for r in rows], pa.int32()),
            "status": pa.array(np.where(rng.random(n) < 0.995, "ok", "quarantined")),
            "lidar_density": pa.array(rng.uniform(0.04, 0.07, n).astype(np.float32)),
            "shard_key": pa.array([keys[r["shard"]] for r in rows]),
        })
        t = time.perf_counter()
        state = shard_state(table)
        summary = (status_counts(table), mean_ok_density(table))
        times["manifest_summary"] = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(times.values())
    print(f"simulated plan + manifest summary, {n:,} samples in {len(state):,} shards of {shard_size}: "
          f"{total:.1f} s total ({', '.join(f'{k} {v:.1f} s' for k, v in times.items())}); "
          f"status {summary[0]}, density {summary[1]:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-dir", type=Path, help="folder of distinct photos (bench/synth_images.py)")
    ap.add_argument("--sizes", default="500,5000", help="comma-separated sample counts, smallest first")
    ap.add_argument("--height", type=int, default=352)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--compression", default=None, help="store profile (balanced | fast | small; default balanced)")
    ap.add_argument("--teacher", default=None,
                    help="ONNX teacher (default: the embedded one); 'tiny' = a millisecond ground-plane model")
    ap.add_argument("--plan-samples", type=int, default=1_000_000)
    ap.add_argument("--plan-only", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = ap.parse_args()

    results = {}
    if not args.plan_only:
        if args.images_dir is None:
            raise SystemExit("--images-dir is required (make one with bench/synth_images.py)")
        photos = sorted(args.images_dir.resolve().glob("*.jpg"))
        sizes = [int(x) for x in args.sizes.split(",")]
        if len(photos) < max(sizes):
            raise SystemExit(f"{args.images_dir} has {len(photos)} photos, need {max(sizes)}")
        if args.teacher == "tiny":
            from model.export import export_ground_plane_teacher

            args.teacher = str(export_ground_plane_teacher(Path(tempfile.mkdtemp(prefix="bench-teacher-")) / "tiny.onnx"))
        print(f"builds at {args.height}x{args.width}, shard size {args.shard_size}, teacher "
              f"{args.teacher or 'embedded'}, {os.cpu_count()} CPUs")
        for n in sizes:
            work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-", dir=REPO / "out" if (REPO / "out").is_dir() else None))
            try:
                list_file = work / "inputs.txt"
                list_file.write_text("".join(f"{p}\n" for p in photos[:n]))
                results[n] = run_build(list_file, work, args)
                report_build(n, results[n])
            finally:
                shutil.rmtree(work, ignore_errors=True)
        if len(sizes) > 1:
            lo, hi = results[sizes[0]]["peak_rss"], results[sizes[-1]]["peak_rss"]
            print(f"  peak RSS {sizes[-1]} vs {sizes[0]} samples: {hi / lo:.2f}x (flat memory: ~1.0)")
    simulated_plan(args.plan_samples, args.shard_size)
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2, default=str))


if __name__ == "__main__":
    main()
