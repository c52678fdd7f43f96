"""The build's CPU path per stage, and end-to-end build vs teacher-only throughput, measured side by side.

(a) ``--stages``: CPU ms per sample (``time.process_time``, one process, every thread it starts included) of
    each stage outside the teacher: read, hash, decode + fit to the canvas, decode at the teacher's input
    size, teacher-cache put + get + upsample, depth policy, mesh, beams, ray cast, drops/noise, projection,
    statistics + uint16 encoding, and the store write (Zarr encode + shard file + manifest part).
(b) default: throughput of the whole ``build-dataset`` flow (Prefect ephemeral mode, default thread runner
    with the simulation process pool) vs the teacher alone (session load + decode at the network size +
    batched inference) on the same distinct photos, with the DA-V2-Small-shaped network (random weights:
    the cost is what matters) at each ``--short-side``; runs alternate (ABBA) with fresh stores and caches.
    Target: build / teacher-only >= 0.90 at short side 126 (a teacher as fast as a GPU would be, relative
    to this box's CPU).

    python bench/bench_build.py --stages --images 32 [--compression balanced fast]
    python bench/bench_build.py --short-side 126 518 --images 48 --images-518 8 [--compression balanced fast]

``--compression`` lists store profiles (storage/compression.py) to measure side by side: in (a) the same
arrays are written once per profile (ABBA), in (b) each round alternates the teacher-only run with one build
per profile.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a loaded box starts it slowly

from storage.compression import COMPRESSION, DEFAULT_COMPRESSION  # noqa: E402
from synth_images import write_images  # noqa: E402


def export_teacher(path: Path, short_side: int) -> Path:
    import onnx
    import torch

    from model.dav2 import DepthAnythingV2Small, count_parameters, export_onnx

    torch.manual_seed(0)
    net = DepthAnythingV2Small()
    info = export_onnx(net, path, height=short_side, width=short_side)
    proto = onnx.load(str(path))  # run it at this short side (the default is 518)
    e = proto.metadata_props.add()
    e.key, e.value = "monolidar.short_side", str(short_side)
    onnx.save(proto, str(path))
    print(f"teacher: DA-V2-Small-shaped, {count_parameters(net) / 1e6:.1f} M parameters, "
          f"short side {short_side}, ORT vs torch max |diff| {info['max_abs_diff']:.2e}")
    return path


# ------------------------------------------------------------------ (a) per-stage CPU
class StageClock:
    """Accumulates process CPU time per named stage; ``wrap`` times a function under a name."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.cpu[name] += time.process_time() - t
        return timed

    def run(self, stage: str, fn, *a, **k):
        return self.wrap(stage, fn)(*a, **k)


def write_as_the_build(store, shard: int, arrays: dict, rows: list[dict]) -> None:
    """The images as the build's teacher stage writes them (one thread here), then the other arrays with the
    manifest part, as its write stage does."""
    digest = store.write_array(shard, "rgb", arrays["rgb"])
    store.write_shard(shard, {k: v for k, v in arrays.items() if k != "rgb"}, rows, written={"rgb": digest})


