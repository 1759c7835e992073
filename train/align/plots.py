"""alignment.png: the figures that say whether reward modelling, DPO or PPO worked, against the step."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from train.metrics import read_metrics

log = logging.getLogger(__name__)

#: (record kind, key, title) of each panel, by objective kind.
PANELS = {
    "reward": [("train", "accuracy", "train pair accuracy"), ("val", "val_accuracy", "validation pair accuracy"),
               ("val", "val_margin", "validation margin"), ("train", "loss", "Bradley-Terry loss")],
    "dpo": [("train", "reward_accuracy", "train implicit-reward accuracy"),
            ("val", "val_reward_accuracy", "validation implicit-reward accuracy"),
            ("val", "val_reward_margin", "validation margin"), ("train", "loss", "DPO loss")],
    "ppo": [("train", "score", "reward-model score (rollouts)"), ("train", "kl", "KL to the reference"),
            ("train", "entropy", "policy entropy"), ("train", "response_len", "response length"),
            ("train", "clip_frac", "clip fraction"), ("train", "value_loss", "value loss"),
            ("val", "val_reward", "validation score"), ("train", "approx_kl", "approx. KL per update")],
}


def plot_alignment(metrics_path: str | Path, png_path: str | Path, kind: str) -> Path | None:
    """One panel per figure of PANELS[kind]; None without matplotlib or records."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no alignment plot")
        return None
    records = read_metrics(metrics_path)
    panels = PANELS.get(kind, [])
    if not records or not panels:
        return None
    cols = 2 if len(panels) <= 4 else 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (rec_kind, key, title) in zip(axes.flat, panels):
        points = [(r["step"], r[key]) for r in records if r.get("kind") == rec_kind and r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o" if rec_kind == "val" else None, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{kind}: {Path(metrics_path).parent.name}")
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
