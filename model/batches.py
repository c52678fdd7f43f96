"""Batch makers: ``make(step) -> {name: tensor}``, pure functions of the step (exact resume, any worker count).

Every random choice of step ``s`` (samples, crop offsets, flips) comes from
``np.random.default_rng(derive_seed(seed, "batch", s))``; DMD3C-style SSI crop boxes have their own stream
(``derive_seed(seed, "ssi-crops", s)``), so asking for them leaves every other draw unchanged.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from tasks.errors import InputError
from tasks.provenance import derive_seed

Batch = dict[str, torch.Tensor]


def crop_box(rng: np.random.Generator, h: int, w: int, crop_h: int, crop_w: int) -> tuple[int, int, int, int]:
    """A random (y0, x0, h, w) window of at most crop_h x crop_w inside an h x w image."""
    ch, cw = min(crop_h, h), min(crop_w, w)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


def ssi_crop_boxes(seed: int, step: int, batch_size: int, h: int, w: int, n: int, share: float = 0.5) -> torch.Tensor:
    """(B, n, 4) random crop boxes covering ``share`` of each side, for ``losses.ssi_median_mad_loss``."""
    rng = np.random.default_rng(derive_seed(seed, "ssi-crops", step))
    ch, cw = max(2, int(h * share)), max(2, int(w * share))
    boxes = [[crop_box(rng, h, w, ch, cw) for _ in range(n)] for _ in range(batch_size)]
    return torch.tensor(boxes, dtype=torch.int64)


def store_batch_maker(dataset, *, batch_size: int, crop_h: int, crop_w: int, seed: int) -> Callable[[int], Batch]:
    """Stage 1: random crops (+ horizontal flips) of store samples: rgb, sparse, depth."""
    n = len(dataset)
    if n == 0:
        raise InputError(f"{getattr(dataset, 'path', 'store')}: the store has no ok samples to train on")

    def make(step: int) -> Batch:
        rng = np.random.default_rng(derive_seed(seed, "batch", step))
        idx = rng.integers(0, n, size=batch_size)
        items = {"rgb": [], "sparse": [], "depth": []}
        for i in idx:
            s = dataset[int(i)]
            h, w = s["rgb"].shape[-2:]
            y0, x0, ch, cw = crop_box(rng, h, w, crop_h, crop_w)
            flip = bool(rng.random() < 0.5)
            for k in items:
                t = s[k][..., y0:y0 + ch, x0:x0 + cw]
                items[k].append(torch.flip(t, dims=[-1]) if flip else t)
        return {k: torch.stack(v).float() for k, v in items.items()}

    return make


def kitti_batch_maker(frame: Callable[[int], dict], n: int, teacher: Callable[[int], np.ndarray] | None, *,
                      batch_size: int, crop_h: int, crop_w: int, seed: int, ssi_crops: int = 0) -> Callable[[int], Batch]:
    """Stage 2: random crops (+ flips) of ``n`` KITTI frames (``frame(i)`` -> {"rgb", "sparse", "gt"}, e.g.
    storage.kitti's ``load_kitti_item``): rgb, sparse input, target (GT, else the sparse input), and with
    ``teacher`` (index -> teacher disparity HxW) the teacher's disparity; ``ssi_crops`` > 0 adds
    ``ssi_boxes`` for the median/MAD SSI variant."""

    @lru_cache(maxsize=64)  # decoded frames; a small set stays in memory, a large one streams
    def load(i: int) -> dict[str, np.ndarray]:
        s = frame(i)
        rgb = s["rgb"].astype(np.float32).transpose(2, 0, 1) / 255.0
        target = s["gt"] if s["gt"] is not None else s["sparse"]
        arrays = {"rgb": rgb, "sparse": s["sparse"][None], "target": target[None].astype(np.float32)}
        if teacher is not None:
            t = teacher(i)
            if t.shape != rgb.shape[1:]:
                raise InputError(f"frame {i}: teacher output {t.shape} does not fit image {rgb.shape[1:]}")
            arrays["teacher"] = t[None].astype(np.float32)
        return arrays

    def make(step: int) -> Batch:
        rng = np.random.default_rng(derive_seed(seed, "batch", step))
        idx = rng.integers(0, n, size=batch_size)
        cols: dict[str, list] = {}
        for i in idx:
            s = load(int(i))
            h, w = s["rgb"].shape[-2:]
            y0, x0, ch, cw = crop_box(rng, h, w, crop_h, crop_w)
            flip = bool(rng.random() < 0.5)
            for k, v in s.items():
                c = v[..., y0:y0 + ch, x0:x0 + cw]
                cols.setdefault(k, []).append(np.ascontiguousarray(c[..., ::-1] if flip else c))
        batch = {k: torch.from_numpy(np.stack(v)) for k, v in cols.items()}
        if ssi_crops > 0:
            h, w = batch["rgb"].shape[-2:]
            batch["ssi_boxes"] = ssi_crop_boxes(seed, step, batch_size, h, w, ssi_crops)
        return batch

    return make


def render_batch_maker(groups: list[tuple[np.ndarray, np.ndarray]], *, batch_size: int, crop_width: int,
                       seed: int) -> Callable[[int], Batch]:
    """Embedded teacher: augmented batches from same-shape groups of (rgb uint8 (N,H,W,3), disparity (N,H,W)).

    A group is chosen in proportion to its size; wide frames are cropped to ``crop_width`` columns at a random
    offset, keeping the full height (the horizon cue). Draws come from one seeded stream in step order (the
    teacher's runs are not resumed), so the same seed gives the same batches.
    """
    from model.augmentation import augment

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    sizes = np.array([len(g[0]) for g in groups], np.float64)

    def make(step: int) -> Batch:
        rgb_all, disp_all = groups[int(rng.choice(len(groups), p=sizes / sizes.sum()))]
        idx = rng.choice(len(rgb_all), size=batch_size, replace=len(rgb_all) < batch_size)
        rgb, disp = rgb_all[idx], disp_all[idx]
        w = rgb.shape[2]
        if w > crop_width:
            x0 = int(rng.integers(0, w - crop_width + 1))
            rgb, disp = rgb[:, :, x0:x0 + crop_width], disp[:, :, x0:x0 + crop_width]
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
        rgb_t, disp_t = augment(rgb_t, torch.from_numpy(np.ascontiguousarray(disp)).float(), gen)
        return {"rgb": rgb_t, "disparity": disp_t}

    return make
