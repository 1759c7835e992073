"""Is a reward model better than a coin? The verdict `reward-train` prints at the end and stores in
every reward checkpoint, and that `ppo` reads before it optimises against the model.

Two tests, either of which makes the model "guessing":
- its validation pair accuracy is within noise of chance: the 95 % Wilson score interval of the
  accuracy over the validation pairs contains 0.5 (with few pairs even 0.6 does);
- its mean margin r_chosen − r_rejected is tiny: under Bradley–Terry a margin m means the model
  itself puts P(chosen preferred) = σ(m), and below MIN_MARGIN it is on average less than 52.5 % sure.
Plain arithmetic, no scipy: the trainer runs where only torch, numpy and pyarrow are installed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: z of a two-sided 95 % interval.
Z_95 = 1.959963984540054
#: Mean margins below this are "tiny": σ(0.1) = 0.525.
MIN_MARGIN = 0.1


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (successes out of n); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class RewardVerdict:
    accuracy: float
    """Validation pair accuracy (ties count as wrong)."""
    pairs: int
    """Validation pairs it was measured on."""
    margin: float
    """Mean validation margin r_chosen − r_rejected."""
    low: float
    """Lower end of the 95 % Wilson interval of the accuracy."""
    high: float
    """Upper end of the interval."""
    guessing: bool
    """True when the accuracy is within noise of chance or the margin is tiny."""
    reason: str
    """One line saying why (or that it is not guessing)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_reward_model(accuracy: float, margin: float, pairs: int) -> RewardVerdict:
    low, high = wilson_interval(round(accuracy * pairs), pairs)
    figures = (f"validation accuracy {accuracy:.3f} (95 % interval {low:.3f}-{high:.3f} over {pairs} pairs), "
               f"mean margin {margin:.4f}")
    reasons = []
    if pairs == 0:
        reasons.append("no validation pair, so its accuracy is unknown")
    elif low <= 0.5:
        reasons.append("the accuracy is within noise of chance (the interval contains 0.5)")
    if abs(margin) < MIN_MARGIN:
        sure = 100 / (1 + math.exp(-MIN_MARGIN))
        reasons.append(f"the margin is tiny (below {MIN_MARGIN}: on average the model is itself less than "
                       f"{sure:.1f} % sure which answer is better)")
    if reasons:
        reason = (f"{figures}: the reward model is guessing: {'; '.join(reasons)}. PPO against it optimises "
                  f"noise; use more or cleaner pairs, more steps, or a larger base model")
    else:
        reason = f"{figures}: better than chance"
    return RewardVerdict(accuracy, pairs, margin, low, high, bool(reasons), reason)
