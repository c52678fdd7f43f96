"""`monolidar teacher` (run a teacher over a folder) and `monolidar teacher-export` (DA-V2-S -> ONNX)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def parse_providers(text: str | None) -> list[str] | None:
    """"cuda,cpu" or full onnxruntime names, comma-separated, best first."""
    if not text:
        return None
    return [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in text.split(",") if p.strip()]


def list_images(folder: Path) -> list[Path]:
    from tasks.errors import InputError

    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def output_stems(files: list[Path]) -> list[str]:
    """File stems, made unique (a.jpg and a.png -> a, a_png) so no output overwrites another."""
    seen: set[str] = set()
    stems = []
    for p in files:
        stem = p.stem if p.stem not in seen else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        seen.add(stem)
        stems.append(stem)
    return stems


def preview(raw, kind: str):
    """Coloured preview of a raw teacher map: near = bright for disparity and for metric depth."""
    import numpy as np

    from tasks.images import colorize

    if kind == "metric":
        with np.errstate(divide="ignore"):
            return colorize(np.where(raw > 0, 1.0 / raw, np.nan))
    return colorize(raw)


def run_teacher(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from model.teacher import Teacher
    from tasks.errors import InputError
    from tasks.images import load_image

    files = list_images(Path(args.images))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(args.teacher, output_kind=args.kind, short_side=args.short_side,
                      providers=parse_providers(args.providers), threads=args.threads)
    print(f"teacher {teacher.path} (sha256 {teacher.sha256[:12]}, {teacher.output_kind}, short side "
          f"{teacher.short_side}, {','.join(teacher.providers)})", flush=True)

    stems = output_stems(files)
    failures: list[str] = []
    done = 0
    start = time.perf_counter()
    pending: list[tuple[str, str, np.ndarray]] = []  # (file name, stem, image) of one size

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        raw = teacher.predict([im for _, _, im in pending], batch_size=args.batch_size)
        for (name, stem, im), depth in zip(pending, raw):
            np.save(out_dir / f"{stem}.npy", depth.astype(np.float32))
            Image.fromarray(preview(depth, teacher.output_kind)).save(out_dir / f"{stem}.png")
            done += 1
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"[{done + len(failures)}/{len(files)}] {name} {im.shape[0]}x{im.shape[1]} -> {stem}.npy, "
                  f"{stem}.png ({rate:.2f} img/s)", flush=True)
        pending.clear()

    for path, stem in zip(files, stems):
        try:
            image = load_image(path)
        except InputError as exc:
            failures.append(str(exc))
            print(f"skipped: {exc}", file=sys.stderr, flush=True)
            continue
        if pending and (pending[0][2].shape != image.shape or len(pending) >= args.batch_size):
            flush()
        pending.append((path.name, stem, image))
    flush()

    print(f"wrote {done} depth maps to {out_dir} in {time.perf_counter() - start:.1f} s", flush=True)
    if failures:
        print(f"monolidar teacher: {len(failures)} of {len(files)} images skipped (see above)", file=sys.stderr)
        return 1
    return 0


def run_export(args: argparse.Namespace) -> int:
    import torch

    from model.dav2 import DepthAnythingV2Small, count_parameters, export_onnx, load_official_state_dict

    size = int(args.size)
    if size % 14 or size <= 0:
        raise ValueError(f"--size {size} must be a positive multiple of 14")
    torch.manual_seed(0)  # random init is reproducible too
    model = DepthAnythingV2Small()
    if args.checkpoint:
        load_official_state_dict(model, args.checkpoint)
        print(f"loaded checkpoint {args.checkpoint}", flush=True)
    else:
        print("no --checkpoint: exporting a RANDOMLY INITIALISED DA-V2-Small-shaped network "
              "(untrained; its output is not a depth estimate)", flush=True)
    print(f"exporting {count_parameters(model) / 1e6:.1f} M parameters at {size}x{size} "
          f"({'fp16' if args.fp16 else 'fp32'}, dynamic batch/H/W) ...", flush=True)
    t0 = time.perf_counter()
    report = export_onnx(model, args.out, height=size, width=size, dynamic=True, fp16=args.fp16,
                         metadata={"monolidar.source": args.checkpoint or "random-init"})
    mb = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({mb:.1f} MB) in {time.perf_counter() - t0:.1f} s; onnxruntime vs torch max abs "
          f"diff {report['max_abs_diff']:.2e} (output max {report['ref_max']:.3g})", flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("teacher", help="run an ONNX depth teacher over a folder of images",
                              description="Writes <stem>.npy (raw output, float32 HxW) and <stem>.png (preview).")
    p.add_argument("--images", required=True, help="folder of images (jpg/png/...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--teacher", default=None, help="ONNX model (default: the embedded teacher)")
    p.add_argument("--kind", choices=("disparity", "metric"), default=None,
                   help="output kind (default: from the model's metadata, else disparity)")
    p.add_argument("--short-side", type=int, default=None, help="network input short side (multiple of 14)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--providers", default=None, help="comma-separated, best first: tensorrt,cuda,cpu or full names")
    p.set_defaults(func=run_teacher)

    e = subparsers.add_parser("teacher-export", help="export the DA-V2-Small-shaped network to ONNX",
                              description="Random init unless --checkpoint depth_anything_v2_vits.pth is given.")
    e.add_argument("--out", required=True, help="output .onnx path")
    e.add_argument("--checkpoint", default=None, help="official depth_anything_v2_vits.pth state dict")
    e.add_argument("--size", type=int, default=518, help="export/verification size (multiple of 14)")
    e.add_argument("--fp16", action="store_true", help="export half-precision weights and input")
    e.set_defaults(func=run_export)
