"""Depth-completion networks and their registry (timm-style: ``create_model(name, **kwargs)``).

Every model maps ``rgb`` (B,3,H,W) float32 in [0,1] and ``sparse`` (B,1,H,W) float32 metres (0 = no
return) to dense ``depth`` (B,1,H,W) float32 metres. Any H, W work (no padding needed): decoder stages
resize to their skip connection's size.

Architecture ("MSDC", multi-scale depth completion):

- Input encoding: RGB is ImageNet-normalised; sparse depth enters as *log-depth* (centred on
  ``LOG_DEPTH_CENTER`` = log 12 m) plus a validity mask. Log space makes a 2 m error at 80 m cost about
  what a 5 cm error costs at 2 m, which matches how far points are sparser and noisier.
- Sparse pyramid: at every encoder level the sparse log-depth is re-sampled by normalised
  convolution (average of valid values in each cell, and the share of valid pixels), so the coarse
  levels see densified depth although the input is only ~5 % dense.
- Encoder: stride-2 convs and residual blocks (no normalisation layers: training batches are tiny on
  CPU and we want identical train/eval behaviour and clean ONNX graphs).
- Decoder: bilinear upsampling + skip concatenation; a log-depth head at every level adds a residual
  to the upsampled coarser one (coarse-to-fine); the sum is a residual on top of a classical push-pull
  fill of the sparse pyramid (:func:`pushpull_fill`), so a fresh network already interpolates the scan.
- Output: ``depth = exp(clamp(log_depth, log(min_depth), log(max_depth)))`` metres.
- Optional spatial propagation (CSPN/NLSPN-style): an 8-neighbour affinity predicted from the last
  decoder features, normalised so the absolute weights sum to < 1 (a convex-like combination keeps
  the iteration stable); each of ``spn_iters`` steps averages depth with its neighbours and then
  re-imposes the sparse input where it exists (the refinement keeps measured points).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.conventions import IMAGENET_MEAN, IMAGENET_STD

LOG_DEPTH_CENTER = math.log(12.0)
# Heads' outputs are log-depth residuals; an Adam step moves a head's output by ~lr * fan_in * |feature|,
# i.e. ~15 % of depth at lr 1e-3 without this factor, which wrecks the push-pull fill in the first steps.
RESIDUAL_SCALE = 0.1

_REGISTRY: dict[str, Callable[..., "CompletionNet"]] = {}


def register_model(fn: Callable[..., "CompletionNet"]) -> Callable[..., "CompletionNet"]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> "CompletionNet":
    """Build a registered model; kwargs override the config's defaults (e.g. ``spn_iters=0``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown completion model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """conv-relu-conv + identity; the second conv starts at zero so a fresh block is the identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = _conv(ch, ch)
        self.conv2 = _conv(ch, ch)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class EncoderStage(nn.Module):
    """Stride-2 conv (image features + the level's sparse pyramid channels) then residual blocks."""

    def __init__(self, cin: int, cout: int, blocks: int):
        super().__init__()
        self.down = _conv(cin + 2, cout, stride=2)
        self.blocks = nn.Sequential(*[ResBlock(cout) for _ in range(blocks)])

    def forward(self, x: torch.Tensor, sparse_feats: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.down(torch.cat([x, _resize_like(sparse_feats, x, stride=1)], 1)))
        return self.blocks(x)


