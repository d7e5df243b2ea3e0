"""Learning rate per step: linear warmup, then constant, cosine or linear decay to ``min_lr``.

Pure Python (no torch): the step index alone decides the rate, so every rank computes the same lr.
Step s (0-based) of ``steps``: during warmup ``lr * (s + 1) / warmup_steps``; afterwards, with
``t = (s - warmup_steps) / max(1, steps - warmup_steps)`` in [0, 1), cosine gives
``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` and linear ``lr - (lr - min_lr) * t``.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine", "linear"]
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear")


def lr_at(step: int, *, lr: float, steps: int, schedule: Schedule = "cosine", warmup_steps: int = 0,
          min_lr: float = 0.0) -> float:
    """The learning rate of ``step``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    t = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    return lr - (lr - min_lr) * t
