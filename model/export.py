"""Export a completion checkpoint to ONNX and check onnxruntime against torch.

Graph I/O: inputs ``rgb`` float32 [B,3,H,W] in [0,1] and ``sparse`` float32 [B,1,H,W] metres
(0 = no return); output ``depth`` float32 [B,1,H,W] metres. Batch, height and width are dynamic.
ONNX metadata_props record the architecture and the checkpoint's step.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint, model_from_checkpoint
from tasks.errors import CheckpointError


def _example_inputs(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(1, 3, height, width, generator=g)
    keep = torch.rand(1, 1, height, width, generator=g) < 0.05
    sparse = torch.where(keep, 2.0 + 60.0 * torch.rand(1, 1, height, width, generator=g), torch.zeros(()))
    return rgb, sparse


def export_onnx(
    ckpt: str | Path,
    path: str | Path,
    *,
    height: int = 64,
    width: int = 128,
    use_ema: bool = True,
    opset: int = 18,
    check_height: int = 96,
    check_width: int = 160,
    atol: float = 1e-3,
) -> dict:
    """Write ``path`` (.onnx) from checkpoint ``ckpt``; returns {"path", "max_abs_diff_m", "check_shape"}.

    The graph is traced at ``height x width`` with dynamic axes, then checked with onnxruntime at a
    *different* size (``check_height x check_width``) so the dynamic shapes are exercised. Raises
    CheckpointError when ORT and torch differ by more than ``atol`` metres.
    """
    import onnx
    import onnxruntime as ort

    info = load_checkpoint(ckpt)
    model = model_from_checkpoint(info, use_ema=use_ema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb, sparse = _example_inputs(height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (rgb, sparse),
            str(path),
            input_names=["rgb", "sparse"],
            output_names=["depth"],
            dynamic_axes={"rgb": {0: "batch", 2: "height", 3: "width"},
                          "sparse": {0: "batch", 2: "height", 3: "width"},
                          "depth": {0: "batch", 2: "height", 3: "width"}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    meta = {"monolidar.kind": "completion", "monolidar.model_name": info["model_name"],
            "monolidar.model_config": json.dumps(info["model_config"], sort_keys=True),
            "monolidar.step": str(info["step"]), "monolidar.weights": "ema" if use_ema and info.get("ema") else "raw"}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))

    rgb_c, sparse_c = _example_inputs(check_height, check_width, seed=1)
    with torch.no_grad():
        ref = model(rgb_c, sparse_c).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["depth"], {"rgb": rgb_c.numpy(), "sparse": sparse_c.numpy()})[0]
    diff = float(np.max(np.abs(out - ref))) if out.shape == ref.shape else float("inf")
    if not diff <= atol:
        raise CheckpointError(f"{path}: onnxruntime differs from torch by {diff:.3g} m (shape {out.shape} vs {ref.shape})")
    return {"path": str(path), "max_abs_diff_m": diff, "check_shape": list(out.shape)}
