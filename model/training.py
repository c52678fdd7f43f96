"""The one training loop: the completion network (stages 1 and 2) and the embedded teacher both run it.

``train_loop`` optimises a model with AdamW for ``steps`` steps: per step it asks ``make_batch(step)`` for a
batch, sets the learning rate from ``lr_at(step, progress)``, computes ``compute_loss(model, batch)`` ->
(loss, parts), clips the gradient norm at 1 and steps; optionally it keeps an EMA of the weights, writes
checkpoints through a ``Checkpointer`` (and resumes from one), logs a JSON line every ``log_every`` steps and
stops at a wall-time budget. It returns a summary with the learning curve (mean loss per logging window).

Determinism: with a ``make_batch`` that is a pure function of the step and no wall-time budget, the same
seed gives the same weights, and resuming at step k reaches the same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from model.checkpoint import ModelEMA
from model.completion import CompletionNet, create_model
from tasks.provenance import derive_seed

Batch = dict[str, torch.Tensor]


def training_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_torch_threads(threads: int | None) -> None:
    """Cap torch's CPU threads; None/0 keeps torch's default."""
    if threads:
        torch.set_num_threads(int(threads))


def seeded_model(model_name: str, seed: int, device: torch.device, **kwargs) -> CompletionNet:
    """``create_model(model_name)`` initialised from ``derive_seed(seed, "init")`` (same seed = same weights),
    moved to ``device``."""
    torch.manual_seed(derive_seed(seed, "init"))
    return create_model(model_name, **kwargs).to(device)
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


class Checkpointer(Protocol):
    """Where a run's state goes: ``restore`` returns the step to continue from (0 = fresh start)."""

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEMA | None) -> int: ...

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEMA | None, *,
             finished: bool) -> str: ...


def train_loop(
    model: nn.Module,
    *,
    make_batch: Callable[[int], Batch],
    compute_loss: LossFn,
    steps: int,
    lr_at: Callable[[int, float], float],
    lr: float,
    weight_decay: float,
    ema_decay: float | None = None,
    checkpointer: Checkpointer | None = None,
    ckpt_every: int = 0,
    stop_at: int | None = None,
    budget_s: float | None = None,
    log_every: int = 10,
    log_file: Path | None = None,
    log: Callable[[str], None] | None = None,
    progress_bar: str | None = None,
) -> dict:
    """Optimise ``model`` (see the module docstring). ``lr_at(step, progress)`` gives the learning rate,
    ``progress`` = max(step / steps, elapsed / budget_s). ``stop_at``: stop after this many steps (with a
    checkpoint) although the schedule is for ``steps``. ``progress_bar``: a tqdm description, None = none.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = ModelEMA(model, decay=ema_decay) if ema_decay is not None else None
    start = checkpointer.restore(model, optimizer, ema) if checkpointer is not None else 0
    if start and log:
        log(f"resumed at step {start}")
    end = steps if stop_at is None else min(steps, int(stop_at))
    model.train()
    parts: dict[str, float] = {}
    curve: list[dict] = []
    window: list[float] = []
    t0, done, out_of_time = time.perf_counter(), 0, False
    bar = tqdm(total=steps, initial=start, desc=progress_bar or "", disable=progress_bar is None, leave=False)
    log_fh = open(log_file, "a") if log_file is not None else None
    try:
        for step in range(start, end):
            elapsed = time.perf_counter() - t0
            progress = step / steps if budget_s is None else max(step / steps, elapsed / budget_s)
            if progress >= 1.0:
                out_of_time = True
                break
            batch = {k: v.to(device) for k, v in make_batch(step).items()}
            cur_lr = lr_at(step, progress)
            for g in optimizer.param_groups:
                g["lr"] = cur_lr
            loss, parts = compute_loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}: {parts}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            done += 1
            window.append(parts["loss"])
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
            n = step + 1
            if n % log_every == 0 or n == end:
                rate = done * next(iter(batch.values())).shape[0] / (time.perf_counter() - t0)
                record = {"step": n, "lr": cur_lr, "samples_per_s": rate, "window_loss": sum(window) / len(window),
                          **parts}
                curve.append({"step": n, "loss": record["window_loss"]})
                window = []
                if log_fh is not None:
                    log_fh.write(json.dumps(record) + "\n")
                    log_fh.flush()
                if log:
                    text = " ".join(f"{k}={v:.4f}" for k, v in parts.items())
                    log(f"step {n}/{steps} {text} lr={cur_lr:.2e} {rate:.2f} samples/s "
                        f"{time.perf_counter() - t0:.0f}s")
            if checkpointer is not None and ckpt_every > 0 and n % ckpt_every == 0 and n < end:
                checkpointer.save(n, model, optimizer, ema, finished=False)
    finally:
        bar.close()
        if log_fh is not None:
            log_fh.close()
    final_step = start + done
    finished = final_step >= steps or out_of_time  # a spent wall-time budget ends the schedule too
    where = checkpointer.save(final_step, model, optimizer, ema, finished=finished) if checkpointer else None
    elapsed = time.perf_counter() - t0
    return {"checkpoint": where, "step": final_step, "finished": finished, "resumed_from": start,
            "last_loss": parts, "loss_curve": curve, "seconds": elapsed,
            "steps_per_s": done / elapsed if done else 0.0, "ema": ema}
