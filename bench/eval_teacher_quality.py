"""Quality of a relative-depth teacher next to the trivial ground-plane guess (the model card's numbers).

Per image: least-squares scale and shift IN DISPARITY space onto 1/GT over the valid GT pixels, then AbsRel
and delta<1.25 compared in DEPTH (aligned disparity clamped at 1/max_depth); the table shows means over
images. Data: held-out procedural renders (seeds never used in training, full camera resolution, sky
excluded), /work/shared/data/kitti_gt (uint16 PNG, m x 256) and /work/shared/data/nyu (uint16 PNG, mm).

    python bench/eval_teacher_quality.py [--teacher PATH [PATH ...]] [--renders 24] [--seed 0]
                                         [--kitti-predictions DIR]

Several ``--teacher`` files are scored on the same frames in one run (one table row per teacher and set).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.evaluation import aligned_depth_metrics, ground_plane_disparity  # noqa: E402
from tasks.provenance import derive_seed  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def kitti_frames(root: Path):
    for rgb_path in sorted((root / "rgb").glob("*.png")):
        depth = np.asarray(Image.open(root / "depth" / rgb_path.name), np.float64) / 256.0
        yield rgb_path.name, np.asarray(Image.open(rgb_path).convert("RGB")), depth


def nyu_frames(root: Path):
    for rgb_path in sorted((root / "rgb").glob("*.jpg")):
        name = rgb_path.stem.replace("rgb_", "sync_depth_") + ".png"
        depth = np.asarray(Image.open(root / "depth" / name), np.float64) / 1000.0
        yield rgb_path.name, np.asarray(Image.open(rgb_path).convert("RGB")), depth


def render_frames(n: int, seed: int, kind: str):
    from tasks.scenes import generate_scene, render

    for i in range(n):
        scene_seed = derive_seed(seed, "teacher-heldout", kind, i)  # training uses "teacher-scene"
        rgb, depth = render(generate_scene(scene_seed, kind))
        yield f"{kind}-{i}", rgb, depth.astype(np.float64)


def evaluate(teacher, frames, max_depth: float, predictions: Path | None = None) -> dict[str, float]:
    """Mean metrics over ``frames``; with ``predictions`` (the folder `monolidar teacher --out` wrote) the
    saved raw outputs <stem>.npy are scored instead of running ``teacher``."""
    rows = {"teacher": [], "ground": []}
    for name, rgb, depth in frames:
        if predictions is not None:
            pred = np.load(predictions / (Path(name).stem + ".npy"))
        else:
            pred = teacher.predict(rgb[None])[0]
        gt = np.where(depth <= max_depth, depth, 0.0)
        rows["teacher"].append(aligned_depth_metrics(pred, gt, max_depth=max_depth))
        rows["ground"].append(aligned_depth_metrics(ground_plane_disparity(*depth.shape), gt, max_depth=max_depth))
    out = {"n": len(rows["teacher"])}
    for who, ms in rows.items():
        out[f"{who}_abs_rel"] = float(np.mean([m["abs_rel"] for m in ms]))
        out[f"{who}_delta1"] = float(np.mean([m["delta1"] for m in ms]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, nargs="+", default=[None],
                        help="ONNX teacher(s) (default: the shipped one)")
    parser.add_argument("--renders", type=int, default=24, help="held-out renders per scene kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kitti-predictions", type=Path, default=None,
                        help="score the .npy files `monolidar teacher --images .../kitti_gt/rgb --out DIR` wrote")
    args = parser.parse_args(argv)

    from model.teacher import Teacher

    teachers = [Teacher(path, threads=args.threads) for path in args.teacher]
    for i, teacher in enumerate(teachers):
        print(f"teacher #{i}: {teacher.path} (short side {teacher.short_side}, "
              f"{teacher.path.stat().st_size / 1e6:.1f} MB)")
    sets = [
        ("held-out street renders", lambda: render_frames(args.renders, args.seed, "street"), 80.0),
        ("held-out indoor renders", lambda: render_frames(args.renders, args.seed, "indoor"), 80.0),
        ("KITTI kitti_gt (GT <= 80 m)", lambda: kitti_frames(SHARED / "kitti_gt"), 80.0),
        ("NYU-v2 nyu (GT <= 10 m)", lambda: nyu_frames(SHARED / "nyu"), 10.0),
    ]
    if args.kitti_predictions is not None:
        sets = [("KITTI via `monolidar teacher`", lambda: kitti_frames(SHARED / "kitti_gt"), 80.0)]
    header = f"{'data':30s} {'#':>2s} {'n':>3s} | {'teacher AbsRel':>14s} {'teacher d1':>10s} | {'ground AbsRel':>13s} " \
             f"{'ground d1':>9s} | {'AbsRel ratio':>12s}"
    print(header)
    print("-" * len(header))
    for name, frames, max_depth in sets:
        if "renders" not in name and not SHARED.is_dir():
            print(f"{name:30s} skipped: {SHARED} not found")
            continue
        cached = list(frames())  # the same frames for every teacher
        for i, teacher in enumerate(teachers):
            start = time.perf_counter()
            r = evaluate(teacher, cached, max_depth, args.kitti_predictions if "via" in name else None)
            ratio = r["teacher_abs_rel"] / r["ground_abs_rel"]
            print(f"{name:30s} {i:2d} {r['n']:3d} | {r['teacher_abs_rel']:14.3f} {r['teacher_delta1']:10.3f} | "
                  f"{r['ground_abs_rel']:13.3f} {r['ground_delta1']:9.3f} | {ratio:12.2f}  "
                  f"({time.perf_counter() - start:.1f}s)", flush=True)
    print("AbsRel ratio = teacher / ground-plane guess (< 1: the teacher is better); "
          "alignment: per-image LS scale+shift in disparity space, metrics in depth.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