def stage_breakdown(images: list[Path], h: int, w: int, work: Path, profiles: list[str]) -> None:
    import storage.store as st
    import tasks.lidar as lidar
    import tasks.sample_sim as sim
    from model.teacher import Teacher
    from storage.cache import ArrayCache
    from tasks.build_config import BuildConfig
    from tasks.build_tasks import compact_teacher_output
    from tasks.images import load_fitted, resize_image
    from storage.root import read_uri
    from tasks.sensors import load_profile
    from tasks.shard_writer import _shard_buffers, teacher_at_canvas

    import contextlib

    import cv2

    clock = StageClock()
    # OpenCV threads as the build has them: the simulation pool's workers run with one (tasks.sim_pool), the
    # teacher's decode threads in the flow process with OpenCV's default.
    default_threads = cv2.getNumThreads()

    @contextlib.contextmanager
    def cv2_threads(n: int):
        cv2.setNumThreads(n)
        try:
            yield
        finally:
            cv2.setNumThreads(default_threads)

    # Wrap the stages inside simulate_sample / simulate_lidar where they are looked up (module globals).
    for mod, name, label in [(sim, "disparity_to_depth", "depth policy"), (sim, "grid_from_uint16", "mesh"),
                             (lidar, "beam_directions", "beams"), (lidar, "cast_hits", "ray cast"),
                             (lidar, "_projected", "projection"), (sim, "pattern_stats", "stats + encode"),
                             (sim, "depth_to_uint16", "stats + encode")]:
        setattr(mod, name, clock.wrap(label, getattr(mod, name)))
    cfg = BuildConfig(height=h, width=w)
    profile = load_profile(cfg.sensor)
    teacher = Teacher(None)
    cache = ArrayCache(work / "cache")
    stores = {}
    for comp in profiles:  # one store per compression profile, written alternately with the same arrays
        stores[comp] = st.DatasetStore.create(work / f"stages-{comp}.zarr", height=h, width=w,
                                              shard_size=len(images), config={}, teacher={}, sensor=cfg.sensor,
                                              code_version="bench", compression=comp)
        stores[comp].ensure_shards(2)
    size = teacher.input_size(h, w)
    for rep in ("warm-up", "measured"):
        clock.cpu.clear()
        arrays = _shard_buffers(len(images), h, w)
        rows = []
        for i, p in enumerate(images):
            data = clock.run("read", read_uri, str(p))
            digest = clock.run("hash", lambda d: hashlib.sha256(d).hexdigest(), data)
            # As the build's teacher stage: one decode to the canvas (the store's rgb), the teacher's input
            # resampled from it.
            canvas = clock.run("decode + fit canvas", load_fitted, data, name=str(p), canvas=(h, w))
            net_in = clock.run("teacher input from the canvas", resize_image, canvas, size)
            pred = teacher.predict(net_in[None], batch_size=1)[0]  # the teacher: not counted
            key = hashlib.sha256(f"{rep}|{digest}".encode()).hexdigest()  # a fresh entry per round
            clock.run("teacher cache put", lambda: cache.put("teacher", key, compact_teacher_output(pred, h, w)))
            arrays["rgb"][i] = canvas
            with cv2_threads(1):
                t_out = clock.run("teacher cache get + upsample",
                                  lambda: teacher_at_canvas(cache.get("teacher", key), h, w))
                t = time.process_time()
                res = sim.simulate_sample(None, t_out, teacher_kind=teacher.output_kind, config=cfg,
                                          profile=profile, seed=i)
                clock.cpu["simulate_sample (total)"] += time.process_time() - t
            for name, a in res.arrays.items():
                arrays[name][i] = a
            rows.append({"sample_id": f"s{i}", "source_uri": str(p), "content_hash": digest, "seed": i,
                         "status": "ok", **res.stats})
        shard = 0 if rep == "warm-up" else 1
        for comp in (profiles if rep == "warm-up" else [*profiles, *profiles[::-1]]):  # ABBA
            clock.run(f"store write [{comp}]", write_as_the_build, stores[comp], shard, arrays, rows)
    n = len(images)
    total_sim = clock.cpu.pop("simulate_sample (total)")
    inner = sum(v for k, v in clock.cpu.items() if k in ("depth policy", "mesh", "beams", "ray cast", "projection",
                                                          "stats + encode"))
    clock.cpu["drops, noise, other simulation"] = total_sim - inner
    for comp in profiles:  # each profile's shard was written twice
        clock.cpu[f"store write [{comp}]"] /= 2
    order = ["read", "hash", "decode + fit canvas", "teacher input from the canvas", "teacher cache put",
             "teacher cache get + upsample", "depth policy", "mesh", "beams", "ray cast",
             "drops, noise, other simulation", "projection", "stats + encode"]
    print(f"(a) CPU per sample outside the teacher, {n} distinct photos, {h}x{w} canvas, {cfg.sensor}, one process:")
    for k in order + [f"store write [{comp}]" for comp in profiles]:
        print(f"  {k:42s} {1000 * clock.cpu[k] / n:7.2f} ms")
    before_write = sum(clock.cpu[k] for k in order)
    print(f"  {'total without the store write':42s} {1000 * before_write / n:7.2f} ms/sample")
    for comp in profiles:
        total = before_write + clock.cpu[f"store write [{comp}]"]
        stored = sum(f.stat().st_size for name in st.ARRAYS
                     for f in (work / f"stages-{comp}.zarr" / name / "c" / "1").rglob("*") if f.is_file())
        print(f"  {'total, ' + comp + ' store':42s} {1000 * total / n:7.2f} ms/sample  (target <= 30); "
              f"store bytes {stored / n / 1024:.0f} KiB/sample")


# ------------------------------------------------------------------ (b) build vs teacher only
def teacher_only(uris: list[str], teacher: Path, h: int, w: int, batch: int) -> float:
    from model.teacher import Teacher
    from tasks.images import load_fitted
    from storage.root import read_uri

    t0 = time.perf_counter()
    model = Teacher(teacher)
    size = model.input_size(h, w)
    for i in range(0, len(uris), batch):
        chunk = [load_fitted(read_uri(u), name=u, canvas=(h, w), size=size) for u in uris[i:i + batch]]
        while len(chunk) < batch:
            chunk.append(chunk[-1])
        model.predict(np.stack(chunk), batch_size=batch)
    return time.perf_counter() - t0


