"""Learning-rate schedules: pure functions of the step (and, for wall-time budgets, of the progress), so a
resumed run follows the same curve."""
from __future__ import annotations

import math


def warmup_then_cosine(step: int, steps: int, lr: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay over the rest to ``floor`` x ``lr``
    (the completion network's schedule)."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def warmup_times_cosine(step: int, progress: float, lr: float, warmup: int, floor: float = 0.01) -> float:
    """Linear warm-up multiplied by a cosine over ``progress`` in [0, 1] (step share or wall-time share,
    whichever is further), decaying to ``floor`` x ``lr`` (the embedded teacher's schedule: a wall-time
    budget then still ends on a fully decayed rate)."""
    return lr * min(1.0, (step + 1) / max(1, warmup)) * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
