"""A Depth-Anything-V2-Small-shaped network (ViT-S/14 + DPT head), its ONNX export and checkpoint loading.

Architecture and parameter names follow the official DA-V2 code so the published
``depth_anything_v2_vits.pth`` state dict loads key-for-key: the DINOv2 encoder lives under
``pretrained.*`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``mask_token``,
``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``) and the
DPT decoder under ``depth_head.*`` (``projects``, ``resize_layers``, ``scratch.layerN_rn``,
``scratch.refinenetN.{out_conv,resConfUnit1,resConfUnit2}``, ``scratch.output_conv1/2``).

Forward: [B,3,H,W] (H, W multiples of 14, ImageNet-normalised RGB) -> [B,H,W] non-negative relative
disparity. The constructor is parameterised so smaller students can reuse the same code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.conventions import count_parameters  # noqa: F401  (re-exported: callers count DA-V2 parameters)
from model.export import ORT_RTOL, ort_mismatch
from tasks.errors import CheckpointError, TeacherError

PATCH = 14


# --------------------------------------------------------------------------------------------------
# DINOv2 ViT encoder
_CUBIC_A = -0.75  # PyTorch's bicubic kernel coefficient


def bicubic_matrix(n_out: int, n_in: int, scale: float) -> torch.Tensor:
    """[n_out, n_in] matrix M with ``M @ v`` = torch bicubic resampling of v (align_corners=False).

    Source coordinate ``(i + 0.5) / scale - 0.5``, 4 taps with A = -0.75, indices clamped at the border
    (as ``F.interpolate(mode="bicubic", scale_factor=scale)``).
    """
    src = (torch.arange(n_out, dtype=torch.float32) + 0.5) / scale - 0.5
    base = torch.floor(src)
    t = src - base
    a = _CUBIC_A
    taps = (
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    )
    columns = torch.arange(n_in, dtype=torch.float32)
    matrix = torch.zeros(n_out, n_in)
    for k, weight in zip((-1, 0, 1, 2), taps):
        index = torch.clamp(base + k, 0, n_in - 1)
        matrix = matrix + (index[:, None] == columns[None, :]).float() * weight[:, None]
    return matrix


def identity_like(n_out: int, n_in: int) -> torch.Tensor:
    return (torch.arange(n_out)[:, None] == torch.arange(n_in)[None, :]).float()


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = PATCH) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, C]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoViT(nn.Module):
    """DINOv2-style ViT with a cls token and a learned position embedding for ``img_size`` (interpolated)."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, img_size: int = 518) -> None:
        super().__init__()
        self.embed_dim = dim
        self.grid = img_size // PATCH
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused at inference; kept for key parity
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Position embedding [1, 1 + h*w, C] for an h x w patch grid.

        Reproduces DINOv2's ``interpolate(scale_factor=(n + 0.1) / grid, mode="bicubic")`` (and its
        pass-through when h = w = grid) as two small interpolation matrices, so the same arithmetic runs
        in eager mode and in an ONNX graph with symbolic h, w (the exporter cannot trace data-dependent
        scale factors or the pass-through branch).
        """
        pos = self.pos_embed.float()
        dim = pos.shape[-1]
        grid = pos[0, 1:].reshape(self.grid, self.grid * dim)
        rows = bicubic_matrix(h, self.grid, (h + 0.1) / self.grid)
        cols = bicubic_matrix(w, self.grid, (w + 0.1) / self.grid)
        # DINOv2 skips interpolation at the native grid; a tensor condition keeps that branch traceable.
        native = (torch.ones(h).sum() == self.grid) & (torch.ones(w).sum() == self.grid)
        rows = torch.where(native, identity_like(h, self.grid), rows)
        cols = torch.where(native, identity_like(w, self.grid), cols)
        patch = torch.matmul(rows, grid).reshape(h, self.grid, dim)  # [h, grid_w, C]
        patch = torch.matmul(cols, patch)  # [w, grid_w] @ [h, grid_w, C] -> [h, w, C]
        return torch.cat((pos[:, :1], patch.reshape(1, h * w, dim)), dim=1)

    def get_intermediate_layers(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Layer-normed patch tokens [B, N, C] after each block index in ``taps``."""
        h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.position_embedding(h, w).to(tokens.dtype)
        outs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in taps:
                outs.append(self.norm(tokens)[:, 1:])
        return outs


