"""Learning rate: linear warmup from 0 to the peak, then a cosine down to the minimum, then flat.

The schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math


def default_warmup_steps(max_steps: int) -> int:
    """5 % of the run, at least 1 step and at most 1000."""
    return max(1, min(1000, max_steps // 20))


def learning_rate(step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
