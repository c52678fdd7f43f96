"""Completion-network checkpoints: save / load / exact resume, and the EMA of the weights.

A checkpoint is one ``torch.save`` dict (loaded with ``weights_only=True``: plain tensors, numbers,
strings, lists and dicts only, so loading a file never runs code):

``format`` ("monolidar.completion"), ``version``, ``model_name``, ``model_config`` (the network's
constructor arguments, enough to rebuild it), ``model`` (state dict), ``ema`` (EMA state or None),
``optimizer`` (state dict or None), ``step`` (optimizer steps done), ``rng`` (torch CPU RNG state),
``config`` (the run's parameters), ``metrics`` (optional).

Exact resume: the training loops draw every batch and crop from ``derive_seed(seed, "batch", step)``,
so the data order is a function of the step alone; together with the optimizer state, EMA and RNG
state saved here, resuming at step k gives bit-identical weights to an uninterrupted run.

Writes are atomic (temporary file + ``os.replace``): a crash mid-save never leaves a torn checkpoint.
"""
from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.completion import CompletionNet, create_model, list_models
from tasks.errors import CheckpointError

CKPT_FORMAT = "monolidar.completion"
CKPT_VERSION = 1
TEACHER_CKPT_FORMAT = "monolidar.teacher"
LAST_CKPT = "last.pt"
FINAL_CKPT = "final.pt"


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts only; loading never runs code.

    A file that needs pickle (arbitrary code from whoever made it) is refused with a CheckpointError that
    says so; a missing or unreadable file gives a CheckpointError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused: this checkpoint needs pickle to load (it could run arbitrary "
                              f"code); only weights-only checkpoints (tensors, numbers, strings, lists, "
                              f"dicts) are accepted") from None
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__})") from None


class ModelEMA:
    """Exponential moving average of a model's weights (evaluated and exported instead of the raw weights).

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so short runs
    are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        src = model.state_dict()
        for name, ema_t in self.module.state_dict().items():
            if ema_t.dtype.is_floating_point:
                ema_t.mul_(d).add_(src[name].detach(), alpha=1.0 - d)
            else:
                ema_t.copy_(src[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


def save_checkpoint(
    path: str | Path,
    *,
    model: CompletionNet,
    model_name: str,
    optimizer: torch.optim.Optimizer | None = None,
    ema: ModelEMA | None = None,
    step: int = 0,
    config: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CKPT_FORMAT,
        "version": CKPT_VERSION,
        "model_name": model_name,
        "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()},
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "rng": torch.get_rng_state(),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
    }
    _atomic_save(payload, path)
    return path


def _atomic_save(payload: dict, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; CheckpointError naming the path when it is missing or not ours."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: not a monolidar completion checkpoint (no format={CKPT_FORMAT!r})")
    if ckpt.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not {CKPT_VERSION}")
    if ckpt.get("model_name") not in list_models():
        raise CheckpointError(f"{path}: unknown architecture {ckpt.get('model_name')!r}")
    ckpt["path"] = str(path)
    return ckpt


def _model_kwargs(ckpt: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["model_config"].items()}


def model_from_checkpoint(ckpt: dict | str | Path, *, use_ema: bool = True) -> CompletionNet:
    """Rebuild the network a checkpoint describes and load its (EMA, by default) weights; eval mode."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = create_model(ckpt["model_name"], **_model_kwargs(ckpt))
    state = ckpt["ema"]["module"] if (use_ema and ckpt.get("ema")) else ckpt["model"]
    _load_weights(model, state, ckpt.get("path", "<checkpoint>"))
    return model.eval()


def _load_weights(model: nn.Module, state: dict, where: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "state dict mismatch"
        raise CheckpointError(f"{where}: weights do not fit this architecture ({first})") from None


def init_from_checkpoint(model: CompletionNet, model_name: str, path: str | Path, *, use_ema: bool = True) -> dict:
    """Initialise ``model`` (e.g. stage 2) from another run's checkpoint (e.g. stage 1) of the same architecture."""
    ckpt = load_checkpoint(path)
    if ckpt["model_name"] != model_name or _model_kwargs(ckpt) != model.config:
        raise CheckpointError(
            f"{path}: checkpoint is {ckpt['model_name']} {ckpt['model_config']}, expected {model_name} {model.config}"
        )
    state = ckpt["ema"]["module"] if (use_ema and ckpt.get("ema")) else ckpt["model"]
    _load_weights(model, state, str(path))
    return ckpt


def restore_training_state(
    ckpt: dict, *, model: CompletionNet, model_name: str, optimizer: torch.optim.Optimizer, ema: ModelEMA
) -> int:
    """Load model/optimizer/EMA/RNG from ``ckpt`` for an exact resume; returns the step to continue from."""
    where = ckpt.get("path", "<checkpoint>")
    if ckpt["model_name"] != model_name or _model_kwargs(ckpt) != model.config:
        raise CheckpointError(f"{where}: checkpoint is {ckpt['model_name']}, cannot resume a {model_name} run")
    _load_weights(model, ckpt["model"], where)
    if ckpt.get("optimizer") is None or ckpt.get("ema") is None:
        raise CheckpointError(f"{where}: checkpoint has no optimizer/EMA state, cannot resume")
    optimizer.load_state_dict(ckpt["optimizer"])
    ema.load_state_dict(ckpt["ema"])
    torch.set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


class CompletionCheckpoints:
    """The completion runs' ``Checkpointer`` (model.training): ``out/last.pt`` during and at the end of a run,
    ``out/final.pt`` once the schedule is finished; resumes from ``last.pt`` when asked."""

    def __init__(self, out: str | Path, model_name: str, config: dict, *, resume: bool):
        self.out, self.model_name, self.config, self.resume = Path(out), model_name, config, resume
        self.out.mkdir(parents=True, exist_ok=True)

    def restore(self, model: CompletionNet, optimizer: torch.optim.Optimizer, ema: ModelEMA | None) -> int:
        last = self.out / LAST_CKPT
        if not (self.resume and last.is_file()):
            return 0
        return restore_training_state(load_checkpoint(last), model=model, model_name=self.model_name,
                                      optimizer=optimizer, ema=ema)

    def save(self, step: int, model: CompletionNet, optimizer: torch.optim.Optimizer, ema: ModelEMA | None, *,
             finished: bool) -> str:
        kw = dict(model=model, model_name=self.model_name, optimizer=optimizer, ema=ema, step=step,
                  config=self.config)
        save_checkpoint(self.out / LAST_CKPT, **kw)
        if finished:
            return str(save_checkpoint(self.out / FINAL_CKPT, **kw))
        return str(self.out / LAST_CKPT)


# ------------------------------------------------------------------------------------ embedded teacher
def save_teacher_checkpoint(path: str | Path, state_dict: dict, info: dict) -> Path:
    """The embedded teacher's training result: weights + a JSON-like ``info`` (steps, seconds, loss curve)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"format": TEACHER_CKPT_FORMAT, "state_dict": state_dict, "info": dict(info)}, path)
    return path


def load_teacher_checkpoint(path: str | Path) -> dict:
    """{"state_dict", "info"} of a teacher checkpoint, loaded weights-only (see ``safe_torch_load``)."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a monolidar teacher checkpoint (no state_dict)")
    return {"state_dict": ckpt["state_dict"], "info": dict(ckpt.get("info") or {})}
