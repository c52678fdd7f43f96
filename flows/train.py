"""Depth-completion training flows: stage-1 pre-training on a monolidar store, stage-2 fine-tuning on
KITTI-format data (sparse GT + SSI against the teacher), and KITTI-devkit evaluation.

The heavy loops are plain functions (``train_loop``, ``evaluate_items``); the Prefect flows only wire
inputs, logging, artifacts and the teacher cache. A run directory ``out`` holds:

- ``last.pt``: the latest checkpoint (every ``ckpt_every`` steps and at the end; resumed from when
  ``resume`` is on), ``final.pt``: the finished run (what ``--init`` / ``evaluate --ckpt`` take);
- ``train_log.jsonl``: one line per logged step (step, loss parts, lr, samples/s);
- ``teacher_cache/<teacher sha256[:16]>/<image sha256[:32]>.npy`` (fine-tuning): the teacher's raw
  output per image, computed once and reused across runs and resumes.

Determinism and exact resume: the batch of step ``s`` (sample indices, crop offsets, flips) is drawn
from ``np.random.default_rng(derive_seed(seed, "batch", s))`` and the learning rate is a function of
``s``; model init uses ``torch.manual_seed(derive_seed(seed, "init"))``. A run stopped at step k and
resumed therefore reaches the same weights as an uninterrupted run (same device and thread count).
"""
from __future__ import annotations

import json
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.failures import readable_failures
from model.checkpoint import (ModelEMA, init_from_checkpoint, load_checkpoint, model_from_checkpoint,
                              restore_training_state, save_checkpoint)
from model.completion import CompletionNet, create_model
from model.ipbasic import ipbasic_complete
from model.losses import dense_l1, masked_l1, masked_l2, ssi_loss
from model.metrics import METRIC_KEYS, aggregate_metrics, depth_metrics
from tasks.errors import InputError
from tasks.provenance import derive_seed, sha256_bytes

LAST_CKPT = "last.pt"
FINAL_CKPT = "final.pt"
BASELINES = ("ipbasic",)


# ----------------------------------------------------------------------------------------------------
# generic training loop


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5 % of ``lr`` (a pure function of the step: resumable)."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train_loop(
    *,
    model: CompletionNet,
    model_name: str,
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    compute_loss: Callable[[CompletionNet, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
    out: Path,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    ema_decay: float,
    ckpt_every: int,
    resume: bool,
    config: dict,
    stop_at: int | None = None,
    log_every: int = 10,
    logger=None,
    progress: bool = True,
) -> dict:
    """Optimise ``model`` for ``steps`` AdamW steps; checkpoints, EMA, resume. Returns a summary dict.

    ``make_batch(step)`` must be a pure function of the step (see the module docstring).
    ``stop_at``: stop after this many steps (with a checkpoint) although the schedule is for ``steps``.
    """
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = ModelEMA(model, decay=ema_decay)
    start = 0
    last = out / LAST_CKPT
    if resume and last.is_file():
        start = restore_training_state(load_checkpoint(last), model=model, model_name=model_name,
                                       optimizer=optimizer, ema=ema)
        if logger:
            logger.info(f"resumed from {last} at step {start}")
    end = steps if stop_at is None else min(steps, int(stop_at))

    def checkpoint(step: int, path: Path) -> Path:
        return save_checkpoint(path, model=model, model_name=model_name, optimizer=optimizer, ema=ema,
                               step=step, config=config)

    model.train()
    parts: dict[str, float] = {}
    t0, done = time.perf_counter(), 0
    bar = tqdm(total=steps, initial=start, desc=f"train {model_name}", disable=not progress, leave=False)
    with open(out / "train_log.jsonl", "a") as log:
        for step in range(start, end):
            batch = {k: v.to(device) for k, v in make_batch(step).items()}
            cur_lr = lr_at(step, steps, lr, warmup)
            for g in optimizer.param_groups:
                g["lr"] = cur_lr
            loss, parts = compute_loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}: {parts}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            ema.update(model)
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
            n = step + 1
            if n % log_every == 0 or n == end:
                rate = done * batch["rgb"].shape[0] / (time.perf_counter() - t0)
                log.write(json.dumps({"step": n, "lr": cur_lr, "samples_per_s": rate, **parts}) + "\n")
                log.flush()
                if logger:
                    loss_txt = " ".join(f"{k}={v:.4f}" for k, v in parts.items())
                    logger.info(f"step {n}/{steps} {loss_txt} lr={cur_lr:.2e} {rate:.2f} samples/s")
            if ckpt_every > 0 and n % ckpt_every == 0 and n < end:
                checkpoint(n, last)
    bar.close()
    final_step = max(start, end)
    checkpoint(final_step, last)
    finished = final_step >= steps
    if finished:
        checkpoint(final_step, out / FINAL_CKPT)
    elapsed = time.perf_counter() - t0
    return {
        "out": str(out),
        "checkpoint": str(out / (FINAL_CKPT if finished else LAST_CKPT)),
        "step": final_step,
        "finished": finished,
        "resumed_from": start,
        "last_loss": parts,
        "seconds": elapsed,
        "steps_per_s": done / elapsed if done else 0.0,
    }


