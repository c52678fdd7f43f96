"""The embedded default teacher: a small monocular relative-depth network trained on procedural renders.

Architecture: a small residual encoder (stride-2 3x3 convs + residual blocks) down to 1/32 resolution with
a global-context branch, and a U-Net decoder that upsamples to each skip's exact size, so
any input size works (the Depth Anything convention uses multiples of 14, which are not powers of two).
Output: relative inverse depth (disparity, larger = nearer, >= 0) at input resolution, [B, H, W].

Loss: scale-and-shift-invariant L1 in DISPARITY space (per image, closed-form least-squares scale and shift
map the prediction onto the target; sky has target disparity 0), plus MiDaS's multi-scale gradient-matching
term on the aligned residual. Disparity, not depth, because that is the teacher's output convention and it
keeps sky (infinite depth) finite.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------- preprocessing
def normalise(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) float RGB in [0, 1] -> ImageNet-normalised network input (as model.teacher.Teacher does)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def augment(rgb: torch.Tensor, disparity: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Photometric + geometric augmentation of a batch: rgb (B,3,H,W) in [0,1], disparity (B,H,W).

    Synthetic renders are clean and saturated; real photos are not: jitter brightness/contrast/saturation and
    channel gains, blur or sharpen (renders vs bicubic-resized photos), add sensor noise, flip left-right and
    zoom in (a longer focal length) so the net does not memorise one field of view.
    """
    b, _, h, w = rgb.shape

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape or (b,), generator=gen)

    flip = torch.rand(b, generator=gen) < 0.5
    rgb = torch.where(flip.view(b, 1, 1, 1), rgb.flip(-1), rgb)
    disparity = torch.where(flip.view(b, 1, 1), disparity.flip(-1), disparity)
    zoom = float(u(1.0, 1.35, 1))
    if zoom > 1.02:
        hh, ww = int(round(h * zoom)), int(round(w * zoom))
        oy = int(torch.randint(0, hh - h + 1, (1,), generator=gen))
        ox = int(torch.randint(0, ww - w + 1, (1,), generator=gen))
        rgb = F.interpolate(rgb, size=(hh, ww), mode="bilinear", align_corners=False)[..., oy:oy + h, ox:ox + w]
        disparity = F.interpolate(disparity[:, None], size=(hh, ww), mode="nearest")[:, 0, oy:oy + h, ox:ox + w]
    grey = rgb.mean(1, keepdim=True)
    rgb = grey + (rgb - grey) * u(0.3, 1.2).view(b, 1, 1, 1)                          # saturation
    rgb = rgb * u(0.85, 1.15, b, 3).view(b, 3, 1, 1)                                  # white balance
    mean = rgb.mean((1, 2, 3), keepdim=True)
    rgb = mean + (rgb - mean) * u(0.6, 1.4).view(b, 1, 1, 1)                          # contrast
    rgb = rgb * u(0.5, 1.4).view(b, 1, 1, 1)                                          # brightness
    rgb = rgb.clamp(0, 1) ** u(0.7, 1.4).view(b, 1, 1, 1)                             # gamma
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    blur = F.conv2d(F.pad(rgb, (1, 1, 1, 1), mode="replicate"),
                    (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3), groups=3)
    amount = u(-0.8, 1.0).view(b, 1, 1, 1)                                            # < 0 sharpens
    rgb = rgb + amount * (blur - rgb)
    rgb = rgb + torch.randn(rgb.shape, generator=gen) * u(0.0, 0.03).view(b, 1, 1, 1)
    return rgb.clamp(0, 1), disparity


