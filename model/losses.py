"""Losses for depth completion.

Shapes: every tensor is (B,1,H,W) (or (B,H,W)); depth in metres, 0 in a target = no data.

- :func:`masked_l1` / :func:`masked_l2`: supervised losses on sparse or semi-dense ground truth,
  averaged over the valid pixels of the whole batch.
- :func:`dense_l1`: stage-1 loss against the dense teacher-derived depth (0 = sky/no surface is ignored).
- :func:`ssi_loss`: scale-and-shift-invariant loss against the teacher (DESIGN.md §4), closed-form
  least squares; :func:`ssi_median_mad_loss`: DMD3C's variant (median/MAD normalisation in random crops);
- :func:`ssi_disparity_loss`, :func:`aligned_log_depth_error`: the embedded teacher's training loss.

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
    """MiDaS multi-scale gradient term: mean over scales of masked |d/dx r| + |d/dy r| (r: (B,1,H,W) or (B,H,W))."""
    total = residual.new_zeros(())
    r, m = residual, mask.to(residual.dtype)
    for k in range(scales):
        if k:
            r, m = r[..., ::2, ::2], m[..., ::2, ::2]
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


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``s * pred + t`` with the per-image least-squares ``s, t`` of :func:`fit_scale_shift` (differentiable)."""
    s, t = fit_scale_shift(pred, target, mask)
    shape = (-1,) + (1,) * (pred.dim() - 1)
    return s.view(shape) * pred + t.view(shape)


# ----------------------------------------------------------------------------------- DMD3C's SSI variant
def _masked_median(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-row lower median of x over m (x, m: (B, N)); rows with no valid value give 0."""
    big = torch.finfo(x.dtype).max
    vals = torch.where(m, x, torch.full_like(x, big)).sort(dim=1).values
    n = m.sum(1)
    idx = ((n - 1).clamp(min=0) // 2).view(-1, 1)
    return torch.where(n > 0, vals.gather(1, idx).squeeze(1), torch.zeros_like(n, dtype=x.dtype))


def _median_mad_normalise(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(x - median) / mean|x - median| over the mask, per row (x, m: (B, N))."""
    med = _masked_median(x, m)
    xc = (x - med[:, None]) * m
    mad = xc.abs().sum(1) / m.sum(1).clamp(min=1)
    return xc / mad.clamp(min=_EPS)[:, None]


def ssi_median_mad_loss(
    pred_depth: torch.Tensor,
    teacher_disparity: torch.Tensor,
    boxes: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_depth: float = 0.1,
) -> torch.Tensor:
    """DMD3C's released SSI variant: in each random crop, prediction and teacher disparity are each
    normalised by their own median and mean absolute deviation (no least-squares fit), then compared by L1.

    ``boxes``: (B, n, 4) int crop boxes (y0, x0, h, w) per image, drawn by the batch maker (so the loss stays
    a pure function of the batch). Returns the mean over crops with >= 2 valid pixels.
    """
    pred_depth, teacher_disparity = _as4d(pred_depth), _as4d(teacher_disparity)
    m = torch.isfinite(teacher_disparity) if mask is None else (_as4d(mask).bool() & torch.isfinite(teacher_disparity))
    disp = 1.0 / pred_depth.clamp(min=min_depth)
    y_all = torch.where(m, teacher_disparity, torch.zeros_like(teacher_disparity))
    total, count = disp.new_zeros(()), 0
    for b in range(disp.shape[0]):
        for y0, x0, h, w in boxes[b].tolist():
            mc = m[b, 0, y0:y0 + h, x0:x0 + w].reshape(1, -1)
            if int(mc.sum()) < 2:
                continue
            p = _median_mad_normalise(disp[b, 0, y0:y0 + h, x0:x0 + w].reshape(1, -1), mc)
            y = _median_mad_normalise(y_all[b, 0, y0:y0 + h, x0:x0 + w].reshape(1, -1), mc)
            total = total + ((p - y).abs() * mc).sum() / mc.sum()
            count += 1
    return total / max(count, 1)


# ----------------------------------------------------------------------------------- embedded teacher
def ssi_disparity_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                       grad_weight: float = 0.5, log_depth_weight: float = 0.0,
                       max_depth: float = 80.0) -> torch.Tensor:
    """The embedded teacher's loss: scale-and-shift-invariant L1 in disparity space (+ gradient matching).

    ``pred``: the network's relative disparity (B,H,W); ``target``: true disparity 1/depth (0 = sky).
    Each target is first normalised by its mean absolute deviation from its median, so near indoor scenes
    and far streets weigh the same. A sign term (relu(-correlation)) keeps the least-squares scale positive.
    ``log_depth_weight`` > 0 adds ``aligned_log_depth_error``.
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
    loss = l1 + grad_weight * gradient_matching(aligned - target_n, mask) + torch.relu(-corr).mean()
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
    aligned = floor + torch.nn.functional.softplus(aligned - floor, beta=50.0 / floor)
    err = (aligned.log() - target.clamp_min(floor).log()).abs() * valid
    per_image = err.sum((-2, -1)) / valid.sum((-2, -1)).clamp_min(1)
    return per_image[valid.flatten(1).any(1)].mean() if valid.any() else pred.new_zeros(())
