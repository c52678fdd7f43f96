"""DMD3C's ablation, small: what stage 1 (pre-training on photo-made LiDAR data) and the SSI term bring.

Data: the shared KITTI frames (/work/shared/data/kitti_gt) with sparse input made from the GT scan lines
(``storage.kitti.kitti_dc_from_gt_dir``); metrics only on GT pixels that were NOT given as input.
With two frames, stage 2 is a 2-fold cross-validation: fine-tune on one frame, evaluate on the other, and
the table averages the two held-out frames (no row is scored on a frame it was trained on).

Rows:
- IP-Basic (no learning);
- fine-tune only: stage 2 from random init (sparse GT + SSI);
- stage 1 only: pre-trained on a store built from /work/shared/data/natural, no KITTI training;
- stage 1 + 2 with SSI; stage 1 + 2 without SSI (lambda = 0).

Usage: python bench/ablation.py [--work DIR] [--teacher PATH.onnx] [--store STORE] [--stage1-steps N]
       [--stage2-steps N] [--crop H W] [--threads N]
Budget with the defaults: ~15 min on a shared 2-core CPU box. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import numpy as np  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
KITTI_K = np.array([[707.0493, 0, 604.0814], [0, 707.0493, 180.5066], [0, 0, 1]], dtype=np.float32)
KEYS = ("rmse_mm", "mae_mm", "irmse_1km", "imae_1km", "absrel", "delta1")


def make_kitti_dirs(work: Path, gt_root: Path, seed: int) -> dict[str, Path]:
    """One val_selection_cropped dir per frame (for the folds), sparse = GT scan lines."""
    from storage.kitti import kitti_dc_from_gt_dir

    dirs = {}
    for rgb in sorted((gt_root / "rgb").glob("*.png")):
        src = work / "frames" / rgb.stem
        for sub in ("rgb", "depth"):
            (src / sub).mkdir(parents=True, exist_ok=True)
            link = src / sub / rgb.name
            if not link.exists():
                link.symlink_to(gt_root / sub / rgb.name)
        out = work / "kitti" / rgb.stem
        if not out.exists():
            kitti_dc_from_gt_dir(src / "rgb", src / "depth", out, KITTI_K, crop=True, n_lines=64, seed=seed)
        dirs[rgb.stem] = out
    return dirs


def build_store(work: Path, teacher: str | None, seed: int) -> Path:
    from flows.cli import main

    store = work / "natural.zarr"
    if not (store / "manifest").is_dir():
        argv = ["build", "--images", str(SHARED / "natural"), "--out", str(store), "--samples-per-image", "2",
                "--shard-size", "4", "--seed", str(seed), "--quiet", "--previews", "0"]
        if teacher:
            argv += ["--teacher", teacher]
        rc = main(argv)
        if rc != 0:
            raise SystemExit(f"monolidar build failed with exit code {rc}")
    return store


def evaluate(kitti: Path, ckpt: Path | None) -> dict:
    from flows.train import evaluate_flow

    kw = dict(ckpt=str(ckpt)) if ckpt else dict(baseline="ipbasic")
    return evaluate_flow(kitti=str(kitti), exclude_input=True, compare_ipbasic=False, progress=False, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/monolidar-ablation"))
    ap.add_argument("--teacher", default=None, help="teacher .onnx (default: the embedded teacher)")
    ap.add_argument("--store", default=None, help="existing store for stage 1 (default: build one)")
    ap.add_argument("--stage1-steps", type=int, default=300)
    ap.add_argument("--stage2-steps", type=int, default=80)
    ap.add_argument("--crop", type=int, nargs=2, default=(128, 256))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ssi-weight", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of both stages")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core box, 2 threads oversubscribe and run ~8x slower)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="delete the work dir first")
    args = ap.parse_args()

    from flows.train import finetune_flow, pretrain_flow

    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    common = dict(batch_size=args.batch_size, crop_h=args.crop[0], crop_w=args.crop[1], threads=args.threads,
                  seed=args.seed, lr=args.lr, progress=False)
    frames = make_kitti_dirs(args.work, SHARED / "kitti_gt", args.seed)
    names = sorted(frames)
    folds = [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]  # (train, test)

    store = Path(args.store) if args.store else build_store(args.work, args.teacher, args.seed)
    t_store = time.perf_counter() - t0
    s1 = pretrain_flow(store=str(store), out=str(args.work / "stage1"), steps=args.stage1_steps,
                       warmup=min(50, args.stage1_steps // 10), ckpt_every=100, **common)
    stage1_ckpt = Path(s1["checkpoint"])
    t_s1 = time.perf_counter() - t0 - t_store

    rows: dict[str, list[dict]] = {k: [] for k in
                                   ("IP-Basic", "fine-tune only (SSI)", "stage 1 only",
                                    "stage 1 + 2 with SSI", "stage 1 + 2 without SSI")}
    stage2 = {"fine-tune only (SSI)": (None, args.ssi_weight),
              "stage 1 + 2 with SSI": (stage1_ckpt, args.ssi_weight),
              "stage 1 + 2 without SSI": (stage1_ckpt, 0.0)}
    for train, test in folds:
        rows["IP-Basic"].append(evaluate(frames[test], None))
        rows["stage 1 only"].append(evaluate(frames[test], stage1_ckpt))
        for label, (init, ssi) in stage2.items():
            tag = label.split(" (")[0].replace(" ", "_").replace("+", "p")
            out = args.work / f"stage2-{tag}-{train}"
            s2 = finetune_flow(kitti=str(frames[train]), out=str(out), init=str(init) if init else None,
                               teacher=args.teacher, ssi_weight=ssi, steps=args.stage2_steps,
                               warmup=min(20, args.stage2_steps // 10), ckpt_every=0,
                               teacher_cache=str(args.work / "teacher_cache"), **common)
            rows[label].append(evaluate(frames[test], Path(s2["checkpoint"])))
    total = time.perf_counter() - t0

    print(f"\nAblation on {len(names)} KITTI frames (2-fold: train on one, score the other; sparse input = "
          f"64 GT scan lines; metrics on GT pixels not in the input). Stage 1: {args.stage1_steps} steps on "
          f"{store.name}; stage 2: {args.stage2_steps} steps; crops {args.crop[0]}x{args.crop[1]}, "
          f"batch {args.batch_size}, SSI weight {args.ssi_weight}.\n")
    print("| method | RMSE mm | MAE mm | iRMSE 1/km | iMAE 1/km | AbsRel | δ<1.25 |")
    print("|---|---|---|---|---|---|---|")
    for label, per_fold in rows.items():
        vals = [float(np.mean([r[k] for r in per_fold])) for k in KEYS]
        print(f"| {label} | {vals[0]:.0f} | {vals[1]:.0f} | {vals[2]:.2f} | {vals[3]:.2f} | {vals[4]:.4f} | "
              f"{vals[5]:.4f} |")
    print(f"\nwall time {total:.0f} s (store {t_store:.0f} s, stage 1 {t_s1:.0f} s) on {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
