"""Losses: masked L1/L2, dense L1, SSI invariances."""
from __future__ import annotations

import numpy as np
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


def test_median_mad_ssi_ignores_affine_teacher_changes_and_needs_the_crops():
    from model.losses import ssi_median_mad_loss

    g = torch.Generator().manual_seed(0)
    depth = 2.0 + 30.0 * torch.rand(2, 1, 24, 40, generator=g)
    teacher = 1.0 / depth  # the prediction's own disparity
    boxes = torch.tensor([[[0, 0, 12, 20], [10, 15, 12, 20]], [[5, 5, 12, 20], [12, 20, 12, 20]]])
    assert float(ssi_median_mad_loss(depth, teacher, boxes)) < 1e-5
    assert float(ssi_median_mad_loss(depth, 7.0 * teacher + 3.0, boxes)) < 1e-4  # scale and shift of the teacher
    pred = depth.clone().requires_grad_(True)
    noisy = teacher + 0.02 * torch.rand(teacher.shape, generator=g)
    loss = ssi_median_mad_loss(pred, noisy, boxes)
    loss.backward()
    assert float(loss) > 1e-3 and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # Pixels outside every crop get no gradient: the normalisation is per crop.
    outside = torch.ones(2, 1, 24, 40, dtype=torch.bool)
    for b in range(2):
        for y0, x0, h, w in boxes[b].tolist():
            outside[b, 0, y0:y0 + h, x0:x0 + w] = False
    assert pred.grad[outside].abs().max() == 0


def test_one_onnx_tolerance_rule():
    from model.export import ort_mismatch

    ref = np.array([[0.5, 80.0]])
    assert ort_mismatch(ref + 0.05, ref) is None  # 1e-3 of the output's magnitude (80) = 0.08
    assert ort_mismatch(ref + 0.1, ref) == pytest.approx(0.1)
    assert ort_mismatch(np.zeros((1, 3)), ref) == float("inf")
    assert ort_mismatch(ref + 0.1, ref, precision="fp16") is None
    small = np.array([0.01, 0.02])
    assert ort_mismatch(small + 5e-4, small) is None and ort_mismatch(small + 2e-3, small) is not None


def test_one_training_loop_for_both_networks(monkeypatch):
    """The embedded teacher and the completion flows both run model.training.train_loop."""
    import flows.train
    import model.training as training
    from model.embedded_teacher import train_network

    calls = []
    real = training.train_loop

    def spy(model, **kw):
        calls.append(type(model).__name__)
        return real(model, **kw)

    monkeypatch.setattr(training, "train_loop", spy)
    rgb = np.random.default_rng(0).integers(0, 255, (2, 28, 42, 3), dtype=np.uint8)
    train_network([(rgb, np.ones((2, 28, 42), np.float32))], steps=1, seed=0, batch=2, crop_width=42, threads=1,
                  log=lambda m: None)
    assert calls == ["DepthNetSmall"] and flows.train.train_loop is real
