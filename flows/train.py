"""Depth-completion training flows: stage-1 pre-training on monolidar stores, stage-2 fine-tuning on
KITTI-format data (sparse GT + SSI against the teacher), and KITTI-devkit evaluation. Wiring only: the loop
(``model.training``), schedules, batch makers, objectives, evaluation and checkpoints live in ``model/``.

A run directory ``out`` holds ``last.pt`` (every ``ckpt_every`` steps and at the end; resumed from when
``resume`` is on), ``final.pt`` (the finished run: what ``--init`` / ``evaluate --ckpt`` take) and
``train_log.jsonl`` (one line per logged step: loss parts, window mean loss, lr, samples/s). Fine-tuning's
teacher outputs go to the same Zarr ``ArrayCache`` the build uses (``teacher`` namespace, key
``model.teacher.teacher_output_key``), by default ``<out's parent>/.monolidar-cache``.

Determinism and exact resume: see ``model.batches`` and ``model.training``; model init seeds torch with
``derive_seed(seed, "init")`` (``model.training.seeded_model``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.failures import readable_failures
from model.batches import kitti_batch_maker, store_batch_maker
from model.checkpoint import (FINAL_CKPT, LAST_CKPT, CompletionCheckpoints, init_from_checkpoint, load_checkpoint,
                              model_from_checkpoint)
from model.completion import CompletionNet
from model.evaluation import evaluate_items, ipbasic_predictor, metrics_table, model_predictor
from model.metrics import aggregate_metrics
from model.objectives import SSI_VARIANTS, stage1_objective, stage2_objective
from model.schedules import warmup_then_cosine
from model.training import seeded_model, set_torch_threads, train_loop, training_device
from tasks.errors import InputError
from tasks.provenance import sha256_bytes

__all__ = ["FINAL_CKPT", "LAST_CKPT", "pretrain_flow", "finetune_flow", "evaluate_flow", "compute_teacher_outputs"]
BASELINES = ("ipbasic",)


def _run(net: CompletionNet, model_name: str, *, make_batch, objective, out: str, steps: int, lr: float,
         weight_decay: float, warmup: int, ema_decay: float, ckpt_every: int, resume: bool, config: dict,
         stop_at: int | None, logger, progress: bool) -> dict:
    summary = train_loop(
        net, make_batch=make_batch, compute_loss=objective, steps=steps,
        lr_at=lambda step, _progress: warmup_then_cosine(step, steps, lr, warmup), lr=lr,
        weight_decay=weight_decay, ema_decay=ema_decay,
        checkpointer=CompletionCheckpoints(out, model_name, config, resume=resume), ckpt_every=ckpt_every,
        stop_at=stop_at, log_file=Path(out) / "train_log.jsonl", log=logger.info,
        progress_bar=f"train {model_name}" if progress else None)
    summary.pop("ema")
    return {"out": str(out), **summary}


@flow(name="pretrain", log_prints=True)
@readable_failures
def pretrain_flow(
    store: str | list[str],
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
        store: path of the Zarr store made by `monolidar build`, or a list of stores trained on as one.
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
    from storage.dataset import open_stores

    logger = get_run_logger()
    set_torch_threads(threads)
    stores = [store] if isinstance(store, (str, Path)) else list(store)
    dataset = open_stores(stores)
    store = str(stores[0]) if len(stores) == 1 else [str(s) for s in stores]
    device = training_device()
    net = seeded_model(model, seed, device)
    config = {"stage": 1, "store": str(store), "steps": steps, "batch_size": batch_size, "crop": [crop_h, crop_w],
              "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "model": model, "seed": seed,
              "ema_decay": ema_decay}
    logger.info(f"pretrain {model} on {store} ({len(dataset)} samples) -> {out}")
    summary = _run(net, model, out=out, steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup,
                   make_batch=store_batch_maker(dataset, batch_size=batch_size, crop_h=crop_h, crop_w=crop_w, seed=seed),
                   objective=stage1_objective, ema_decay=ema_decay, ckpt_every=ckpt_every, resume=resume,
                   config=config, stop_at=stop_at, logger=logger, progress=progress)
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


# NO_CACHE: the ArrayCache is the cache (keyed by image and teacher); a Prefect-cached result could name
# entries that were deleted since.
@task(name="teacher-outputs", cache_policy=NO_CACHE)
def compute_teacher_outputs(kitti: str, teacher: str | None, cache_dir: str, threads: int | None = None) -> dict:
    """Run the teacher ONCE per image into ``ArrayCache(cache_dir)`` ("teacher" namespace, raw output at the
    image's resolution, key ``teacher_output_key``). Returns {"keys": [...] in item order, "teacher": identity,
    "computed": n, "cached": n}."""
    from model.teacher import Teacher, teacher_output_key
    from storage.cache import ArrayCache
    from storage.kitti import load_kitti_item

    runtime = Teacher(teacher, threads=threads)
    ident = runtime.identity()
    cache = ArrayCache(cache_dir)
    keys, computed = [], 0
    for item in kitti_items(kitti):
        rgb = load_kitti_item(item)["rgb"]
        key = teacher_output_key(image_key(rgb), ident)
        if not cache.has("teacher", key):
            cache.put("teacher", key, np.ascontiguousarray(runtime.predict(rgb[None])[0], dtype=np.float32))
            computed += 1
        keys.append(key)
    return {"keys": keys, "teacher": ident, "computed": computed, "cached": len(keys) - computed}


def _teacher_loader(cache_dir: str, keys: list[str], output_kind: str) -> Callable[[int], np.ndarray]:
    """Item index -> the cached teacher output as disparity."""
    from model.conventions import teacher_disparity
    from storage.cache import ArrayCache

    cache = ArrayCache(cache_dir)
    return lambda i: teacher_disparity(cache.get("teacher", keys[i]), output_kind)


@flow(name="finetune", log_prints=True)
@readable_failures
def finetune_flow(
    kitti: str,
    out: str,
    init: str | None = None,
    teacher: str | None = None,
    ssi_weight: float = 0.1,
    grad_weight: float = 0.0,
    ssi_variant: str = "lsq",
    ssi_crops: int = 4,
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
        grad_weight: weight of the SSI multi-scale gradient-matching term ("lsq" variant).
        ssi_variant: "lsq" (closed-form least-squares scale and shift per image) or "median_mad"
            (DMD3C's released choice: median/MAD normalisation of both maps in random crops).
        ssi_crops: random crops per image for the "median_mad" variant (half of each side).
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
        teacher_cache: ArrayCache root for teacher outputs (default `<out's parent>/.monolidar-cache`).
        threads: torch / onnxruntime CPU threads (None = defaults).
        progress: show a tqdm progress bar.
    """
    logger = get_run_logger()
    from storage.cache import default_cache_dir
    from storage.kitti import load_kitti_item

    if loss not in ("l1", "l2"):
        raise InputError(f"loss must be 'l1' or 'l2', got {loss!r}")
    if ssi_variant not in SSI_VARIANTS:
        raise InputError(f"ssi_variant must be one of {', '.join(SSI_VARIANTS)}, got {ssi_variant!r}")
    set_torch_threads(threads)
    items = kitti_items(kitti)
    teacher_maps = None
    teacher_id = None
    if ssi_weight > 0:
        cache_dir = teacher_cache or str(default_cache_dir(out))
        cache = compute_teacher_outputs(kitti, teacher, cache_dir, threads)
        teacher_id = cache["teacher"]
        teacher_maps = _teacher_loader(cache_dir, cache["keys"], teacher_id["output_kind"])
        logger.info(f"teacher {teacher_id['sha256'][:12]}: {cache['computed']} computed, {cache['cached']} cached")
    device = training_device()
    net = seeded_model(model, seed, device)
    if init:
        init_from_checkpoint(net, model, init)
        logger.info(f"initialised from {init}")
    config = {"stage": 2, "kitti": str(kitti), "init": init, "teacher": teacher_id, "ssi_weight": ssi_weight,
              "grad_weight": grad_weight, "ssi_variant": ssi_variant, "ssi_crops": ssi_crops, "loss": loss, "steps": steps, "batch_size": batch_size,
              "crop": [crop_h, crop_w], "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "model": model,
              "seed": seed, "ema_decay": ema_decay, "n_frames": len(items)}
    logger.info(f"finetune {model} on {kitti} ({len(items)} frames, ssi_weight={ssi_weight}) -> {out}")
    crops = ssi_crops if (ssi_weight > 0 and ssi_variant == "median_mad") else 0
    summary = _run(net, model, out=out, steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup,
                   make_batch=kitti_batch_maker(lambda i: load_kitti_item(items[i]), len(items), teacher_maps,
                                                batch_size=batch_size, crop_h=crop_h, crop_w=crop_w, seed=seed,
                                                ssi_crops=crops),
                   objective=stage2_objective(ssi_weight=ssi_weight, grad_weight=grad_weight, loss=loss,
                                              ssi_variant=ssi_variant),
                   ema_decay=ema_decay, ckpt_every=ckpt_every, resume=resume, config=config, stop_at=stop_at,
                   logger=logger, progress=progress)
    logger.info(f"finetune done: step {summary['step']} -> {summary['checkpoint']}")
    return summary