def full_build(images_dir: str, teacher: Path, h: int, w: int, batch: int, shard: int, work: Path,
               compression: str) -> tuple[float, dict]:
    from flows.build import build_dataset
    from flows.cli import ephemeral_run_settings

    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    with ephemeral_run_settings():  # as `monolidar build` runs it (Prefect ephemeral mode, no flow heartbeats)
        summary = build_dataset(images=images_dir, out=str(work / "store.zarr"), teacher=str(teacher), height=h,
                                width=w, shard_size=shard, teacher_batch_size=batch, cache_dir=str(work / "cache"),
                                previews=0, compression=compression)
    elapsed = time.perf_counter() - t0
    assert summary["status"]["ok"] == summary["samples"], summary
    return elapsed, summary


def ratio(short_side: int, n: int, args: argparse.Namespace, tmp: Path) -> None:
    teacher = export_teacher(tmp / f"dav2s_{short_side}.onnx", short_side)
    img_dir = tmp / f"images_{n}"
    img_dir.mkdir(exist_ok=True)
    for p in write_images(tmp / "synth", n, seed=1):
        if not (img_dir / p.name).exists():
            os.symlink(p, img_dir / p.name)
    from tasks.planning import discover_inputs

    uris = [i.uri for i in discover_inputs(str(img_dir))]
    profiles = list(args.compression)
    # Warm-up (Prefect's ephemeral server, the simulation pool, Numba, ORT graph optimisation): not measured.
    full_build(str(img_dir), teacher, args.height, args.width, args.batch, args.shard_size, tmp / "warm", profiles[0])
    t_teacher: list[float] = []
    t_build: dict[str, list[float]] = {c: [] for c in profiles}
    summ: dict[str, dict] = {}
    for r in range(args.rounds):
        # ABBA: teacher, each profile's build, then the same in reverse (the box's drift cancels out)
        half = ["teacher", *profiles]
        for what in (half + half[::-1]) if r % 2 == 0 else (half[::-1] + half):
            if what == "teacher":
                t_teacher.append(teacher_only(uris, teacher, args.height, args.width, args.batch))
            else:
                t, summ[what] = full_build(str(img_dir), teacher, args.height, args.width, args.batch,
                                           args.shard_size, tmp / "run", what)
                t_build[what].append(t)
    tt = statistics.median(t_teacher)
    print(f"(b) short side {short_side}: {n} photos at {args.height}x{args.width}, teacher batch {args.batch}, "
          f"shards of {args.shard_size}, {len(t_teacher)} runs each (median)")
    print(f"  teacher only : {n / tt:6.3f} images/s  ({tt:.1f} s)  runs {[round(x, 1) for x in t_teacher]}")
    for comp in profiles:
        tb, sm = statistics.median(t_build[comp]), summ[comp]
        print(f"  build [{comp}]: {n / tb:6.3f} images/s  ({tb:.1f} s)  runs {[round(x, 1) for x in t_build[comp]]}")
        print(f"    shard-writer CPU {sm['write_cpu_ms_per_sample']:.1f} ms/sample; flow split: teacher load "
              f"{sm['seconds_teacher_load']} s, plan {sm['seconds_plan']} s, shards {sm['seconds_shards']} s, "
              f"finalize {sm['seconds_finalize']} s")
        print(f"    ratio build / teacher-only throughput: {tt / tb:.3f}  (target >= 0.90)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", action="store_true", help="(a) per-stage CPU breakdown instead of (b)")
    ap.add_argument("--images", type=int, default=48, help="distinct photos (bench/synth_images.py)")
    ap.add_argument("--images-518", type=int, default=8, help="photos for short side >= 518 (slow on a CPU)")
    ap.add_argument("--short-side", type=int, nargs="+", default=[126])
    ap.add_argument("--height", type=int, default=352)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=16, help="several shards, so teacher and writers overlap")
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds")
    ap.add_argument("--compression", nargs="+", choices=list(COMPRESSION), default=[DEFAULT_COMPRESSION],
                    help="store profiles, measured side by side (e.g. balanced fast)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        if args.stages:
            stage_breakdown(write_images(tmp / "synth", args.images, seed=1), args.height, args.width, tmp,
                            list(args.compression))
            return
        for side in args.short_side:
            ratio(side, args.images if side < 518 else args.images_518, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
