"""DMD3C's ablation at a size a 2-core CPU box affords, with seeds: what stage 1 (pre-training on photo-made
LiDAR data) and the SSI term bring, and the zero-shot protocol with a realistic sparse pattern.

Data: the two shared KITTI frames (/work/shared/data/kitti_gt), cut to KITTI's 352x1216 benchmark crop.
Sparse input is sampled from the ground truth (``model.sparse_protocols``) with the HDL-64E pattern (the
profile's beams cast from its mount pose through the GT, with its drops) or the older 64-row pattern.
Scores count only GT pixels NOT given as input. Stage 2 trains on the LEFT half (columns 0-607) of both
frames and every row of the ablation is scored on the RIGHT half (608-1215), so nothing is scored on pixels
it was trained on. Zero-shot rows (no KITTI training) are also scored on the full frames.

Rows: IP-Basic; fine-tune only (stage 2 from random init, SSI); stage 1 only; stage 1 + 2 with SSI
(closed-form least squares, "lsq"); stage 1 + 2 with DMD3C's SSI variant (median/MAD in random crops);
stage 1 + 2 without SSI. Stage-2 rows run with several seeds (mean ± std); stage 1 is one run (its seed
is fixed: a second 30-minute run per seed does not fit this box).

Subcommands (each resumable; results are JSON files under WORK/results):
  prepare                         KITTI dirs for both patterns (full / train-left / test-right)
  zeroshot --ckpt C [--tag T]     score a checkpoint (or IP-Basic with --ckpt ipbasic) zero-shot
  stage2 --row R.. --seed S.. [...]  stage-2 runs + scores (R: finetune_only, s12_lsq, s12_mad, s12_nossi)
  table                           print the markdown tables from the results
Usage: python bench/ablation.py --work DIR SUBCOMMAND ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import numpy as np  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
KITTI_K = np.array([[707.0493, 0, 604.0814], [0, 707.0493, 180.5066], [0, 0, 1]], dtype=np.float32)
KEYS = ("rmse_mm", "mae_mm", "irmse_1km", "imae_1km", "absrel", "delta1")
PATTERNS = ("hdl64e", "lines")
SPLIT_COL = 608
ROWS = {  # stage-2 rows: (init from stage 1?, ssi weight factor, ssi variant)
    "finetune_only": (False, 1.0, "lsq"),
    "s12_lsq": (True, 1.0, "lsq"),
    "s12_mad": (True, 1.0, "median_mad"),
    "s12_nossi": (True, 0.0, "lsq"),
}
LABELS = {"ipbasic": "IP-Basic", "finetune_only": "fine-tune only (SSI lsq)", "stage1": "stage 1 only",
          "s12_lsq": "stage 1 + 2, SSI least squares", "s12_mad": "stage 1 + 2, SSI median/MAD (DMD3C)",
          "s12_nossi": "stage 1 + 2, no SSI"}
# Published figures on OTHER data (KITTI val / test, real scans): anchors for scale, not comparable rows.
ANCHORS = [("DMD3C stage 1 only, zero-shot, KITTI val", 1425, 372),
           ("OMNI-DC zero-shot, KITTI 64-line", 1191, 270),
           ("IP-Basic, KITTI test set", 1288, 303)]


def prepare(work: Path, seed: int = 0) -> dict[str, Path]:
    """val_selection_cropped dirs per pattern: full frames, left halves (train), right halves (test)."""
    from model.sparse_protocols import sparse_from_gt
    from storage.kitti import crop_kitti, write_kitti_dc
    from storage.pngio import read_depth_png, read_rgb
    from tasks.provenance import derive_seed

    dirs = {}
    frames = []
    for rgb_path in sorted((SHARED / "kitti_gt" / "rgb").glob("*.png")):
        rgb, y0, x0 = crop_kitti(read_rgb(rgb_path), source=rgb_path)
        gt, _, _ = crop_kitti(read_depth_png(SHARED / "kitti_gt" / "depth" / rgb_path.name), source=rgb_path)
        K = KITTI_K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        frames.append((rgb_path.stem, rgb, gt, K))
    for pattern in PATTERNS:
        samples = {"full": [], "train": [], "test": []}
        for stem, rgb, gt, K in frames:
            sparse = sparse_from_gt(gt, K, pattern, seed=derive_seed(seed, "sparse", stem))
            samples["full"].append({"name": stem, "rgb": rgb, "sparse": sparse, "gt": gt, "K": K})
            for part, sl in (("train", slice(0, SPLIT_COL)), ("test", slice(SPLIT_COL, None))):
                k = K.copy()
                k[0, 2] -= sl.start or 0
                samples[part].append({"name": f"{stem}-{part}", "rgb": rgb[:, sl], "sparse": sparse[:, sl],
                                      "gt": gt[:, sl], "K": k})
        for part, rows in samples.items():
            out = work / "kitti" / f"{pattern}-{part}"
            if not out.exists():
                write_kitti_dc(out, rows)
            dirs[f"{pattern}-{part}"] = out
            density = float(np.mean([(r["sparse"] > 0).mean() for r in rows]))
            print(f"{out}: {len(rows)} frames, input density {density:.4f}")
    return dirs


def score(kitti: Path, ckpt: str) -> dict:
    from flows.train import evaluate_flow

    kw = dict(baseline="ipbasic") if ckpt == "ipbasic" else dict(ckpt=ckpt)
    r = evaluate_flow(kitti=str(kitti), exclude_input=True, compare_ipbasic=False, progress=False, **kw)
    return {k: r[k] for k in (*KEYS, "n_images", "n_pixels")}


def cmd_zeroshot(args) -> None:
    res = {}
    for pattern in PATTERNS:
        for part in ("full", "test"):
            res[f"{pattern}-{part}"] = score(args.work / "kitti" / f"{pattern}-{part}", args.ckpt)
    tag = args.tag or ("ipbasic" if args.ckpt == "ipbasic" else "stage1")
    _write(args.work, f"zeroshot-{tag}", {"ckpt": args.ckpt, "scores": res})


def cmd_stage2(args) -> None:
    """Every (row, seed) asked for, in one process (one Prefect server start), skipping finished ones."""
    for row in args.row:
        for seed in args.seed:
            if not (args.work / "results" / f"stage2-{row}-s{seed}.json").is_file():
                run_stage2(args, row, seed)


def run_stage2(args, row: str, seed: int) -> None:
    from flows.train import finetune_flow

    init, factor, variant = ROWS[row]
    if init and not args.stage1:
        raise SystemExit("--stage1 CKPT is needed for this row")
    out = args.work / "stage2" / f"{row}-s{seed}"
    s2 = finetune_flow(kitti=str(args.work / "kitti" / f"{args.pattern}-train"), out=str(out),
                       init=args.stage1 if init else None, ssi_weight=args.ssi_weight * factor, ssi_variant=variant,
                       steps=args.steps, warmup=max(1, args.steps // 10), batch_size=args.batch_size,
                       crop_h=args.crop[0], crop_w=args.crop[1], lr=args.lr, seed=seed, threads=args.threads,
                       ckpt_every=50, teacher_cache=str(args.work / ".monolidar-cache"), progress=False)
    curve = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    result = {"row": row, "seed": seed, "steps": args.steps, "seconds": s2["seconds"],
              "curve": [{"step": c["step"], "loss": c["window_loss"], **{k: c[k] for k in ("sup", "ssi") if k in c}}
                        for c in curve],
              "score": score(args.work / "kitti" / f"{args.pattern}-test", s2["checkpoint"]),
              "config": {"pattern": args.pattern, "ssi_weight": args.ssi_weight * factor, "ssi_variant": variant,
                         "crop": list(args.crop), "batch_size": args.batch_size, "lr": args.lr}}
    _write(args.work, f"stage2-{row}-s{seed}", result)


def _write(work: Path, name: str, obj: dict) -> None:
    path = work / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    print(f"wrote {path}")


def _fmt(vals: list[float], digits: int) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def cmd_table(args) -> None:
    res = {p.stem: json.loads(p.read_text()) for p in sorted((args.work / "results").glob("*.json"))}
    print(f"Ablation (scored on the right halves of the {2} KITTI frames, HDL-64E-pattern input from GT, "
          f"only pixels not given as input; mean ± std over seeds)\n")
    print("| method | seeds | RMSE mm | MAE mm | iRMSE 1/km | iMAE 1/km | AbsRel | δ<1.25 |")
    print("|---|---|---|---|---|---|---|---|")
    for tag in ("ipbasic", "stage1"):
        r = res.get(f"zeroshot-{tag}")
        if r:
            s = r["scores"]["hdl64e-test"]
            print(f"| {LABELS[tag]} | - | " + " | ".join(_fmt([s[k]], d) for k, d in zip(KEYS, (0, 0, 2, 2, 4, 4)))
                  + " |")
    for row in ROWS:
        runs = [v for k, v in res.items() if k.startswith(f"stage2-{row}-s")]
        if runs:
            print(f"| {LABELS[row]} | {len(runs)} | " + " | ".join(
                _fmt([r["score"][k] for r in runs], d) for k, d in zip(KEYS, (0, 0, 2, 2, 4, 4))) + " |")
    print("\nZero-shot on the full frames (no KITTI training), both sparse patterns:\n")
    print("| method | pattern | RMSE mm | MAE mm | AbsRel | δ<1.25 | input density |")
    print("|---|---|---|---|---|---|---|")
    for tag in ("ipbasic", "stage1"):
        r = res.get(f"zeroshot-{tag}")
        for pattern in PATTERNS if r else ():
            s = r["scores"][f"{pattern}-full"]
            print(f"| {LABELS[tag]} | {pattern} | {s['rmse_mm']:.0f} | {s['mae_mm']:.0f} | {s['absrel']:.4f} | "
                  f"{s['delta1']:.4f} | {_density(args.work, pattern):.4f} |")
    for name, rmse, mae in ANCHORS:
        print(f"| {name} (published, other data) | real scan | {rmse} | {mae} | - | - | - |")
    print("\nStage-2 learning curves (window-mean loss at steps, seed-mean):\n")
    for row in ROWS:
        runs = [v for k, v in res.items() if k.startswith(f"stage2-{row}-s")]
        if runs:
            steps = [c["step"] for c in runs[0]["curve"]]
            mean = np.mean([[c["loss"] for c in r["curve"]] for r in runs], axis=0)
            pick = sorted({0, len(steps) // 4, len(steps) // 2, 3 * len(steps) // 4, len(steps) - 1})
            print(f"- {LABELS[row]}: " + ", ".join(f"{steps[i]}: {mean[i]:.3f}" for i in pick))


def _density(work: Path, pattern: str) -> float:
    from storage.kitti import find_kitti_dc, load_kitti_item

    return float(np.mean([(load_kitti_item(i)["sparse"] > 0).mean()
                          for i in find_kitti_dc(work / "kitti" / f"{pattern}-full")]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/monolidar-ablation"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    z = sub.add_parser("zeroshot")
    z.add_argument("--ckpt", required=True, help="checkpoint, or 'ipbasic'")
    z.add_argument("--tag", default=None)
    s = sub.add_parser("stage2")
    s.add_argument("--row", choices=tuple(ROWS), nargs="+", required=True)
    s.add_argument("--seed", type=int, nargs="+", required=True)
    s.add_argument("--stage1", default=None, help="stage-1 checkpoint (rows that start from stage 1)")
    s.add_argument("--pattern", choices=PATTERNS, default="hdl64e")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--crop", type=int, nargs=2, default=(96, 192))
    s.add_argument("--batch-size", type=int, default=2)
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--ssi-weight", type=float, default=0.2)
    s.add_argument("--threads", type=int, default=1)
    sub.add_parser("table")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cmd == "prepare":
        prepare(args.work)
    elif args.cmd == "zeroshot":
        cmd_zeroshot(args)
    elif args.cmd == "stage2":
        cmd_stage2(args)
    else:
        cmd_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
