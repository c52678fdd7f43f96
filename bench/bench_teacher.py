"""Teacher throughput: the DA-V2-Small-shaped network through onnxruntime vs torch eager, side by side.

Both engines run the same weights on the same normalised input, interleaved (torch, ort, ort, torch, ...)
so machine load affects both alike; images/s per engine and the ORT/torch ratio are printed per batch
size. Example (CPU box):  python bench/bench_teacher.py --threads 2
GPU box:                  python bench/bench_teacher.py --providers cuda,cpu --fp16
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.cli_teacher import parse_providers  # noqa: E402
from model.dav2 import DepthAnythingV2Small, count_parameters, export_onnx, load_official_state_dict  # noqa: E402
from model.teacher import choose_providers  # noqa: E402


def make_session(path: Path, providers: list[str], threads: int, level: str, spin: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin:  # as model.teacher.Teacher does
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=518)
    ap.add_argument("--width", type=int, default=686)
    ap.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per engine and batch size")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--providers", default=None, help="onnxruntime providers, e.g. cuda,cpu (default: best available)")
    ap.add_argument("--level", choices=("all", "extended", "basic"), default="all", help="ORT graph optimisation")
    ap.add_argument("--spin", action="store_true", help="let idle ORT threads spin (Teacher does not)")
    ap.add_argument("--opset", type=int, default=23, help="ONNX opset (23 exports attention as one op)")
    ap.add_argument("--fp16", action="store_true", help="fp16 ONNX (and fp16 torch on CUDA)")
    ap.add_argument("--onnx", default=None, help="reuse an exported model instead of exporting one")
    ap.add_argument("--checkpoint", default=None, help="official depth_anything_v2_vits.pth (default: random init)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net = DepthAnythingV2Small().eval()
    if args.checkpoint:
        load_official_state_dict(net, args.checkpoint)
    providers = choose_providers(parse_providers(args.providers))
    use_cuda = providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(args.onnx) if args.onnx else Path(tmp) / "dav2s.onnx"
        if not args.onnx:
            t0 = time.perf_counter()
            export_onnx(net, onnx_path, height=args.height, width=args.width, fp16=args.fp16, opset=args.opset)
            print(f"exported {onnx_path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        session = make_session(onnx_path, providers, args.threads, args.level, args.spin)
        in_type = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
        tnet = net.to(device)
        if args.fp16 and use_cuda:
            tnet = tnet.half()
        print(f"DA-V2-Small-shaped net: {count_parameters(net) / 1e6:.1f} M params, input {args.height}x{args.width}, "
              f"threads {args.threads}, ORT level {args.level}, opset {args.opset}, spin {args.spin}, "
              f"providers {session.get_providers()}, torch {torch.__version__} on {device}", flush=True)

        rng = np.random.default_rng(0)
        batches = [int(b) for b in args.batches.split(",")]

        def run_torch(x: np.ndarray) -> float:
            xt = torch.from_numpy(x).to(device)
            if args.fp16 and use_cuda:
                xt = xt.half()
            t0 = time.perf_counter()
            with torch.inference_mode():
                tnet(xt)
            if use_cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        def run_ort(x: np.ndarray) -> float:
            feed = {"pixel_values": x.astype(in_type)}
            t0 = time.perf_counter()
            session.run(["predicted_depth"], feed)
            return time.perf_counter() - t0

        # Warm-up: first-run allocations, kernel selection, lazy init.
        warm = rng.standard_normal((1, 3, args.height, args.width)).astype(np.float32)
        run_torch(warm)
        run_ort(warm)

        rows = []
        for b in batches:
            x = rng.standard_normal((b, 3, args.height, args.width)).astype(np.float32)
            times = {"torch": [], "ort": []}
            for rep in range(args.reps):
                order = ("torch", "ort") if rep % 2 == 0 else ("ort", "torch")
                for engine in order:
                    times[engine].append((run_torch if engine == "torch" else run_ort)(x))
            t_torch, t_ort = statistics.median(times["torch"]), statistics.median(times["ort"])
            rows.append((b, b / t_torch, b / t_ort, t_torch / t_ort))
            print(f"batch {b}: torch {b / t_torch:.3f} img/s, onnxruntime {b / t_ort:.3f} img/s, "
                  f"ratio {t_torch / t_ort:.2f}x", flush=True)

    print("\nbatch  torch img/s  ort img/s  ort/torch")
    for b, it, io, r in rows:
        print(f"{b:5d}  {it:11.3f}  {io:9.3f}  {r:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
