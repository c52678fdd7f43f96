"""Training objectives: ``compute(model, batch) -> (loss, parts)`` for ``model.training.train_loop``."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from model.conventions import imagenet_normalise
from model.losses import dense_l1, masked_l1, masked_l2, ssi_disparity_loss, ssi_loss, ssi_median_mad_loss

SSI_VARIANTS = ("lsq", "median_mad")
Objective = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]


def stage1_objective(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense L1 (metres) against the store's metric depth on every pixel with a surface."""
    pred = model(batch["rgb"], batch["sparse"])
    loss = dense_l1(pred, batch["depth"])
    return loss, {"loss": float(loss.detach())}


def stage2_objective(*, ssi_weight: float, grad_weight: float = 0.0, loss: str = "l1",
                     ssi_variant: str = "lsq") -> Objective:
    """Masked L1/L2 on the sparse ground truth + ssi_weight * SSI(prediction, teacher) in disparity space.

    ``ssi_variant``: "lsq" (closed-form least-squares scale and shift per image, ``losses.ssi_loss``) or
    "median_mad" (DMD3C's released choice: median/MAD normalisation in random crops, needs ``ssi_boxes``).
    """
    if loss not in ("l1", "l2"):
        raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
    if ssi_variant not in SSI_VARIANTS:
        raise ValueError(f"ssi_variant must be one of {SSI_VARIANTS}, got {ssi_variant!r}")
    sup = {"l1": masked_l1, "l2": masked_l2}[loss]

    def compute(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model(batch["rgb"], batch["sparse"])
        l_sup = sup(pred, batch["target"])
        parts = {"sup": float(l_sup.detach())}
        total = l_sup
        if ssi_weight > 0 and "teacher" in batch:
            if ssi_variant == "lsq":
                l_ssi = ssi_loss(pred, batch["teacher"], grad_weight=grad_weight)
            else:
                l_ssi = ssi_median_mad_loss(pred, batch["teacher"], batch["ssi_boxes"])
            total = total + ssi_weight * l_ssi
            parts["ssi"] = float(l_ssi.detach())
        parts["loss"] = float(total.detach())
        return total, parts

    return compute


def teacher_objective(*, log_depth_weight: float = 0.0) -> Objective:
    """The embedded teacher: SSI disparity loss (+ the evaluation-protocol log-depth term)."""

    def compute(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = ssi_disparity_loss(model(imagenet_normalise(batch["rgb"])), batch["disparity"],
                                  log_depth_weight=log_depth_weight)
        return loss, {"loss": float(loss.detach())}

    return compute