class DecoderStage(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv1 = _conv(cin + cskip, cout)
        self.conv2 = _conv(cout, cout)
        self.head = nn.Conv2d(cout, 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = skip.shape[-2:]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = F.relu(self.conv2(F.relu(self.conv1(torch.cat([x, skip], 1)))))
        coarse = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        return x, coarse + RESIDUAL_SCALE * self.head(x)


def _resize_like(t: torch.Tensor, ref: torch.Tensor, stride: int) -> torch.Tensor:
    """Make t's spatial size match ref's size after a stride-``stride`` conv (ceil division)."""
    h = (ref.shape[-2] + stride - 1) // stride
    w = (ref.shape[-1] + stride - 1) // stride
    if t.shape[-2] == h and t.shape[-1] == w:
        return t
    return F.interpolate(t, size=(h, w), mode="nearest")


def sparse_pyramid(log_depth: torch.Tensor, mask: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Normalised-convolution pyramid: level k (stride 2^k) holds [mean valid log-depth, valid share].

    Each level is computed from the previous one by 2x2 sum pooling of (value*weight, weight), which
    equals pooling the full-resolution map (ceil_mode keeps odd sizes aligned with the stride-2 convs).
    """
    vw, w = log_depth * mask, mask
    out = []
    for k in range(levels):
        if k:
            vw = F.avg_pool2d(vw, 2, ceil_mode=True) * 4.0
            w = F.avg_pool2d(w, 2, ceil_mode=True) * 4.0
        share = w / float(4**k)
        mean = vw / w.clamp(min=1e-6)
        out.append(torch.cat([mean, share.clamp(max=1.0)], 1))
    return out


def pushpull_fill(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Dense log-depth from the sparse pyramid: each pixel takes the finest level that has data there.

    Pull (coarse to fine): start from the coarsest level, upsample bilinearly, and overwrite with each finer
    level's normalised average wherever that level has a valid sample. At full resolution this returns the
    sparse input itself at measured pixels. Cells with no data even at the coarsest level get 0 (=
    LOG_DEPTH_CENTER). The network learns a residual on top of this classical fill, so a fresh model
    already interpolates the scan and training only has to learn corrections (edges, occlusions, slopes).
    """
    cur = pyramid[-1][:, :1] * (pyramid[-1][:, 1:] > 0).to(pyramid[-1].dtype)
    for level in reversed(pyramid[:-1]):
        up = F.interpolate(cur, size=level.shape[-2:], mode="bilinear", align_corners=False)
        has = (level[:, 1:] > 0).to(level.dtype)
        cur = has * level[:, :1] + (1.0 - has) * up
    return cur


class SpatialPropagation(nn.Module):
    """CSPN-style refinement on a 3x3 neighbourhood with affinities from features; keeps sparse input."""

    # (dy, dx) of the 8 neighbours
    OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

    def __init__(self, cin: int, iters: int):
        super().__init__()
        self.iters = iters
        self.affinity = nn.Conv2d(cin, 8, 3, padding=1)
        nn.init.zeros_(self.affinity.weight)
        nn.init.zeros_(self.affinity.bias)

    def forward(self, depth: torch.Tensor, feats: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raw = self.affinity(feats)
        # |a| sums to < 1 -> the centre weight 1 - sum(a) is positive-dominant: a contraction, stable.
        aff = raw / (raw.abs().sum(1, keepdim=True) + 1.0)
        centre = 1.0 - aff.sum(1, keepdim=True)
        h, w = depth.shape[-2:]
        for _ in range(self.iters):
            padded = F.pad(depth, (1, 1, 1, 1), mode="replicate")
            acc = centre * depth
            for i, (dy, dx) in enumerate(self.OFFSETS):
                acc = acc + aff[:, i : i + 1] * padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            depth = mask * sparse + (1.0 - mask) * acc
        return depth


class CompletionNet(nn.Module):
    """RGB + sparse depth (+ validity mask) -> dense metric depth. See the module docstring."""

    def __init__(
        self,
        *,
        channels: tuple[int, ...] = (16, 32, 48, 64, 96),
        blocks: tuple[int, ...] = (0, 1, 1, 2, 2),
        spn_iters: int = 0,
        min_depth: float = 0.1,
        max_depth: float = 150.0,
    ):
        super().__init__()
        if len(channels) != len(blocks) or len(channels) < 2:
            raise ValueError("channels and blocks must have the same length (>= 2)")
        self.config = dict(channels=tuple(channels), blocks=tuple(blocks), spn_iters=spn_iters,
                           min_depth=min_depth, max_depth=max_depth)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        c0 = channels[0]
        self.stem = nn.Sequential(nn.Conv2d(3 + 2, c0, 3, padding=1), nn.ReLU(),
                                  *[ResBlock(c0) for _ in range(blocks[0])])
        self.encoders = nn.ModuleList(
            EncoderStage(channels[i - 1], channels[i], blocks[i]) for i in range(1, len(channels))
        )
        self.bottom_head = nn.Conv2d(channels[-1], 1, 3, padding=1)
        nn.init.zeros_(self.bottom_head.weight)
        nn.init.zeros_(self.bottom_head.bias)
        dec_out = list(channels[:-1])  # decoder stage i outputs channels[i] at the stride of level i
        self.decoders = nn.ModuleList()
        cin = channels[-1]
        for i in range(len(channels) - 2, -1, -1):
            self.decoders.append(DecoderStage(cin, channels[i], dec_out[i]))
            cin = dec_out[i]
        self.spn = SpatialPropagation(c0, spn_iters) if spn_iters > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for every conv that is not deliberately zero-initialised.

        Without normalisation layers, PyTorch's default conv init shrinks activations by ~0.6 per layer, so
        the residual heads at the end of the ~12-layer path would see near-zero features and learn very
        slowly. He (fan-in, ReLU) init keeps activation scale through depth; zero-initialised layers
        (residual branches' second conv, heads, affinity) stay zero so a fresh net is the push-pull fill.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() > 0:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, rgb: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        mask = (sparse > 0).to(sparse.dtype)
        log_d = torch.where(mask > 0, torch.log(sparse.clamp(min=self.min_depth)) - LOG_DEPTH_CENTER,
                            torch.zeros_like(sparse))
        pyramid = sparse_pyramid(log_d, mask, len(self.encoders) + 1)
        x = self.stem(torch.cat([(rgb - self.rgb_mean) / self.rgb_std, pyramid[0]], 1))
        skips = [x]
        for k, enc in enumerate(self.encoders):
            x = enc(x, pyramid[k])
            skips.append(x)
        # the decoder predicts a log-depth residual, coarse to fine, on top of the push-pull fill
        y = RESIDUAL_SCALE * self.bottom_head(x)
        for dec, skip in zip(self.decoders, reversed(skips[:-1])):
            x, y = dec(x, skip, y)
        y = pushpull_fill(pyramid) + y
        y = y.clamp(math.log(self.min_depth) - LOG_DEPTH_CENTER, math.log(self.max_depth) - LOG_DEPTH_CENTER)
        depth = torch.exp(y + LOG_DEPTH_CENTER)
        if self.spn is not None:
            depth = self.spn(depth, x, sparse, mask)
        return depth


@register_model
def msdc_small(**kwargs) -> CompletionNet:
    """~0.9 M parameters. Training at 256x512 crops, batch 4 (forward + backward + AdamW): ~2.5 samples/s
    on 2 idle CPU threads, ~1.4 samples/s on 1 thread of a busy 2-core box. No SPN by default (pass
    ``spn_iters=N`` to add the propagation stage)."""
    cfg = dict(channels=(16, 32, 48, 64, 96), blocks=(0, 1, 1, 2, 2), spn_iters=0)
    cfg.update(kwargs)
    return CompletionNet(**cfg)


@register_model
def msdc_base(**kwargs) -> CompletionNet:
    """~8 M parameters for GPUs; spatial propagation refinement on (6 iterations)."""
    cfg = dict(channels=(32, 64, 128, 192, 256), blocks=(1, 2, 2, 3, 3), spn_iters=6)
    cfg.update(kwargs)
    return CompletionNet(**cfg)



