"""Losses for depth completion.

Shapes: every tensor is (B,1,H,W) (or (B,H,W)); depth in metres, 0 in a target = no data.

- :func:`masked_l1` / :func:`masked_l2`: supervised losses on sparse or semi-dense ground truth,
  averaged over the valid pixels of the whole batch.
- :func:`dense_l1`: stage-1 loss against the dense teacher-derived depth (0 = sky/no surface is ignored).
- :func:`ssi_loss`: scale-and-shift-invariant loss against the teacher (DESIGN.md §4).

SSI space: the teacher outputs *affine-invariant disparity*, so the comparison happens in disparity
space. The predicted depth is turned into disparity ``1 / depth`` (depth clamped to ``min_depth``),
and per image:

1. the target is normalised over the valid mask to zero mean and unit standard deviation — this makes
   the loss value independent of any affine change ``a*target + b`` (a != 0) of the teacher output,
   which has arbitrary scale and shift;
2. the prediction is normalised the same way (for numerical stability only: it changes nothing
   else because step 3 absorbs any affine map of the prediction);
3. the closed-form least-squares scale ``s`` and shift ``t`` mapping the prediction onto the target
   over the mask are computed (the 2x2 normal equations; with centred inputs ``s = <p, y> / <p, p>``,
   ``t = mean(y) - s * mean(p)``);
4. the loss is ``mean_mask |s * p + t - y|``, optionally plus ``grad_weight`` times the MiDaS
   multi-scale gradient-matching term on the residual ``s * p + t - y`` (scales 1, 2, 4, ...).

Gradients flow through ``s`` and ``t`` (they are differentiable functions of the prediction).
"""
from __future__ import annotations

import torch

_EPS = 1e-6


def _as4d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 3 else x


def _valid_mask(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return (target > 0) if mask is None else mask.bool() & torch.isfinite(target)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |pred - target| over ``mask`` (default: target > 0). Zero (with a graph) if nothing is valid."""
    pred, target = _as4d(pred), _as4d(target)
    m = _valid_mask(target, None if mask is None else _as4d(mask))
    n = m.sum()
    diff = torch.where(m, (pred - target).abs(), torch.zeros_like(pred))
    return diff.sum() / n.clamp(min=1)


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (pred - target)^2 over ``mask`` (default: target > 0). Zero if nothing is valid."""
    pred, target = _as4d(pred), _as4d(target)
    m = _valid_mask(target, None if mask is None else _as4d(mask))
    diff = torch.where(m, (pred - target) ** 2, torch.zeros_like(pred))
    return diff.sum() / m.sum().clamp(min=1)


def dense_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage-1 loss: L1 against the dense target depth on every pixel that has a surface (target > 0)."""
    return masked_l1(pred, target, None)


def _masked_standardise(x: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean / unit std over the mask (x, m: (B,N); n: (B,1) valid counts)."""
    mean = (x * m).sum(1, keepdim=True) / n
    xc = (x - mean) * m
    std = torch.sqrt((xc**2).sum(1, keepdim=True) / n + _EPS**2)
    return xc / std


def fit_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form per-image least squares ``argmin_{s,t} sum_mask (s*pred + t - target)^2``.

    Inputs (B,1,H,W) or (B,H,W); returns ``s`` and ``t`` of shape (B,). A constant prediction gives
    s = 0 and t = mean target (the degenerate normal equations' minimum-norm answer).
    """
    b = pred.shape[0]
    p, y, m = pred.reshape(b, -1), target.reshape(b, -1), mask.reshape(b, -1).to(pred.dtype)
    n = m.sum(1).clamp(min=1)
    mp = (p * m).sum(1) / n
    my = (y * m).sum(1) / n
    pc = (p - mp[:, None]) * m
    yc = (y - my[:, None]) * m
    denom = (pc * pc).sum(1)
    s = torch.where(denom > 0, (pc * yc).sum(1) / denom.clamp(min=1e-30), torch.zeros_like(denom))
    t = my - s * mp
    return s, t


def gradient_matching(residual: torch.Tensor, mask: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """MiDaS multi-scale gradient term: mean over scales of masked |d/dx r| + |d/dy r| (r: (B,1,H,W))."""
    total = residual.new_zeros(())
    r, m = residual, mask.to(residual.dtype)
    for k in range(scales):
        if k:
            r, m = r[:, :, ::2, ::2], m[:, :, ::2, ::2]
        if r.shape[-1] < 2 or r.shape[-2] < 2:
            break
        mx = m[..., :, 1:] * m[..., :, :-1]
        my = m[..., 1:, :] * m[..., :-1, :]
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * mx
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * my
        total = total + (gx.sum() + gy.sum()) / (mx.sum() + my.sum()).clamp(min=1)
    return total / scales


def ssi_loss(
    pred_depth: torch.Tensor,
    teacher_disparity: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_depth: float = 0.1,
    grad_weight: float = 0.0,
    grad_scales: int = 4,
) -> torch.Tensor:
    """Scale-and-shift-invariant loss in disparity space (see the module docstring).

    ``pred_depth``: predicted depth in metres; ``teacher_disparity``: raw teacher output (any affine
    scale/shift); ``mask``: pixels to compare (default: finite teacher values). Returns the batch mean
    of the per-image losses; images with fewer than 2 valid pixels contribute 0.
    """
    pred_depth, teacher_disparity = _as4d(pred_depth), _as4d(teacher_disparity)
    m = torch.isfinite(teacher_disparity) if mask is None else (_as4d(mask).bool() & torch.isfinite(teacher_disparity))
    b = pred_depth.shape[0]
    disp = 1.0 / pred_depth.clamp(min=min_depth)
    y_raw = torch.where(m, teacher_disparity, torch.zeros_like(teacher_disparity))
    mf = m.reshape(b, -1).to(disp.dtype)
    n = mf.sum(1, keepdim=True).clamp(min=1)
    y = _masked_standardise(y_raw.reshape(b, -1), mf, n)
    p = _masked_standardise(disp.reshape(b, -1), mf, n)
    s, t = fit_scale_shift(p, y, mf)
    residual = (s[:, None] * p + t[:, None] - y) * mf
    per_image = residual.abs().sum(1) / n.squeeze(1)
    enough = (mf.sum(1) >= 2).to(disp.dtype)
    loss = (per_image * enough).sum() / b
    if grad_weight > 0:
        loss = loss + grad_weight * gradient_matching(residual.reshape_as(disp), m, grad_scales)
    return loss
