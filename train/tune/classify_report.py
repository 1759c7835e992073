"""What a classifier is worth: accuracy, per-class precision/recall/F1, the confusion matrix (table and
PNG), and the honest baseline beside it: a supervised fastText model trained on the same split.

fastText and matplotlib are imported inside the functions that need them (the trainer itself needs
only torch, numpy and pyarrow).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class ClassReport:
    classes: list[str]
    confusion: list[list[int]]
    """confusion[true][predicted] counts."""
    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "accuracy": self.accuracy, "confusion": self.confusion,
                "per_class": {c: {"precision": p, "recall": r, "f1": f, "support": int(sum(self.confusion[i]))}
                              for i, (c, p, r, f) in enumerate(zip(self.classes, self.precision, self.recall, self.f1))},
                "macro_f1": float(np.mean(self.f1))}


def class_report(true: list[int] | np.ndarray, predicted: list[int] | np.ndarray, classes: list[str]) -> ClassReport:
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.asarray(true), np.asarray(predicted)), 1)
    tp = np.diag(confusion).astype(float)
    predicted_n = confusion.sum(axis=0)
    actual_n = confusion.sum(axis=1)
    precision = np.divide(tp, predicted_n, out=np.zeros(k), where=predicted_n > 0)
    recall = np.divide(tp, actual_n, out=np.zeros(k), where=actual_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return ClassReport(classes=list(classes), confusion=confusion.tolist(),
                       accuracy=float(tp.sum() / max(confusion.sum(), 1)), precision=precision.tolist(),
                       recall=recall.tolist(), f1=f1.tolist())


def format_report(report: ClassReport, title: str) -> str:
    """Per-class figures and the confusion matrix as a plain-text table."""
    width = max(12, *(len(c) for c in report.classes))
    lines = [f"{title}: accuracy {report.accuracy:.4f}", "",
             f"{'class':<{width}}  precision  recall      f1  support"]
    for i, c in enumerate(report.classes):
        lines.append(f"{c:<{width}}  {report.precision[i]:9.4f}  {report.recall[i]:6.4f}  {report.f1[i]:6.4f}  "
                     f"{sum(report.confusion[i]):7d}")
    lines += ["", "confusion (rows: true, columns: predicted)",
              " " * width + "  " + "  ".join(f"{c:>8}" for c in report.classes)]
    for i, c in enumerate(report.classes):
        lines.append(f"{c:<{width}}  " + "  ".join(f"{n:8d}" for n in report.confusion[i]))
    return "\n".join(lines)


def plot_confusion(reports: dict[str, ClassReport], png_path: str | Path) -> Path | None:
    """One confusion-matrix panel per model; None (and a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no confusion matrix plot")
        return None
    fig, axes = plt.subplots(1, len(reports), figsize=(4.5 * len(reports), 4), squeeze=False)
    for ax, (name, rep) in zip(axes[0], reports.items()):
        m = np.asarray(rep.confusion)
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(rep.classes)), rep.classes, rotation=45, ha="right")
        ax.set_yticks(range(len(rep.classes)), rep.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: accuracy {rep.accuracy:.3f}")
        for (i, j), n in np.ndenumerate(m):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > m.max() / 2 else "black")
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


@dataclass
class BaselineResult:
    report: ClassReport
    seconds: float
    """Training and prediction time."""


def fasttext_baseline(train_texts: list[str], train_labels: list[int], test_texts: list[str], test_labels: list[int],
                      classes: list[str], epochs: int = 25, seed: int = 0) -> BaselineResult | None:
    """A supervised fastText classifier (word bigrams) trained on the same train split; None when
    fastText is not installed."""
    try:
        import fasttext
    except ImportError:
        log.warning("fasttext is not installed: no baseline")
        return None
    start = time.perf_counter()

    def clean(text: str) -> str:
        return " ".join(text.split())

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_text("".join(f"__label__{y} {clean(t)}\n" for t, y in zip(train_texts, train_labels)),
                        encoding="utf-8")
        model = fasttext.train_supervised(input=str(path), epoch=epochs, lr=0.5, wordNgrams=2, minCount=1,
                                          verbose=0, seed=seed, thread=1)
    labels, _ = model.predict([clean(t) for t in test_texts], k=1)
    predicted = [int(lab[0].removeprefix("__label__")) for lab in labels]
    return BaselineResult(report=class_report(test_labels, predicted, classes), seconds=time.perf_counter() - start)
