"""Metrics: one JSON line per record in metrics.jsonl, optional TensorBoard events, the loss plot,
and the model-FLOPs-utilisation (MFU) arithmetic with a table of device peaks.

Records have a "kind": "train" (step, loss, lr, grad_norm, tokens_per_s, mfu, ...), "val" (step,
val_loss, val_ppl) or "sample" (step, text). TensorBoard and matplotlib are optional: without them
the run goes on and says once what it skipped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from formats.figures import pyplot, save_figure
from formats.manifest import write_text_atomic

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"

# Peak dense bf16 tensor-core throughput, FLOP/s, by a substring of torch.cuda.get_device_name().
# First match wins, so more specific names come first ("H200 NVL" before "H200", "H200" before "H20").
# (Vendor datasheets, without sparsity.)
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200 NVL", 835e12),  # the PCIe card: lower clocks and power than the SXM module
    ("H200", 989e12),  # SXM, and GH200
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 (no bf16 on Volta)
    ("T4", 65e12),  # fp16
]


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device for MFU; None when unknown (CPUs, unlisted GPUs)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    flops = peak_flops_for_name(name)
    if flops is None:
        log.warning("no peak FLOP/s known for %r: MFU not reported (pass --peak-tflops)", name)
    return flops


def peak_flops_for_name(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by its name (e.g. "NVIDIA H200"); None when not in the table."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_s_per_device: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    if peak is None:
        return None
    return flops_per_token * tokens_per_s_per_device / peak


class MetricsWriter:
    """Appends records to <run>/metrics.jsonl (flushed per line) and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            kind = record.get("kind", "train")
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
                elif key == "text" and isinstance(value, str):
                    self._tb.add_text(f"{kind}/text", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a crash
                    log.warning("skipping an unreadable line in %s", path)
    return records


def truncate_metrics(path: str | Path, after_step: int) -> int:
    """Drop records with step > after_step (written after the checkpoint a run resumes from), so the
    resumed run's records do not repeat them. Returns how many were dropped."""
    path = Path(path)
    records = read_metrics(path)
    kept = [r for r in records if r.get("step", 0) <= after_step]
    if len(kept) != len(records):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)


def plot_losses(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Training and validation loss against step; None (and a warning) without matplotlib."""
    plt = pyplot("matplotlib is not installed: no loss plot (pip install matplotlib)")
    if plt is None:
        return None
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "val" and r.get("val_loss") is not None]
    bench = [r for r in records if r.get("kind") == "benchmark"]
    if bench:  # `pretrain --benchmark`: accuracy curves in a second panel
        fig, (ax, bench_ax) = plt.subplots(1, 2, figsize=(14, 5))
        for key in sorted({k for r in bench for k in r if k.endswith("_acc") or k.endswith("_acc_norm")}):
            points = [(r["step"], r[key]) for r in bench if key in r]
            bench_ax.plot(*zip(*points), marker="o", linewidth=1.5, label=key.replace("_", " "))
        bench_ax.set_xlabel("step")
        bench_ax.set_ylabel("accuracy")
        bench_ax.set_title("zero-shot benchmarks")
        bench_ax.grid(alpha=0.3)
        bench_ax.legend()
    else:
        fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"loss: {Path(metrics_path).parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png_path, dpi=100, bbox_inches="tight")


def format_progress(step: int, max_steps: int, record: dict[str, Any]) -> str:
    """One progress line: step, loss, learning rate, gradient norm, tokens/s, MFU."""
    mfu_text = "n/a" if record.get("mfu") is None else f"{100 * record['mfu']:.1f}%"
    return (f"step {step:>6}/{max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"grad norm {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | MFU {mfu_text} | "
            f"data wait {100 * record['data_wait_share']:.1f}%")


def perplexity(loss: float) -> float:
    """exp(loss), infinite instead of an overflow."""
    return math.exp(loss) if loss < 700 else float("inf")
