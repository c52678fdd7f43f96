"""End-to-end build throughput vs teacher-only throughput on the same images, measured side by side.

The teacher is the DA-V2-Small-shaped network (random weights: the cost is what matters) exported to ONNX.
"teacher only" = load the ONNX session + decode/fit the images + run the teacher on them in batches;
"build" = the whole ``build-dataset`` flow (Prefect ephemeral mode, thread runner): decode/validate,
teacher, depth policy, mesh, HDL-64E ray cast, projection, Zarr shard + manifest writes, finalize.
Runs alternate (teacher, build, build, teacher, ...) with fresh caches so load hits both alike.
Target: build / teacher-only >= 0.90 (simulation and I/O hide behind the teacher).

    python bench/bench_build.py                     # 8 demo images, short side 518, 352x1216 canvas
    python bench/bench_build.py --short-side 266 --images 4
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from flows.build import DEMO_IMAGES, build_dataset  # noqa: E402
from flows.cli_build import make_task_runner  # noqa: E402
from tasks.images import fit_to_canvas, load_image  # noqa: E402
from tasks.planning import discover_inputs, read_bytes  # noqa: E402


def export_teacher(path: Path, short_side: int) -> Path:
    import torch

    from model.dav2 import DepthAnythingV2Small, count_parameters, export_onnx

    torch.manual_seed(0)
    net = DepthAnythingV2Small()
    info = export_onnx(net, path, height=short_side, width=short_side)
    print(f"teacher: DA-V2-Small-shaped, {count_parameters(net) / 1e6:.1f} M parameters, "
          f"short side {short_side}, ORT vs torch max |diff| {info['max_abs_diff']:.2e}")
    return path


def teacher_only(images: list[str], teacher: Path, h: int, w: int, batch: int) -> float:
    from model.teacher import Teacher

    t0 = time.perf_counter()
    model = Teacher(teacher)
    canvases = [fit_to_canvas(load_image(read_bytes(u), name=u), h, w)[0] for u in images]
    for i in range(0, len(canvases), batch):
        model.predict(np.stack(canvases[i:i + batch]), batch_size=batch)
    return time.perf_counter() - t0


def full_build(images_dir: str, teacher: Path, h: int, w: int, batch: int, workers: int, work: Path) -> float:
    out, cache = work / "store.zarr", work / "cache"
    shutil.rmtree(work, ignore_errors=True)
    flow = build_dataset.with_options(task_runner=make_task_runner("thread", workers))
    t0 = time.perf_counter()
    summary = flow(images=images_dir, out=str(out), teacher=str(teacher), height=h, width=w, shard_size=batch,
                   teacher_batch_size=batch, cache_dir=str(cache), previews=0)
    elapsed = time.perf_counter() - t0
    assert summary["status"]["ok"] == summary["samples"], summary
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="how many demo images")
    ap.add_argument("--short-side", type=int, default=518)
    ap.add_argument("--height", type=int, default=352)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        teacher = export_teacher(tmp / "dav2s.onnx", args.short_side)
        src = discover_inputs(str(DEMO_IMAGES))[: args.images]
        img_dir = tmp / "images"
        img_dir.mkdir()
        for item in src:
            shutil.copy(item.uri, img_dir / Path(item.key).name)
        uris = [i.uri for i in discover_inputs(str(img_dir))]
        n = len(uris)
        # Warm-up (numba JIT of the ray caster, ORT graph optimisation) is not measured.
        full_build(str(img_dir), teacher, args.height, args.width, args.batch, args.workers, tmp / "warm")
        t_teacher, t_build = [], []
        for r in range(args.rounds):
            order = ("teacher", "build", "build", "teacher") if r % 2 == 0 else ("build", "teacher", "teacher", "build")
            for what in order[:2] if args.rounds == 1 else order:
                if what == "teacher":
                    t_teacher.append(teacher_only(uris, teacher, args.height, args.width, args.batch))
                else:
                    t_build.append(full_build(str(img_dir), teacher, args.height, args.width, args.batch,
                                              args.workers, tmp / "run"))
        tt, tb = statistics.median(t_teacher), statistics.median(t_build)
        print(f"{n} images at {args.height}x{args.width}, teacher batch {args.batch}, {args.workers} shard workers, "
              f"{len(t_teacher)} runs each (median)")
        print(f"  teacher only : {n / tt:6.3f} images/s  ({tt:.1f} s)  runs {[round(x, 1) for x in t_teacher]}")
        print(f"  full build   : {n / tb:6.3f} images/s  ({tb:.1f} s)  runs {[round(x, 1) for x in t_build]}")
        print(f"  ratio build / teacher-only throughput: {tt / tb:.3f}  (target >= 0.90)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