# --------------------------------------------------------------------------------------------------
# DPT decoder
class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Refine (optionally add a skip), upsample (bilinear, align_corners=True), 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # noqa: N815 (official parameter name)
        self.resConfUnit2 = ResidualConvUnit(features)  # noqa: N815

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    def __init__(self, in_dim: int, features: int = 64, out_channels: tuple[int, ...] = (48, 96, 192, 384)) -> None:
        super().__init__()
        c = out_channels
        self.projects = nn.ModuleList(nn.Conv2d(in_dim, oc, 1) for oc in c)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),  # 1/14 -> 4/14
            nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),  # 1/14 -> 2/14
            nn.Identity(),
            nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),  # 1/14 -> 1/28
        ])
        self.scratch = nn.Module()
        for i, oc in enumerate(c, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(oc, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(True), nn.Conv2d(32, 1, 1), nn.ReLU(True), nn.Identity(),
        )

    def forward(self, feats: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
        maps = []
        for i, tokens in enumerate(feats):
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)
            maps.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(maps[0]), s.layer2_rn(maps[1]), s.layer3_rn(maps[2]), s.layer4_rn(maps[3])
        p4 = s.refinenet4(l4, size=l3.shape[2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[2:])
        p1 = s.refinenet1(p2, l1)
        out = F.interpolate(s.output_conv1(p1), size=(h * PATCH, w * PATCH), mode="bilinear", align_corners=True)
        return s.output_conv2(out)


class DepthAnythingV2Small(nn.Module):
    """DA-V2-Small-shaped monocular depth network; random init (``init_weights``) unless loaded."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        features: int = 64,
        out_channels: tuple[int, ...] = (48, 96, 192, 384),
        taps: tuple[int, ...] = (2, 5, 8, 11),
        img_size: int = 518,
    ) -> None:
        super().__init__()
        self.taps = tuple(taps)
        self.pretrained = DinoViT(embed_dim, depth, heads, img_size)
        self.depth_head = DPTHead(embed_dim, features, tuple(out_channels))
        self.init_weights()

    def init_weights(self) -> None:
        """timm/DINOv2-style init: truncated-normal linears and position embedding, tiny cls token."""
        nn.init.trunc_normal_(self.pretrained.pos_embed, std=0.02)
        nn.init.normal_(self.pretrained.cls_token, std=1e-6)
        for m in self.pretrained.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # A positive last bias: an untrained network then outputs a positive, input-dependent map instead
        # of a dead all-zero ReLU output (exports stay checkable, untrained teachers usable in smoke runs).
        nn.init.constant_(self.depth_head.scratch.output_conv2[2].bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        feats = self.pretrained.get_intermediate_layers(x, self.taps)
        return F.relu(self.depth_head(feats, h, w)).squeeze(1)


# --------------------------------------------------------------------------------------------------
# Official checkpoint
def load_official_state_dict(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``depth_anything_v2_vits.pth`` (or any state dict with the same keys) into ``model``.

    CheckpointError naming the file on: missing/unreadable file, missing or unexpected keys, shape
    mismatches. A ``module.`` prefix (DataParallel) and a ``{"model": ...}`` wrapper are accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise CheckpointError(f"checkpoint {path} is not a readable torch state dict: {type(exc).__name__}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a flat state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the DA-V2-Small layout: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------------------------------
# ONNX export
def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    height: int = 518,
    width: int = 518,
    dynamic: bool = True,
    fp16: bool = False,
    metadata: dict | None = None,
    opset: int = 23,
) -> dict:
    """Export to ONNX (input ``pixel_values`` [B,3,H,W], output ``predicted_depth`` [B,H,W]) and verify.

    Uses the torch.export-based exporter (``dynamo=True``; the TorchScript one is deprecated since torch
    2.9). Opset 23 by default: scaled-dot-product attention then exports as the ONNX ``Attention`` op,
    which onnxruntime runs fused (measured faster than the opset-20 MatMul/Softmax decomposition on
    CPU, see bench/bench_teacher.py). With ``dynamic`` the batch and the patch grid are symbolic
    (H = 14*h, W = 14*w; the example batch is 2 because torch.export specialises a batch of 1). The file
    carries ``monolidar.output_kind=disparity`` and ``monolidar.short_side=min(height, width)`` (plus
    ``metadata``). The exported graph is run with onnxruntime on the export size and compared with torch
    (fp32 reference); a mismatch raises TeacherError. Returns {"path", "max_abs_diff", "ref_max",
    "parameters", "fp16"}.
    """
    import onnx
    import onnxruntime as ort

    if height % PATCH or width % PATCH or height <= 0 or width <= 0:
        raise ValueError(f"export size {height}x{width} must be positive multiples of {PATCH}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2 if dynamic else 1, 3, height, width, generator=gen)

    with torch.no_grad():
        reference = model.float()(example).numpy()
    export_model = model.half() if fp16 else model
    dummy = example.half() if fp16 else example
    dynamic_shapes = None
    if dynamic:
        hp, wp = torch.export.Dim("patches_h", min=2, max=512), torch.export.Dim("patches_w", min=2, max=512)
        dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024), 2: PATCH * hp, 3: PATCH * wp}}
    try:
        torch.onnx.export(
            export_model, (dummy,), str(path), input_names=["pixel_values"], output_names=["predicted_depth"],
            dynamic_shapes=dynamic_shapes, dynamo=True, external_data=False, verbose=False, opset_version=opset,
        )
    finally:
        model.float()

    proto = onnx.load(str(path))
    props = {"monolidar.output_kind": "disparity", "monolidar.short_side": str(min(height, width)),
             "monolidar.architecture": "depth-anything-v2-small", **{k: str(v) for k, v in (metadata or {}).items()}}
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = example.numpy().astype(np.float16 if fp16 else np.float32)
    got = session.run(["predicted_depth"], {"pixel_values": feed})[0].astype(np.float32)
    if got.shape != reference.shape:
        raise TeacherError(f"exported {path}: onnxruntime output shape {got.shape} != torch {reference.shape}")
    diff = float(np.abs(got - reference).max())
    ref_max = float(np.abs(reference).max())
    if ort_mismatch(got, reference, precision="fp16" if fp16 else "fp32") is not None:
        raise TeacherError(f"exported {path}: onnxruntime differs from torch by {diff:.3g} "
                           f"(allowed {ORT_RTOL['fp16' if fp16 else 'fp32']:g} x max(1, {ref_max:.3g}))")
    return {"path": str(path), "max_abs_diff": diff, "ref_max": ref_max,
            "parameters": count_parameters(model), "fp16": fp16}