# ----------------------------------------------------------------------------------------------- loss
def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image, the least-squares s, t minimising sum_mask (s*pred + t - target)^2; returns s*pred + t.

    Closed form of the 2x2 normal equations; differentiable, so the loss sees through the alignment.
    """
    m = mask.float()
    n = m.sum((-2, -1)).clamp_min(1.0)
    sp, st = (m * pred).sum((-2, -1)), (m * target).sum((-2, -1))
    spp, spt = (m * pred * pred).sum((-2, -1)), (m * pred * target).sum((-2, -1))
    det = (n * spp - sp * sp).clamp_min(1e-8)
    s = (n * spt - sp * st) / det
    t = (st - s * sp) / n
    return s.view(-1, 1, 1) * pred + t.view(-1, 1, 1)


def gradient_matching(residual: torch.Tensor, mask: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """MiDaS gradient-matching term: mean |d/dx| + |d/dy| of the aligned residual over 'scales' pyramids."""
    total = residual.new_zeros(())
    r, m = residual, mask.float()
    for _ in range(scales):
        mx = m[..., :, 1:] * m[..., :, :-1]
        my = m[..., 1:, :] * m[..., :-1, :]
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * mx
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * my
        total = total + (gx.sum() + gy.sum()) / (mx.sum() + my.sum()).clamp_min(1.0)
        r = r[..., ::2, ::2]
        m = m[..., ::2, ::2]
    return total / scales


def ssi_disparity_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                       grad_weight: float = 0.5, log_depth_weight: float = 0.0,
                       max_depth: float = 80.0) -> torch.Tensor:
    """Scale-and-shift-invariant L1 in disparity space (+ gradient matching), mean over the batch.

    Each target is first normalised by its mean absolute deviation from its median, so near indoor scenes
    and far streets weigh the same. A sign term (relu(-correlation)) keeps the least-squares scale positive.
    ``log_depth_weight`` > 0 adds ``aligned_log_depth_error`` (needs ``target`` = metric 1/depth).
    """
    if mask is None:
        mask = torch.ones_like(target, dtype=torch.bool)
    b = target.shape[0]
    flat_t = target.reshape(b, -1)
    med = flat_t.median(dim=1).values.view(b, 1, 1)
    scale = ((target - med).abs() * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1)
    target_n = (target - med) / scale.clamp_min(1e-6).view(b, 1, 1)
    aligned = align_scale_shift(pred, target_n, mask)
    residual = (aligned - target_n) * mask
    l1 = residual.abs().sum() / mask.sum().clamp_min(1)
    # Least squares happily picks a NEGATIVE scale, which would let the net learn depth instead of
    # disparity (larger = farther) at no cost. Penalise negative correlation with the target so the
    # output keeps the convention larger = nearer.
    m = mask.float()
    n = m.sum((-2, -1)).clamp_min(1.0)
    pc = (pred - (m * pred).sum((-2, -1), keepdim=True) / n.view(b, 1, 1)) * m
    tc = (target_n - (m * target_n).sum((-2, -1), keepdim=True) / n.view(b, 1, 1)) * m
    corr = (pc * tc).sum((-2, -1)) / ((pc * pc).sum((-2, -1)) * (tc * tc).sum((-2, -1))).sqrt().clamp_min(1e-8)
    loss = l1 + grad_weight * gradient_matching(aligned - target_n, mask) + F.relu(-corr).mean()
    if log_depth_weight > 0:
        loss = loss + log_depth_weight * aligned_log_depth_error(pred, target, mask, max_depth=max_depth)
    return loss


def aligned_log_depth_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                            max_depth: float = 80.0) -> torch.Tensor:
    """Mean |log(aligned depth / true depth)| over non-sky pixels nearer than ``max_depth``: the evaluation
    protocol (least-squares scale + shift in disparity, then compare in depth, aligned disparity clamped at
    1/max_depth) made a loss.

    Why: the disparity-space L1 barely sees far surfaces (their disparity is tiny), yet in depth, where
    AbsRel and delta<1.25 are measured, a small disparity offset there is a large relative error. The log
    ratio is AbsRel's symmetric, bounded-gradient cousin. ``target`` is metric disparity 1/depth (0 = sky).
    """
    valid = mask & (target >= 1.0 / max_depth)
    aligned = align_scale_shift(pred, target, valid)
    floor = 1.0 / max_depth
    # Soft clamp (smooth near the floor, so far pixels still get a gradient towards the right side).
    aligned = floor + F.softplus(aligned - floor, beta=50.0 / floor)
    err = (aligned.log() - target.clamp_min(floor).log()).abs() * valid
    per_image = err.sum((-2, -1)) / valid.sum((-2, -1)).clamp_min(1)
    return per_image[valid.flatten(1).any(1)].mean() if valid.any() else pred.new_zeros(())


# ----------------------------------------------------------------------------------------------- evaluation
def aligned_depth_metrics(pred_disparity: np.ndarray, gt_depth: np.ndarray, *, max_depth: float = 80.0,
                          min_depth: float = 1e-3) -> dict[str, float]:
    """AbsRel and delta<1.25 of a relative disparity after per-image least-squares scale/shift alignment
    IN DISPARITY SPACE to 1/gt over the valid pixels, compared in DEPTH (aligned disparity clamped to
    1/max_depth so no pixel becomes infinitely far or negative)."""
    valid = (gt_depth > min_depth) & np.isfinite(gt_depth) & np.isfinite(pred_disparity)
    if valid.sum() < 10:
        raise ValueError("fewer than 10 valid ground-truth pixels: cannot align")
    p = pred_disparity[valid].astype(np.float64)
    g = 1.0 / gt_depth[valid].astype(np.float64)
    a = np.stack([p, np.ones_like(p)], 1)
    (s, t), *_ = np.linalg.lstsq(a, g, rcond=None)
    depth = 1.0 / np.maximum(s * p + t, 1.0 / max_depth)
    gt = gt_depth[valid].astype(np.float64)
    ratio = np.maximum(depth / gt, gt / depth)
    return {"abs_rel": float(np.mean(np.abs(depth - gt) / gt)), "delta1": float(np.mean(ratio < 1.25)),
            "n_pixels": int(valid.sum()), "scale": float(s)}


def ground_plane_disparity(height: int, width: int) -> np.ndarray:
    """The trivial baseline: constant small disparity above the middle row, growing linearly below it
    (a flat ground seen by a level camera has disparity proportional to rows below the horizon)."""
    rows = np.arange(height, dtype=np.float64)
    disp = 0.01 + np.clip((rows - height / 2) / height, 0.0, None)
    return np.repeat(disp[:, None], width, axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- training
def _sample_batch(groups: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, batch: int,
                  crop_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch from one same-shape group (chosen in proportion to its size); wide frames are cropped to
    ``crop_width`` columns at a random offset, keeping the full height (the horizon cue)."""
    sizes = np.array([len(g[0]) for g in groups], np.float64)
    rgb_all, disp_all = groups[int(rng.choice(len(groups), p=sizes / sizes.sum()))]
    idx = rng.choice(len(rgb_all), size=batch, replace=len(rgb_all) < batch)
    rgb, disp = rgb_all[idx], disp_all[idx]
    w = rgb.shape[2]
    if w > crop_width:
        x0 = int(rng.integers(0, w - crop_width + 1))
        rgb, disp = rgb[:, :, x0:x0 + crop_width], disp[:, :, x0:x0 + crop_width]
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
    return rgb_t, torch.from_numpy(np.ascontiguousarray(disp)).float()


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
    """The DepthNetSmall state_dict to warm-start from: a ``.pt`` checkpoint an earlier run wrote, or an
    exported teacher ``.onnx`` (the shipped one, say), whose folded BatchNorms are re-factored on up to 16
    images of the largest training group (``state_from_onnx``)."""
    if str(init).endswith(".onnx"):
        rgb = max(groups, key=lambda g: len(g[0]))[0][:16]
        calibration = normalise(torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0)
        return state_from_onnx(init, calibration)
    return torch.load(init, map_location="cpu", weights_only=False)["state_dict"]


