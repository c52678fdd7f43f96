"""The one ONNX exporter (completion networks and the embedded teacher) with one tolerance rule.

``export_checked`` traces a module with dynamic batch/height/width axes, writes metadata_props, checks the
graph, writes the file atomically, then runs onnxruntime at a *different* size than the trace and compares
with torch. The rule (``ort_mismatch``, also used by ``model.dav2.export_onnx``, whose ViT needs the dynamo
tracer): ``max |ort - torch| <= rtol * max(1, max |torch|)`` with rtol = 1e-3 for fp32 graphs and 5e-2
for fp16 ones — relative to the output's magnitude (metres for depth, arbitrary units for disparity),
absolute for outputs below 1. It catches a wrong graph (errors of order the output), not rounding.

Completion graph I/O: ``rgb`` float32 [B,3,H,W] in [0,1] and ``sparse`` float32 [B,1,H,W] metres (0 = no
return) -> ``depth`` float32 [B,1,H,W] metres. Teacher graph I/O (Depth Anything V2 convention):
``pixel_values`` [B,3,H,W] -> ``predicted_depth`` [B,H,W] relative disparity.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.errors import CheckpointError

ORT_RTOL = {"fp32": 1e-3, "fp16": 5e-2}


def ort_mismatch(got: np.ndarray, ref: np.ndarray, *, precision: str = "fp32") -> float | None:
    """The tolerance rule: None when ``got`` matches ``ref``, else the max |difference| (inf on a shape clash
    or a non-finite output)."""
    if got.shape != ref.shape:
        return float("inf")
    if not ref.size:
        return None
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    limit = ORT_RTOL[precision] * max(1.0, float(np.max(np.abs(ref))))
    return None if np.isfinite(diff) and diff <= limit else (diff if np.isfinite(diff) else float("inf"))


def export_checked(module: nn.Module, path: str | Path, *, inputs: dict[str, torch.Tensor],
                   check_inputs: dict[str, torch.Tensor], output_name: str, dynamic_axes: dict,
                   metadata: dict[str, str], opset: int = 18, producer: str = "monolidar") -> dict:
    """Export ``module`` (eval mode) to ``path`` and verify it (see the module docstring).

    Returns {"path", "bytes", "max_abs_diff", "check_shape"}; CheckpointError naming the file when
    onnxruntime and torch disagree beyond the rule (the file is removed then).
    """
    import onnx
    import onnxruntime as ort

    module = module.eval()
    path = Path(path)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs.values()), buf, input_names=list(inputs), output_names=[output_name],
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    del proto.metadata_props[:]
    for k, v in sorted(metadata.items()):
        proto.metadata_props.add(key=k, value=str(v))
    proto.producer_name = producer
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, path)

    with torch.no_grad():
        ref = module(*check_inputs.values()).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([output_name], {k: v.numpy() for k, v in check_inputs.items()})[0]
    bad = ort_mismatch(got, ref)
    if bad is not None:
        path.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: onnxruntime differs from torch by {bad:.3g} (shape {got.shape} vs "
                              f"{ref.shape}; allowed {ORT_RTOL['fp32']:g} x max(1, max|output|))")
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    return {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff, "check_shape": list(got.shape)}


# ----------------------------------------------------------------------------------- completion networks
def _completion_inputs(height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(1, 3, height, width, generator=g)
    keep = torch.rand(1, 1, height, width, generator=g) < 0.05
    sparse = torch.where(keep, 2.0 + 60.0 * torch.rand(1, 1, height, width, generator=g), torch.zeros(()))
    return {"rgb": rgb, "sparse": sparse}


def export_onnx(ckpt: str | Path, path: str | Path, *, height: int = 64, width: int = 128, use_ema: bool = True,
                opset: int = 18, check_height: int = 96, check_width: int = 160) -> dict:
    """Completion checkpoint -> ONNX (``export_checked``); metadata records the architecture and step."""
    from model.checkpoint import load_checkpoint, model_from_checkpoint

    info = load_checkpoint(ckpt)
    model = model_from_checkpoint(info, use_ema=use_ema)
    meta = {"monolidar.kind": "completion", "monolidar.model_name": info["model_name"],
            "monolidar.model_config": json.dumps(info["model_config"], sort_keys=True),
            "monolidar.step": str(info["step"]), "monolidar.weights": "ema" if use_ema and info.get("ema") else "raw"}
    axes = {"rgb": {0: "batch", 2: "height", 3: "width"}, "sparse": {0: "batch", 2: "height", 3: "width"},
            "depth": {0: "batch", 2: "height", 3: "width"}}
    res = export_checked(model, path, inputs=_completion_inputs(height, width),
                         check_inputs=_completion_inputs(check_height, check_width, seed=1), output_name="depth",
                         dynamic_axes=axes, metadata=meta, opset=opset, producer="monolidar.export-onnx")
    res["max_abs_diff_m"] = res["max_abs_diff"]
    return res


# ----------------------------------------------------------------------------------- embedded teacher
def export_teacher_onnx(model: nn.Module, out: str | Path, *, short_side: int, check_size: tuple[int, int] = (196, 266),
                        extra_metadata: dict[str, str] | None = None) -> dict:
    """Export the embedded teacher in the Depth Anything V2 convention (dynamic batch/height/width) with
    metadata ``monolidar.output_kind`` = "disparity" and ``monolidar.short_side``."""
    from model.conventions import count_parameters

    meta = {"monolidar.output_kind": "disparity", "monolidar.short_side": str(int(short_side)),
            "monolidar.model": type(model).__name__, "monolidar.parameters": str(count_parameters(model))}
    meta.update(extra_metadata or {})
    check = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 3, *check_size)).astype(np.float32))
    res = export_checked(model, out, inputs={"pixel_values": torch.zeros(1, 3, short_side, short_side)},
                         check_inputs={"pixel_values": check}, output_name="predicted_depth",
                         dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"},
                                       "predicted_depth": {0: "batch", 1: "height", 2: "width"}},
                         metadata=meta, opset=17, producer="monolidar.train-teacher")
    return {**res, "ort_vs_torch_rel_err": res["max_abs_diff"], **meta}


class GroundPlaneDisparity(nn.Module):
    """A stand-in depth teacher: disparity rising toward the image bottom like a ground plane, modulated by the
    image so outputs differ per input. Milliseconds per image, so tests and scale benches measure the build's
    own CPU path rather than a network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.ones_like(x[:, 0]).cumsum(1) / x.shape[2]  # 0..1 top -> bottom
        return 0.02 + torch.relu(rows - 0.45) * 2.0 + 0.05 * torch.sigmoid(x.mean(1))


def export_ground_plane_teacher(path: str | Path) -> Path:
    """Write ``GroundPlaneDisparity`` as a real ONNX teacher (DA-V2 I/O names, dynamic batch and size, short
    side 56 in its metadata)."""
    import onnx

    path = Path(path)
    b, h, w = torch.export.Dim("batch"), torch.export.Dim("h"), torch.export.Dim("w")
    torch.onnx.export(GroundPlaneDisparity().eval(), (torch.randn(2, 3, 28, 56),), str(path),
                      input_names=["pixel_values"], output_names=["predicted_depth"],
                      dynamic_shapes={"x": {0: b, 2: h, 3: w}}, dynamo=True, verbose=False)
    proto = onnx.load(str(path))
    for k, v in {"monolidar.output_kind": "disparity", "monolidar.short_side": "56"}.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, str(path))
    return path
