"""`monolidar train-teacher`: retrain the embedded default teacher on procedural renders."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-teacher",
        help="train the embedded monocular depth teacher on procedural scenes and export it as ONNX",
        description="Render seeded procedural street/indoor scenes (cached), train the small relative-depth "
                    "network with a scale-and-shift-invariant disparity loss, export ONNX (Depth Anything V2 I/O).",
    )
    p.add_argument("--out", type=Path, default=None,
                   help="ONNX file to write (default monolidar-teacher/monolidar_teacher_small.onnx; never the "
                        "shipped model unless --replace-shipped)")
    p.add_argument("--replace-shipped", action="store_true",
                   help="allow writing over the shipped model/weights/monolidar_teacher_small.onnx (changes its "
                        "sha256, so existing stores' caches no longer match)")
    p.add_argument("--scenes", type=int, default=1200, help="number of procedural scenes to render (default 1200)")
    p.add_argument("--epochs", type=float, default=14.0, help="passes over the scenes, in crops (default 14)")
    p.add_argument("--seed", type=int, default=0, help="global seed (scenes, initialisation, batches)")
    p.add_argument("--minutes", type=float, default=25.0,
                   help="training wall-time budget in minutes; 0 = no limit, deterministic (default 25)")
    p.add_argument("--short-side", type=int, default=196, help="network input short side, multiple of 14")
    p.add_argument("--cache-dir", type=Path, default=None, help="render cache (default ~/.cache/monolidar)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--init", type=Path, default=None,
                   help="warm start from a checkpoint (.pt) an earlier train-teacher run wrote to the cache, "
                        "or from an exported teacher (.onnx, e.g. the shipped model)")
    p.add_argument("--log-depth-weight", type=float, default=0.0,
                   help="weight of the evaluation-protocol term: |log depth ratio| after disparity-space "
                        "scale/shift alignment (default 0)")
    p.set_defaults(func=_run, runs_flows=True)


def _run(args: argparse.Namespace) -> int:
    if args.scenes < 1:
        raise ValueError(f"--scenes must be >= 1 (got {args.scenes})")
    if args.short_side % 14 or args.short_side < 28:
        raise ValueError(f"--short-side must be a multiple of 14 and >= 28 (got {args.short_side})")
    if args.init is not None and not args.init.is_file():
        raise FileNotFoundError(f"--init {args.init}: no such checkpoint")
    from flows.train_teacher import resolve_out, train_teacher

    resolve_out(args.out, args.replace_shipped)  # refuse before any rendering starts
    if args.init is not None and args.init.suffix != ".onnx":
        from model.checkpoint import load_teacher_checkpoint

        load_teacher_checkpoint(args.init)  # weights-only: a file that needs pickle is refused here
    summary = train_teacher(args.out, replace_shipped=args.replace_shipped, n_scenes=args.scenes, epochs=args.epochs, seed=args.seed,
                            minutes=args.minutes or None, short_side=args.short_side, threads=args.threads,
                            cache_dir=args.cache_dir, lr=args.lr, init_checkpoint=args.init,
                            log_depth_weight=args.log_depth_weight)
    print(json.dumps({k: summary[k] for k in ("path", "bytes", "monolidar.parameters", "monolidar.train_steps",
                                              "render_seconds", "total_seconds")}, indent=2))
    return 0
