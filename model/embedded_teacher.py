"""The embedded default teacher: a small monocular relative-depth network trained on procedural renders.

Architecture: a small residual encoder (stride-2 3x3 convs + residual blocks) down to 1/32 resolution with
a global-context branch, and a U-Net decoder that upsamples to each skip's exact size, so
any input size works (the Depth Anything convention uses multiples of 14, which are not powers of two).
Output: relative inverse depth (disparity, larger = nearer, >= 0) at input resolution, [B, H, W].

Training (``train_network``) runs the shared loop (``model.training.train_loop``) with the render batch maker
(``model.batches``, augmentation in ``model.augmentation``) and ``model.losses.ssi_disparity_loss``:
scale-and-shift-invariant L1 in DISPARITY space (per image, closed-form least-squares scale and shift map the
prediction onto the target; sky has target disparity 0), plus MiDaS's multi-scale gradient-matching term on
the aligned residual. Disparity, not depth, because that is the teacher's output convention and it keeps sky
(infinite depth) finite. Export: ``model.export.export_teacher_onnx``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.conventions import imagenet_normalise


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(channels, channels), ConvBNAct(channels, channels, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class DepthNetSmall(nn.Module):
    """Encoder-decoder relative-depth network (about 1.2 M parameters at the default widths).

    Plain dense 3x3 convs rather than depthwise-separable ones: on CPU, oneDNN runs dense convs at a far
    higher arithmetic rate, and training measured ~1.5x faster per step at similar accuracy per step.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 112, 160), dec: tuple[int, ...] = (96, 64, 32, 24)):
        super().__init__()
        w = widths
        # RGB + a row-coordinate channel (CoordConv): where a pixel sits vertically is a strong depth cue
        # (ground below the horizon, sky above) that plain convolutions only learn indirectly.
        self.stem = ConvBNAct(3 + 1, w[0], 3, 2)                                          # 1/2
        self.enc = nn.ModuleList(
            nn.Sequential(ConvBNAct(w[i], w[i + 1], 3, 2), ResidualBlock(w[i + 1])) for i in range(4)
        )                                                                                  # 1/4 .. 1/32
        # Whole-image context (where the horizon is, indoor vs outdoor) reaches every position.
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w[4], w[4], 1), nn.ReLU(inplace=True))
        self.fuse = nn.ModuleList()
        cin = w[4]
        for skip, cout in zip((w[3], w[2], w[1], w[0]), dec):
            self.fuse.append(nn.Sequential(ConvBNAct(cin + skip, cout, 1), ConvBNAct(cout, cout, 3)))
            cin = cout
        self.head = nn.Conv2d(cin, 1, 3, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Row coordinate in [-1, 1] built from the input's own shape, so ONNX keeps H and W dynamic.
        rows = torch.ones_like(pixel_values[:, :1]).cumsum(2)
        rows = (rows - 0.5) / pixel_values.shape[-2] * 2.0 - 1.0
        skips = [self.stem(torch.cat([pixel_values, rows], dim=1))]
        for stage in self.enc:
            skips.append(stage(skips[-1]))
        x = skips.pop()
        x = x + self.context(x)
        for fuse, skip in zip(self.fuse, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, skip], dim=1))
        # The head runs at 1/2 resolution (full-resolution convs would dominate the CPU cost); the
        # one-channel output is upsampled.
        x = F.interpolate(self.head(x), size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        return F.softplus(x)[:, 0]


def widen_input_channels(state: dict, target: dict) -> dict:
    """Warm-start a network that takes extra input channels from one that did not: the new channels' conv
    weights start at zero, so the widened network computes exactly what the old one did."""
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if want is not None and value.ndim == 4 and want.shape[1] > value.shape[1] and want.shape[0] == value.shape[0]:
            pad = torch.zeros(value.shape[0], want.shape[1] - value.shape[1], *value.shape[2:], dtype=value.dtype)
            out[key] = torch.cat([value, pad], dim=1)
    return out


def state_from_onnx(path: str | Path, calibration: torch.Tensor) -> dict:
    """A trainable DepthNetSmall state_dict recovered from an exported teacher ONNX file.

    The exporter folds each BatchNorm into the conv before it (W' = W·γ/σ, b' = β − μ·γ/σ), so the file holds
    only W' and b'. Conv i of the graph (execution order) is conv i of the module (registration order, the
    same here). To give BatchNorm back a meaningful state, the conv outputs z = W'·x are measured on
    ``calibration`` (ImageNet-normalised RGB, (B,3,H,W)) and each BN is set to μ = mean z, σ² = var z,
    γ = sqrt(σ² + eps), β = b' + μ: it then computes exactly z + b' in eval mode (the ONNX function), and
    nearly so in train mode, where batch statistics are close to μ and σ². Training can then continue from
    a shipped file without the checkpoint that produced it.
    """
    import onnx
    from onnx import numpy_helper

    from tasks.errors import TeacherError

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    model = DepthNetSmall()
    modules = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(modules):
        raise TeacherError(f"{path}: {len(convs)} Conv nodes, DepthNetSmall has {len(modules)}: not this network")
    # The BatchNorm that follows each bias-free conv inside a ConvBNAct.
    bn_after = {id(seq[0]): seq[1] for seq in model.modules() if isinstance(seq, ConvBNAct)}
    biases: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for node, conv in zip(convs, modules):
            w = torch.from_numpy(inits[node.input[1]].copy())
            b = torch.from_numpy(inits[node.input[2]].copy()) if len(node.input) > 2 else torch.zeros(w.shape[0])
            if w.shape != conv.weight.shape:
                raise TeacherError(f"{path}: {node.name} weight {tuple(w.shape)} != {tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
            if id(conv) in bn_after:
                bn = bn_after[id(conv)]
                bn.weight.fill_(1.0)
                bn.bias.copy_(b)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)  # (z - 0) / sqrt(1 - eps + eps) = z: exact identity
                biases[id(conv)] = b
            else:
                conv.bias.copy_(b)
        # Measure the conv outputs of the (now exact) eval-mode network, then re-factor each BN around them.
        stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [conv.register_forward_hook(
            lambda mod, _inp, out: stats.__setitem__(id(mod), (out.mean((0, 2, 3)), out.var((0, 2, 3)))))
            for conv in modules if id(conv) in bn_after]
        model.eval()
        model(calibration)
        for h in hooks:
            h.remove()
        for conv_id, (mu, var) in stats.items():
            bn = bn_after[conv_id]
            bn.running_mean.copy_(mu)
            bn.running_var.copy_(var)
            bn.weight.copy_((var + bn.eps).sqrt())
            bn.bias.copy_(biases[conv_id] + mu)
    return model.state_dict()


def initial_state(init: str | Path, groups: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The DepthNetSmall state_dict to warm-start from: a ``.pt`` checkpoint an earlier run wrote (loaded
    weights-only: a file that needs pickle is refused), or an exported teacher ``.onnx`` (the shipped one,
    say), whose folded BatchNorms are re-factored on up to 16 images of the largest training group
    (``state_from_onnx``)."""
    from model.checkpoint import load_teacher_checkpoint

    if str(init).endswith(".onnx"):
        rgb = max(groups, key=lambda g: len(g[0]))[0][:16]
        calibration = imagenet_normalise(torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0)
        return state_from_onnx(init, calibration)
    return load_teacher_checkpoint(init)["state_dict"]


def train_network(groups: list[tuple[np.ndarray, np.ndarray]], *, steps: int, seed: int, minutes: float | None = None,
                  batch: int = 8, lr: float = 3e-3, crop_width: int = 320, threads: int = 2,
                  log_every: int = 50, log=print, init_state: dict | None = None,
                  log_depth_weight: float = 0.0) -> tuple[DepthNetSmall, dict]:
    """Train DepthNetSmall on ``groups`` = [(rgb uint8 (N,H,W,3), target disparity float32 (N,H,W)), ...].

    AdamW with warm-up then cosine decay; progress = max(step/steps, elapsed/minutes), so a wall-time budget
    ends the run with a fully decayed learning rate. With ``minutes=None`` the run is deterministic.
    ``init_state``: a DepthNetSmall state_dict to start from instead of a random initialisation.
    ``log_depth_weight``: weight of the evaluation-protocol term (``losses.aligned_log_depth_error``).
    """
    from model.batches import render_batch_maker
    from model.objectives import teacher_objective
    from model.schedules import warmup_times_cosine
    from model.training import train_loop

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = DepthNetSmall()
    if init_state is not None:  # continue from an earlier run (warm start), same schedule from scratch
        model.load_state_dict(widen_input_channels(init_state, model.state_dict()))
    warmup = max(1, min(100, steps // 20))
    summary = train_loop(
        model, make_batch=render_batch_maker(groups, batch_size=batch, crop_width=crop_width, seed=seed),
        compute_loss=teacher_objective(log_depth_weight=log_depth_weight), steps=steps,
        lr_at=lambda step, progress: warmup_times_cosine(step, progress, lr, warmup), lr=lr, weight_decay=1e-4,
        budget_s=None if minutes is None else 60.0 * minutes, log_every=log_every, log=log)
    model.eval()
    return model, {"steps": summary["step"], "seconds": summary["seconds"],
                   "loss_curve": [p["loss"] for p in summary["loss_curve"]], "batch": batch,
                   "crop_width": crop_width, "lr": lr, "seed": seed, "log_depth_weight": log_depth_weight}
