"""Conventions every model module shares, defined once: ImageNet input statistics, metric depth <->
disparity, parameter counting."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# RGB in [0, 1] is normalised with these (the Depth Anything V2 / torchvision convention, DESIGN.md §4).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) float RGB in [0, 1] -> ImageNet-normalised network input."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def imagenet_normalise_np(rgb_unit: np.ndarray) -> np.ndarray:
    """(..., 3) float32 RGB in [0, 1] (channels last) -> ImageNet-normalised, same layout."""
    return (rgb_unit - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def metric_to_disparity(depth: np.ndarray, *, invalid: float = float("nan"), min_depth: float = 1e-6) -> np.ndarray:
    """Metric depth (metres, <= 0 = none) -> disparity 1/depth (float32); ``invalid`` where there is none."""
    depth = np.asarray(depth)
    return np.where(depth > 0, 1.0 / np.maximum(depth, min_depth), invalid).astype(np.float32)


def teacher_disparity(raw: np.ndarray, output_kind: str) -> np.ndarray:
    """A teacher's raw output as disparity: untouched for disparity teachers, 1/depth (NaN = none) for
    metric ones."""
    return np.asarray(raw, np.float32) if output_kind == "disparity" else metric_to_disparity(raw)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