# ----------------------------------------------------------------------------------------------------
# evaluation


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
    set_torch_threads(threads)
    if (ckpt is None) == (baseline is None):
        raise InputError("evaluate needs exactly one of ckpt or baseline")
    if baseline is not None and baseline not in BASELINES:
        raise InputError(f"unknown baseline {baseline!r}; available: {', '.join(BASELINES)}")
    items = kitti_items(kitti)
    predictors: dict[str, Callable] = {}
    if ckpt is not None:
        info = load_checkpoint(ckpt)
        method = f"{info['model_name']}@{Path(ckpt).name}"
        predictors[method] = model_predictor(model_from_checkpoint(info, use_ema=use_ema).to(training_device()))
    else:
        method = baseline
    if baseline == "ipbasic" or compare_ipbasic:
        predictors["ipbasic"] = ipbasic_predictor
    out_dir = Path(out) if out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    from storage.kitti import load_kitti_item, write_depth_png

    rows = evaluate_items((load_kitti_item(i) for i in items), predictors, exclude_input=exclude_input,
                          write=(lambda name, pred: write_depth_png(out_dir / f"{name}.png", pred)) if out_dir else None,
                          write_method=method, progress=progress)
    if not rows[method]:
        raise InputError(f"{kitti}: no frame has ground truth to evaluate against")
    results = {m: aggregate_metrics(r) for m, r in rows.items()}
    report = {"method": method, **results[method], "per_image": rows[method], "kitti": str(kitti),
              "ckpt": ckpt, "baseline": baseline, "exclude_input": exclude_input}
    if "ipbasic" in results and method != "ipbasic":
        report["ipbasic"] = results["ipbasic"]
    if out_dir:
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    table = metrics_table(results)
    create_table_artifact(table=table, key="completion-metrics",
                          description=f"KITTI-devkit metrics on {kitti} ({results[method]['n_images']} images)")
    for r in table:
        logger.info(" ".join(f"{k}={v}" for k, v in r.items()))
    return report