def _new_model(model_name: str, seed: int, device: torch.device, **kwargs) -> CompletionNet:
    torch.manual_seed(derive_seed(seed, "init"))
    return create_model(model_name, **kwargs).to(device)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def _crop_box(rng: np.random.Generator, h: int, w: int, crop_h: int, crop_w: int) -> tuple[int, int, int, int]:
    ch, cw = min(crop_h, h), min(crop_w, w)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


# ----------------------------------------------------------------------------------------------------
# stage 1: pre-training on a monolidar store


def stage1_batch_maker(dataset, *, batch_size: int, crop_h: int, crop_w: int, seed: int) -> Callable[[int], dict]:
    """Batches of random crops (+ horizontal flips) of store samples; a pure function of the step."""
    n = len(dataset)
    if n == 0:
        raise InputError(f"{getattr(dataset, 'path', 'store')}: the store has no ok samples to train on")

    def make(step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(derive_seed(seed, "batch", step))
        idx = rng.integers(0, n, size=batch_size)
        items = {"rgb": [], "sparse": [], "depth": []}
        for i in idx:
            s = dataset[int(i)]
            h, w = s["rgb"].shape[-2:]
            y0, x0, ch, cw = _crop_box(rng, h, w, crop_h, crop_w)
            flip = bool(rng.random() < 0.5)
            for k in items:
                t = s[k][..., y0:y0 + ch, x0:x0 + cw]
                items[k].append(torch.flip(t, dims=[-1]) if flip else t)
        return {k: torch.stack(v).float() for k, v in items.items()}

    return make


def stage1_loss(model: CompletionNet, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense L1 (metres) against the store's metric depth on every pixel with a surface."""
    pred = model(batch["rgb"], batch["sparse"])
    loss = dense_l1(pred, batch["depth"])
    return loss, {"loss": float(loss.detach())}


@flow(name="pretrain", log_prints=True)
@readable_failures
def pretrain_flow(
    store: str,
    out: str,
    steps: int = 2000,
    batch_size: int = 4,
    crop_h: int = 256,
    crop_w: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    warmup: int = 100,
    model: str = "msdc_small",
    seed: int = 0,
    ema_decay: float = 0.999,
    ckpt_every: int = 200,
    resume: bool = True,
    stop_at: int | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Stage 1: train a completion network on a monolidar store (RGB + simulated LiDAR -> dense depth).

    Args:
        store: path of the Zarr store made by `monolidar build`.
        out: run directory (checkpoints `last.pt`/`final.pt`, `train_log.jsonl`).
        steps: optimiser steps of the whole schedule.
        batch_size: samples per step.
        crop_h: random crop height (clamped to the image height).
        crop_w: random crop width (clamped to the image width).
        lr: peak AdamW learning rate (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps.
        model: architecture name from model.completion.list_models().
        seed: seeds model init and every batch (same seed = same weights).
        ema_decay: decay of the weight EMA that evaluation and export use.
        ckpt_every: write `last.pt` every N steps (0 = only at the end).
        resume: continue from `out/last.pt` when it exists.
        stop_at: stop after this step (checkpointed), keeping the schedule of `steps`.
        threads: torch CPU threads (None = torch default).
        progress: show a tqdm progress bar.
    """
    from storage.dataset import CompletionDataset

    logger = get_run_logger()
    _set_threads(threads)
    dataset = CompletionDataset(store)
    device = _device()
    net = _new_model(model, seed, device)
    config = {"stage": 1, "store": str(store), "steps": steps, "batch_size": batch_size, "crop": [crop_h, crop_w],
              "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "model": model, "seed": seed,
              "ema_decay": ema_decay}
    logger.info(f"pretrain {model} on {store} ({len(dataset)} samples) -> {out}")
    summary = train_loop(
        model=net, model_name=model,
        make_batch=stage1_batch_maker(dataset, batch_size=batch_size, crop_h=crop_h, crop_w=crop_w, seed=seed),
        compute_loss=stage1_loss, out=Path(out), steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup,
        ema_decay=ema_decay, ckpt_every=ckpt_every, resume=resume, config=config, stop_at=stop_at,
        logger=logger, progress=progress,
    )
    logger.info(f"pretrain done: step {summary['step']} -> {summary['checkpoint']}")
    return summary


# ----------------------------------------------------------------------------------------------------
# stage 2: fine-tuning on KITTI-format data


def kitti_items(kitti: str | Path) -> list:
    """KITTI-DC items of a directory (either layout); InputError naming the path when none are found."""
    from storage.kitti import find_kitti_dc

    items = find_kitti_dc(kitti)
    if not items:
        raise InputError(f"{kitti}: no KITTI depth-completion frames found")
    return items


def image_key(rgb: np.ndarray) -> str:
    """Content hash of a decoded image (shape + pixels): the teacher cache key's image half."""
    return sha256_bytes(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode())


# NO_CACHE: the .npy files are the cache (keyed by image and teacher hashes); a Prefect-cached result
# could point at files that were deleted since.
@task(name="teacher-outputs", cache_policy=NO_CACHE)
def compute_teacher_outputs(kitti: str, teacher: str | None, cache_dir: str, threads: int | None = None) -> dict:
    """Run the teacher ONCE per image; cache ``<cache_dir>/<teacher sha[:16]>/<image sha[:32]>.npy``.

    The cached array is the teacher output converted to *disparity* (raw output for disparity
    teachers; 1/depth for metric ones, NaN where the depth is invalid). Returns {"files": [...] in
    item order, "teacher": identity, "computed": n, "cached": n}.
    """
    from model.teacher import Teacher
    from storage.kitti import load_kitti_item

    runtime = Teacher(teacher, threads=threads)
    folder = Path(cache_dir) / runtime.sha256[:16]
    folder.mkdir(parents=True, exist_ok=True)
    files, computed = [], 0
    for item in kitti_items(kitti):
        rgb = load_kitti_item(item)["rgb"]
        path = folder / f"{image_key(rgb)[:32]}.npy"
        if not path.is_file():
            raw = runtime.predict(rgb[None])[0]
            if runtime.output_kind == "metric":
                raw = np.where(raw > 0, 1.0 / np.maximum(raw, 1e-6), np.nan).astype(np.float32)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, raw.astype(np.float32))
            tmp.replace(path)
            computed += 1
        files.append(str(path))
    return {"files": files, "teacher": runtime.identity(), "computed": computed, "cached": len(files) - computed}


def stage2_batch_maker(items: list, teacher_files: list[str] | None, *, batch_size: int, crop_h: int, crop_w: int,
                       seed: int) -> Callable[[int], dict]:
    """Random crops (+ flips) of KITTI frames: rgb, sparse input, target (gt, else sparse), teacher disparity."""
    from storage.kitti import load_kitti_item

    @lru_cache(maxsize=64)  # decoded frames; a small set stays in memory, a large one streams
    def load(i: int) -> dict[str, np.ndarray]:
        s = load_kitti_item(items[i])
        rgb = s["rgb"].astype(np.float32).transpose(2, 0, 1) / 255.0
        target = s["gt"] if s["gt"] is not None else s["sparse"]
        arrays = {"rgb": rgb, "sparse": s["sparse"][None], "target": target[None].astype(np.float32)}
        if teacher_files is not None:
            t = np.load(teacher_files[i])
            if t.shape != rgb.shape[1:]:
                raise InputError(f"{teacher_files[i]}: cached teacher output {t.shape} does not fit image {rgb.shape[1:]}")
            arrays["teacher"] = t[None]
        return arrays

    n = len(items)

    def make(step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(derive_seed(seed, "batch", step))
        idx = rng.integers(0, n, size=batch_size)
        cols: dict[str, list] = {}
        for i in idx:
            s = load(int(i))
            h, w = s["rgb"].shape[-2:]
            y0, x0, ch, cw = _crop_box(rng, h, w, crop_h, crop_w)
            flip = bool(rng.random() < 0.5)
            for k, v in s.items():
                c = v[..., y0:y0 + ch, x0:x0 + cw]
                cols.setdefault(k, []).append(np.ascontiguousarray(c[..., ::-1] if flip else c))
        return {k: torch.from_numpy(np.stack(v)) for k, v in cols.items()}

    return make


def stage2_loss_fn(*, ssi_weight: float, grad_weight: float, loss: str) -> Callable:
    """Masked L1/L2 on the sparse ground truth + ssi_weight * SSI(prediction, teacher) in disparity space."""
    sup = {"l1": masked_l1, "l2": masked_l2}[loss]

    def compute(model: CompletionNet, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model(batch["rgb"], batch["sparse"])
        l_sup = sup(pred, batch["target"])
        parts = {"sup": float(l_sup.detach())}
        total = l_sup
        if ssi_weight > 0 and "teacher" in batch:
            l_ssi = ssi_loss(pred, batch["teacher"], grad_weight=grad_weight)
            total = total + ssi_weight * l_ssi
            parts["ssi"] = float(l_ssi.detach())
        parts["loss"] = float(total.detach())
        return total, parts

    return compute


@flow(name="finetune", log_prints=True)
@readable_failures
def finetune_flow(
    kitti: str,
    out: str,
    init: str | None = None,
    teacher: str | None = None,
    ssi_weight: float = 0.1,
    grad_weight: float = 0.0,
    loss: str = "l1",
    steps: int = 1000,
    batch_size: int = 4,
    crop_h: int = 256,
    crop_w: int = 512,
    lr: float = 5e-4,
    weight_decay: float = 1e-4,
    warmup: int = 50,
    model: str = "msdc_small",
    seed: int = 0,
    ema_decay: float = 0.999,
    ckpt_every: int = 200,
    resume: bool = True,
    stop_at: int | None = None,
    teacher_cache: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Stage 2: fine-tune on KITTI-format data: masked loss on sparse GT + ssi_weight * SSI vs the teacher.

    Args:
        kitti: KITTI depth-completion directory (drive layout or val_selection_cropped layout).
        out: run directory (checkpoints `last.pt`/`final.pt`, `train_log.jsonl`, teacher cache).
        init: stage-1 checkpoint to start from (its EMA weights); None = random init ("fine-tune only").
        teacher: teacher .onnx for the SSI term; None = the embedded default teacher.
        ssi_weight: lambda of the SSI term (0 disables it and the teacher is not run).
        grad_weight: weight of the SSI multi-scale gradient-matching term.
        loss: supervised loss on the ground truth, "l1" or "l2". Frames without GT are supervised on
            their sparse input points instead (the only metric signal they have).
        steps: optimiser steps of the whole schedule.
        batch_size: crops per step.
        crop_h: random crop height (clamped to the image).
        crop_w: random crop width (clamped to the image).
        lr: peak AdamW learning rate (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps.
        model: architecture name (must match `init`).
        seed: seeds model init and every batch.
        ema_decay: decay of the weight EMA that evaluation and export use.
        ckpt_every: write `last.pt` every N steps (0 = only at the end).
        resume: continue from `out/last.pt` when it exists.
        stop_at: stop after this step (checkpointed), keeping the schedule of `steps`.
        teacher_cache: directory for cached teacher outputs (default `out/teacher_cache`).
        threads: torch / onnxruntime CPU threads (None = defaults).
        progress: show a tqdm progress bar.
    """
    logger = get_run_logger()
    if loss not in ("l1", "l2"):
        raise InputError(f"loss must be 'l1' or 'l2', got {loss!r}")
    _set_threads(threads)
    items = kitti_items(kitti)
    teacher_files = None
    teacher_id = None
    if ssi_weight > 0:
        cache = compute_teacher_outputs(kitti, teacher, teacher_cache or str(Path(out) / "teacher_cache"), threads)
        teacher_files, teacher_id = cache["files"], cache["teacher"]
        logger.info(f"teacher {teacher_id['sha256'][:12]}: {cache['computed']} computed, {cache['cached']} cached")
    device = _device()
    net = _new_model(model, seed, device)
    if init:
        init_from_checkpoint(net, model, init)
        logger.info(f"initialised from {init}")
    config = {"stage": 2, "kitti": str(kitti), "init": init, "teacher": teacher_id, "ssi_weight": ssi_weight,
              "grad_weight": grad_weight, "loss": loss, "steps": steps, "batch_size": batch_size,
              "crop": [crop_h, crop_w], "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "model": model,
              "seed": seed, "ema_decay": ema_decay, "n_frames": len(items)}
    logger.info(f"finetune {model} on {kitti} ({len(items)} frames, ssi_weight={ssi_weight}) -> {out}")
    summary = train_loop(
        model=net, model_name=model,
        make_batch=stage2_batch_maker(items, teacher_files, batch_size=batch_size, crop_h=crop_h, crop_w=crop_w,
                                      seed=seed),
        compute_loss=stage2_loss_fn(ssi_weight=ssi_weight, grad_weight=grad_weight, loss=loss),
        out=Path(out), steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup, ema_decay=ema_decay,
        ckpt_every=ckpt_every, resume=resume, config=config, stop_at=stop_at, logger=logger, progress=progress,
    )
    logger.info(f"finetune done: step {summary['step']} -> {summary['checkpoint']}")
    return summary


# ----------------------------------------------------------------------------------------------------
# evaluation


def model_predictor(model: CompletionNet) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(rgb uint8 HxWx3, sparse HxW metres) -> dense depth HxW metres with a completion network."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def predict(rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1) / 255.0)[None].to(device)
        s = torch.from_numpy(sparse.astype(np.float32))[None, None].to(device)
        return model(x, s)[0, 0].cpu().numpy()

    return predict


def ipbasic_predictor(rgb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    return ipbasic_complete(sparse)


def evaluate_items(
    items: list,
    predictors: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    *,
    exclude_input: bool = False,
    out: Path | None = None,
    write_method: str | None = None,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Per-image metrics of every predictor on every frame with GT; optionally write KITTI PNG predictions.

    ``exclude_input``: score only GT pixels that were not given as sparse input (for GT-derived input).
    Returns {method: [per-image metric dicts with "name"]}.
    """
    from tqdm.auto import tqdm

    from storage.kitti import load_kitti_item, write_depth_png

    rows: dict[str, list[dict]] = {m: [] for m in predictors}
    for item in tqdm(items, desc="evaluate", disable=not progress, leave=False):
        s = load_kitti_item(item)
        if s["gt"] is None:
            continue
        mask = (s["sparse"] <= 0) if exclude_input else None
        for method, predict in predictors.items():
            pred = predict(s["rgb"], s["sparse"])
            rows[method].append({"name": s["name"], **depth_metrics(pred, s["gt"], mask)})
            if out is not None and method == write_method:
                write_depth_png(out / f"{s['name']}.png", pred)
    return rows


def _metrics_table(results: dict[str, dict]) -> list[dict]:
    return [{"method": m, **{k: round(r[k], 4) for k in METRIC_KEYS}, "n_images": r["n_images"]}
            for m, r in results.items()]


@flow(name="evaluate", log_prints=True)
@readable_failures
def evaluate_flow(
    kitti: str,
    ckpt: str | None = None,
    baseline: str | None = None,
    out: str | None = None,
    exclude_input: bool = False,
    use_ema: bool = True,
    compare_ipbasic: bool = True,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """KITTI-devkit metrics of a checkpoint (or a baseline) on a KITTI-format directory.

    Args:
        kitti: KITTI depth-completion directory (either layout) with ground truth.
        ckpt: completion checkpoint to evaluate (exclusive with `baseline`).
        baseline: classical method instead of a checkpoint: "ipbasic".
        out: directory for predictions (KITTI uint16 PNG, metres*256) and metrics.json.
        exclude_input: score only GT pixels that are not in the sparse input.
        use_ema: evaluate the checkpoint's EMA weights (else the raw weights).
        compare_ipbasic: also score IP-Basic on the same frames (the "ipbasic" entry / table row).
        threads: torch CPU threads (None = default).
        progress: show a tqdm progress bar.

    Returns the metrics dict: rmse_mm, mae_mm, irmse_1km, imae_1km, absrel, delta1, n_images, n_pixels,
    method, per_image, and "ipbasic" (the baseline's aggregate) when compare_ipbasic.
    """
    from prefect.artifacts import create_table_artifact

    logger = get_run_logger()
    _set_threads(threads)
    if (ckpt is None) == (baseline is None):
        raise InputError("evaluate needs exactly one of ckpt or baseline")
    if baseline is not None and baseline not in BASELINES:
        raise InputError(f"unknown baseline {baseline!r}; available: {', '.join(BASELINES)}")
    items = kitti_items(kitti)
    predictors: dict[str, Callable] = {}
    if ckpt is not None:
        info = load_checkpoint(ckpt)
        method = f"{info['model_name']}@{Path(ckpt).name}"
        predictors[method] = model_predictor(model_from_checkpoint(info, use_ema=use_ema).to(_device()))
    else:
        method = baseline
    if baseline == "ipbasic" or compare_ipbasic:
        predictors["ipbasic"] = ipbasic_predictor
    out_dir = Path(out) if out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows = evaluate_items(items, predictors, exclude_input=exclude_input, out=out_dir, write_method=method,
                          progress=progress)
    if not rows[method]:
        raise InputError(f"{kitti}: no frame has ground truth to evaluate against")
    results = {m: aggregate_metrics(r) for m, r in rows.items()}
    report = {"method": method, **results[method], "per_image": rows[method], "kitti": str(kitti),
              "ckpt": ckpt, "baseline": baseline, "exclude_input": exclude_input}
    if "ipbasic" in results and method != "ipbasic":
        report["ipbasic"] = results["ipbasic"]
    if out_dir:
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    table = _metrics_table(results)
    create_table_artifact(table=table, key="completion-metrics",
                          description=f"KITTI-devkit metrics on {kitti} ({results[method]['n_images']} images)")
    for r in table:
        logger.info(" ".join(f"{k}={v}" for k, v in r.items()))
    return report


def export_onnx(ckpt: str, path: str, **kwargs) -> dict:
    """Completion checkpoint -> ONNX with an onnxruntime-vs-torch check (see model.export.export_onnx)."""
    from model.export import export_onnx as _export

    return _export(ckpt, path, **kwargs)

