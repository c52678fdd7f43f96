"""CLI for the training flows: `monolidar pretrain | finetune | evaluate | export-onnx`.

Inputs are validated here (cheaply, before Prefect starts) so that bad input gives a one-line error
and exit 2 without a flow-run traceback; the flows run in Prefect's ephemeral mode (no server needed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_training_args(p: argparse.ArgumentParser, *, steps: int, lr: float, warmup: int) -> None:
    p.add_argument("--out", required=True, help="run directory (checkpoints last.pt / final.pt, train_log.jsonl)")
    p.add_argument("--model", default="msdc_small", help="architecture (msdc_small | msdc_base)")
    p.add_argument("--steps", type=int, default=steps, help=f"optimiser steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, nargs=2, default=(256, 512), metavar=("H", "W"), help="random crop size")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--ckpt-every", type=int, default=200, help="checkpoint every N steps (0 = at the end)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if out/last.pt exists")
    p.add_argument("--stop-at", type=int, default=None, help="stop after this step (resumable later)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _common_train_kwargs(args: argparse.Namespace) -> dict:
    return dict(out=str(args.out), model=args.model, steps=args.steps, batch_size=args.batch_size,
                crop_h=args.crop[0], crop_w=args.crop[1], lr=args.lr, weight_decay=args.weight_decay,
                warmup=args.warmup, seed=args.seed, ema_decay=args.ema_decay, ckpt_every=args.ckpt_every,
                resume=args.resume, stop_at=args.stop_at, threads=args.threads, progress=args.progress)


def _check_model(name: str) -> None:
    from model.completion import list_models

    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def _print_summary(summary: dict) -> None:
    print(f"step {summary['step']} ({'finished' if summary['finished'] else 'stopped'}) -> {summary['checkpoint']}")


def _pretrain(args: argparse.Namespace) -> int:
    from storage.store import DatasetStore

    _check_model(args.model)
    for store in args.store:
        DatasetStore.open(store)  # StoreError naming the path if it is not a store
    from flows.train import pretrain_flow

    stores = [str(s) for s in args.store]
    _print_summary(pretrain_flow(store=stores[0] if len(stores) == 1 else stores, **_common_train_kwargs(args)))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from flows.train import kitti_items
    from model.checkpoint import load_checkpoint

    _check_model(args.model)
    kitti_items(args.kitti)
    if args.init:
        load_checkpoint(args.init)
    if args.ssi_weight > 0:
        from model.teacher import Teacher

        Teacher(args.teacher, probe=True)  # TeacherError naming the file before any training starts
    from flows.train import finetune_flow

    summary = finetune_flow(kitti=str(args.kitti), init=args.init, teacher=args.teacher, ssi_weight=args.ssi_weight,
                            grad_weight=args.grad_weight, ssi_variant=args.ssi_variant, ssi_crops=args.ssi_crops,
                            loss=args.loss, teacher_cache=args.teacher_cache,
                            **_common_train_kwargs(args))
    _print_summary(summary)
    return 0


def format_metrics_table(report: dict) -> str:
    """Markdown table of the evaluated method (+ the IP-Basic comparison row when present)."""
    keys = ("rmse_mm", "mae_mm", "irmse_1km", "imae_1km", "absrel", "delta1")
    rows = [(report["method"], report)]
    if "ipbasic" in report:
        rows.append(("ipbasic", report["ipbasic"]))
    lines = ["| method | " + " | ".join(keys) + " | images |", "|---" * (len(keys) + 2) + "|"]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + f" | {r['n_images']} |")
    return "\n".join(lines)


def _evaluate(args: argparse.Namespace) -> int:
    from flows.train import kitti_items
    from model.checkpoint import load_checkpoint

    kitti_items(args.kitti)
    if args.ckpt:
        load_checkpoint(args.ckpt)
    from flows.train import evaluate_flow

    report = evaluate_flow(kitti=str(args.kitti), ckpt=args.ckpt, baseline=args.baseline,
                           out=str(args.out) if args.out else None, exclude_input=args.exclude_input,
                           use_ema=args.use_ema, compare_ipbasic=not args.no_ipbasic, threads=args.threads,
                           progress=not args.json)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(format_metrics_table(report))
    return 0


def _export(args: argparse.Namespace) -> int:
    from model.export import export_onnx

    info = export_onnx(args.ckpt, args.out, use_ema=args.use_ema)
    print(f"wrote {info['path']} (onnxruntime vs torch max |diff| {info['max_abs_diff_m']:.2e} m)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="stage 1: train depth completion on a monolidar store")
    p.add_argument("--store", required=True, type=Path, nargs="+",
                   help="store(s) made by `monolidar build` (several are trained on as one)")
    _add_training_args(p, steps=2000, lr=1e-3, warmup=100)
    p.set_defaults(func=_pretrain, runs_flows=True)

    p = subparsers.add_parser("finetune", help="stage 2: fine-tune on KITTI-format data (sparse GT + SSI)")
    p.add_argument("--kitti", required=True, type=Path, help="KITTI depth-completion dir (either layout)")
    p.add_argument("--init", default=None, help="stage-1 checkpoint to start from")
    p.add_argument("--teacher", default=None, help="teacher .onnx for the SSI term (default: embedded teacher)")
    p.add_argument("--ssi-weight", type=float, default=0.1, help="lambda of the SSI term (0 = off)")
    p.add_argument("--grad-weight", type=float, default=0.0, help="SSI gradient-matching weight (lsq variant)")
    p.add_argument("--ssi-variant", choices=("lsq", "median_mad"), default="lsq",
                   help="SSI alignment: closed-form least-squares scale+shift per image (lsq), or DMD3C's "
                        "median/MAD normalisation in random crops (median_mad)")
    p.add_argument("--ssi-crops", type=int, default=4, help="random crops per image for median_mad (default 4)")
    p.add_argument("--loss", choices=("l1", "l2"), default="l1", help="supervised loss on sparse GT")
    p.add_argument("--teacher-cache", default=None,
                   help="teacher output cache (the build's Zarr ArrayCache; default .monolidar-cache beside OUT)")
    _add_training_args(p, steps=1000, lr=5e-4, warmup=50)
    p.set_defaults(func=_finetune, runs_flows=True)

    p = subparsers.add_parser("evaluate", help="KITTI-devkit metrics of a checkpoint or baseline")
    p.add_argument("--kitti", required=True, type=Path, help="KITTI depth-completion dir with ground truth")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ckpt", default=None, help="completion checkpoint")
    g.add_argument("--baseline", choices=("ipbasic",), default=None, help="classical baseline instead")
    p.add_argument("--out", default=None, type=Path, help="write predictions (uint16 PNG) + metrics.json here")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--exclude-input", action="store_true", help="score only GT pixels not given as input")
    p.add_argument("--raw-weights", dest="use_ema", action="store_false", help="use raw instead of EMA weights")
    p.add_argument("--no-ipbasic", action="store_true", help="skip the IP-Basic comparison row")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_evaluate, runs_flows=True)

    p = subparsers.add_parser("export-onnx", help="export a completion checkpoint to ONNX (+ ORT check)")
    p.add_argument("--ckpt", required=True, help="completion checkpoint")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--raw-weights", dest="use_ema", action="store_false", help="export raw instead of EMA weights")
    p.set_defaults(func=_export)