def train_network(groups: list[tuple[np.ndarray, np.ndarray]], *, steps: int, seed: int, minutes: float | None = None,
                  batch: int = 8, lr: float = 3e-3, crop_width: int = 320, threads: int = 2,
                  log_every: int = 50, log=print, init_state: dict | None = None,
                  log_depth_weight: float = 0.0) -> tuple[DepthNetSmall, dict]:
    """Train DepthNetSmall on ``groups`` = [(rgb uint8 (N,H,W,3), target disparity float32 (N,H,W)), ...].

    AdamW with warm-up then cosine decay; progress = max(step/steps, elapsed/minutes), so a wall-time budget
    ends the run with a fully decayed learning rate. With ``minutes=None`` the run is deterministic.
    ``init_state``: a DepthNetSmall state_dict to start from instead of a random initialisation.
    ``log_depth_weight``: weight of the evaluation-protocol term (``aligned_log_depth_error``).
    """
    import time

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DepthNetSmall()
    if init_state is not None:  # continue from an earlier run (warm start), same schedule from scratch
        model.load_state_dict(widen_input_channels(init_state, model.state_dict()))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    start = time.monotonic()
    budget = None if minutes is None else 60.0 * minutes
    warmup = max(1, min(100, steps // 20))
    running, step, losses = 0.0, 0, []
    model.train()
    while step < steps:
        progress = step / steps
        if budget is not None:
            progress = max(progress, (time.monotonic() - start) / budget)
        if progress >= 1.0:
            break
        scale = min(1.0, (step + 1) / warmup) * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        rgb, disp = _sample_batch(groups, rng, batch, crop_width)
        rgb, disp = augment(rgb, disp, gen)
        loss = ssi_disparity_loss(model(normalise(rgb)), disp, log_depth_weight=log_depth_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        step += 1
        if step % log_every == 0:
            losses.append(running / log_every)
            log(f"step {step}/{steps} loss {running / log_every:.4f} lr {lr * scale:.2e} "
                f"{time.monotonic() - start:.0f}s")
            running = 0.0
    model.eval()
    return model, {"steps": step, "seconds": time.monotonic() - start, "loss_curve": losses, "batch": batch,
                   "crop_width": crop_width, "lr": lr, "seed": seed, "log_depth_weight": log_depth_weight}


# ----------------------------------------------------------------------------------------------- export
def export_teacher_onnx(model: nn.Module, out, *, short_side: int, check_size: tuple[int, int] = (196, 266),
                        extra_metadata: dict[str, str] | None = None) -> dict:
    """Export to ONNX in the Depth Anything V2 convention (``pixel_values`` [B,3,H,W] ->
    ``predicted_depth`` [B,H,W], dynamic batch/height/width) with metadata ``monolidar.output_kind`` =
    "disparity" and ``monolidar.short_side``; verify onnxruntime against torch at another size."""
    import io

    import onnx
    import onnxruntime as ort

    from tasks.errors import TeacherError

    out = Path(out)
    model = model.eval()
    example = torch.zeros(1, 3, short_side, short_side)
    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, input_names=["pixel_values"], output_names=["predicted_depth"],
                      dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"},
                                    "predicted_depth": {0: "batch", 1: "height", 2: "width"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"monolidar.output_kind": "disparity", "monolidar.short_side": str(int(short_side)),
            "monolidar.model": "DepthNetSmall", "monolidar.parameters": str(count_parameters(model))}
    meta.update(extra_metadata or {})
    del proto.metadata_props[:]
    for k, v in sorted(meta.items()):
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "monolidar.train-teacher"
    onnx.checker.check_model(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".onnx.tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(out)
    # ORT vs torch on a random image at a different size than the trace (exercises the dynamic axes).
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 3, *check_size)).astype(np.float32))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["predicted_depth"], {"pixel_values": x.numpy()})[0]
    err = float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) + 1e-12))
    if got.shape != ref.shape or err > 1e-3:
        raise TeacherError(f"{out}: ONNX output differs from torch (shape {got.shape} vs {ref.shape}, "
                           f"relative error {err:.2e})")
    return {"path": str(out), "bytes": out.stat().st_size, "ort_vs_torch_rel_err": err, **meta}
