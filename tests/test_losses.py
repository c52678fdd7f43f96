"""Losses: masked L1/L2, dense L1, SSI invariances."""
from __future__ import annotations

import pytest
import torch

from model.losses import dense_l1, fit_scale_shift, gradient_matching, masked_l1, masked_l2, ssi_loss


def _depth(seed: int, shape=(2, 1, 24, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2.0 + 40.0 * torch.rand(shape, generator=g)


def test_masked_l1_l2_only_count_valid_pixels():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 100.0]]]])
    target = torch.tensor([[[[2.0, 4.0], [3.0, 0.0]]]])  # last pixel: no GT
    assert masked_l1(pred, target).item() == pytest.approx((1 + 2 + 0) / 3)
    assert masked_l2(pred, target).item() == pytest.approx((1 + 4 + 0) / 3)
    explicit = torch.tensor([[[[True, False], [False, False]]]])
    assert masked_l1(pred, target, explicit).item() == pytest.approx(1.0)
    assert dense_l1(pred, target).item() == pytest.approx(1.0)


def test_masked_loss_with_no_valid_pixel_is_zero_with_graph():
    pred = torch.ones(1, 1, 4, 4, requires_grad=True)
    loss = masked_l1(pred, torch.zeros(1, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None


def test_fit_scale_shift_recovers_affine():
    p = torch.rand(3, 1, 8, 8)
    y = 2.5 * p - 0.7
    s, t = fit_scale_shift(p, y, torch.ones_like(p, dtype=torch.bool))
    assert torch.allclose(s, torch.full((3,), 2.5), atol=1e-5)
    assert torch.allclose(t, torch.full((3,), -0.7), atol=1e-5)


def test_ssi_zero_for_affine_related_pair_in_disparity():
    depth = _depth(0)
    teacher = 3.0 / depth + 0.25  # an affine map of the true disparity
    assert ssi_loss(depth, teacher).item() < 1e-4
    # depth-space affinity is NOT disparity affinity: the loss sees the difference
    assert ssi_loss(depth, 3.0 * depth + 0.25).item() > 0.1


def test_ssi_invariant_to_affine_changes_of_target():
    pred, other = _depth(1), _depth(2)
    teacher = 1.0 / other
    base = ssi_loss(pred, teacher, grad_weight=0.5).item()
    for a, b in [(10.0, 3.0), (0.01, -5.0), (-2.0, 1.0)]:
        assert ssi_loss(pred, a * teacher + b, grad_weight=0.5).item() == pytest.approx(base, rel=1e-4)
    # and to a scale of the prediction (s absorbs it in disparity space)
    assert ssi_loss(pred * 7.0, teacher).item() == pytest.approx(ssi_loss(pred, teacher).item(), rel=1e-4)


def test_ssi_respects_mask():
    pred = _depth(3)
    teacher = 1.0 / pred
    mask = torch.zeros_like(pred, dtype=torch.bool)
    mask[..., :12, :] = True
    corrupted = teacher.clone()
    corrupted[..., 12:, :] = torch.rand_like(corrupted[..., 12:, :]) * 100  # garbage outside the mask
    assert ssi_loss(pred, corrupted, mask).item() < 1e-4
    assert ssi_loss(pred, corrupted).item() > 0.1
    nan_outside = teacher.clone()
    nan_outside[..., 12:, :] = float("nan")  # non-finite teacher pixels are ignored too
    assert ssi_loss(pred, nan_outside).item() < 1e-4


def test_ssi_has_gradients_and_gradient_term_is_masked():
    pred = _depth(4).requires_grad_(True)
    loss = ssi_loss(pred, 1.0 / _depth(5), grad_weight=1.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    r = torch.zeros(1, 1, 8, 8)
    r[..., 4:] = 5.0  # a step exactly at the mask border
    m = torch.zeros_like(r, dtype=torch.bool)
    m[..., :4] = True
    assert gradient_matching(r, m).item() == 0.0
    assert gradient_matching(r, torch.ones_like(m)).item() > 0.0
