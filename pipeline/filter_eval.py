"""Measure a filter chain against people's judgment: labelled pages in, keep/drop figures out.

A labelled file is JSONL, one page per line: `text`, `label` (1 = good, 0 = bad, as people judged it),
and any other fields, kept for slicing (`unanimous`, `source`, ...). Every page goes through the same
chain `crawlgpt filter` would build from the same `FilterConfig` (`filter_stage.build_chain`), so the
figures describe the filter a user runs, not a re-implementation of it.

The report gives, overall and per value of a slice field:

- good kept: share of good pages the chain keeps (recall of the good class);
- bad dropped: share of bad pages it drops;
- balanced accuracy: their mean (the classes need not be the same size);
- precision: share of kept pages that are good;
- the ROC AUC of each score (the fastText quality score, the page model's score) against the labels,
  over every page, whether or not an earlier rule dropped it;
- per drop reason, how many good and how many bad pages it dropped (the first failing filter names
  the reason, as in the filter stage), which is where a rule that costs good pages shows up.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.filter_stage import FilterConfig, build_chain, decide, quality_settings
from pipeline.filters.base import Filter
from formats.manifest import atomic_path
from pipeline.quality_train import roc_auc

log = logging.getLogger(__name__)

#: The reason shown for kept pages in the reason table.
KEPT = "(kept)"
#: Fields of a labelled page that are not slice fields.
_CORE_FIELDS = ("text", "label")


@dataclass(frozen=True)
class LabelledPage:
    """One page people judged."""

    #: Where it came from (`file:line`), used as the document id.
    id: str
    text: str
    #: 1 = good, 0 = bad.
    label: int
    #: Every other field of the JSON line (for slicing).
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PageOutcome:
    """What the chain did with one labelled page."""

    label: int
    #: The drop reason, or None when the page was kept.
    reason: str | None
    #: Scores of the page under each scorer in the chain ({"quality_score": 0.71, "page_score": 0.4}).
    scores: dict
    fields: dict


def read_labelled_pages(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[LabelledPage]:
    """Read a labelled JSONL file (`.gz` too). Raises InputError naming the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--labels: {path} does not exist; give a JSONL file with one page per line "
                         f"({{\"{text_field}\": ..., \"{label_field}\": 1 or 0}})")
    opener = gzip.open if path.suffix == ".gz" else open
    pages: list[LabelledPage] = []
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                pages.append(_parse_line(line, f"{path.name}:{n}", text_field, label_field))
    except UnicodeDecodeError as exc:
        raise InputError(f"--labels: {path} is not UTF-8 text (byte {exc.start} of a block read after line {n}: "
                         f"{exc.reason}); save the file as UTF-8") from exc
    except (OSError, EOFError) as exc:  # a damaged or cut .gz
        raise InputError(f"--labels: {path} cannot be read after line {n} ({exc}); check the file") from exc
    if not pages:
        raise InputError(f"--labels: {path} holds no pages")
    classes = Counter(p.label for p in pages)
    if len(classes) < 2:
        only = "good (1)" if 1 in classes else "bad (0)"
        raise InputError(f"--labels: every page of {path} is labelled {only}; good and bad pages are both "
                         "needed to measure what the filter keeps and drops")
    return pages


def _parse_line(line: str, where: str, text_field: str, label_field: str) -> LabelledPage:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"--labels: {where} is not JSON ({exc.msg}); one JSON object per line is expected") from exc
    if not isinstance(obj, dict):
        raise InputError(f"--labels: {where} is a JSON {type(obj).__name__}, not an object with "
                         f"{text_field!r} and {label_field!r}")
    text = obj.get(text_field)
    if not isinstance(text, str):
        raise InputError(f"--labels: {where} has no string field {text_field!r} (fields: {', '.join(obj) or 'none'}); "
                         "pass --text-field to name the field holding the page text")
    label = obj.get(label_field)
    if isinstance(label, bool) or label not in (0, 1):
        raise InputError(f"--labels: {where}: {label_field!r} is {label!r}; expected 1 (good) or 0 (bad)")
    extra = {k: v for k, v in obj.items() if k not in (text_field, label_field)}
    return LabelledPage(id=where, text=text, label=int(label), fields=extra)


# --- running the chain ---------------------------------------------------------------------------


def judge_pages(chain: list[Filter], pages: Iterable[LabelledPage]) -> list[PageOutcome]:
    """Run `chain` (from `build_chain`) over `pages`; score every page with every scorer in the chain."""
    scorers = [f for f in chain if hasattr(f, "score_name")]
    scorers += [f.quality_scorer for f in chain if getattr(f, "quality_scorer", None) is not None]
    outcomes = []
    for page in pages:
        doc = Document(id=page.id, text=page.text)
        decision, _ = decide(chain, doc)
        scores = {f.score_name: f.score(page.text) for f in scorers}
        outcomes.append(PageOutcome(page.label, None if decision is None else decision.reason, scores, page.fields))
    return outcomes


# --- figures -------------------------------------------------------------------------------------


def summarize(outcomes: list[PageOutcome]) -> dict:
    """Keep/drop figures of `outcomes` (see the module docstring)."""
    good = [o for o in outcomes if o.label == 1]
    bad = [o for o in outcomes if o.label == 0]
    good_kept = sum(o.reason is None for o in good)
    bad_dropped = sum(o.reason is not None for o in bad)
    kept = good_kept + len(bad) - bad_dropped
    good_rate = good_kept / len(good) if good else math.nan
    bad_rate = bad_dropped / len(bad) if bad else math.nan
    reasons: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = reasons.setdefault(o.reason or KEPT, {"good": 0, "bad": 0})
        row["good" if o.label == 1 else "bad"] += 1
    names = sorted({k for o in outcomes for k in o.scores})
    aucs = {}
    for name in names:
        pos = [o.scores[name] for o in good if name in o.scores]
        neg = [o.scores[name] for o in bad if name in o.scores]
        aucs[name] = roc_auc(np.array(pos), np.array(neg))
    return {
        "pages": len(outcomes),
        "good": len(good),
        "bad": len(bad),
        "good_kept": good_rate,
        "bad_dropped": bad_rate,
        "balanced_accuracy": (good_rate + bad_rate) / 2,
        "precision": good_kept / kept if kept else math.nan,
        "roc_auc": aucs,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: (kv[0] != KEPT, -sum(kv[1].values()), kv[0]))),
    }


def evaluate_labelled(
    config: FilterConfig, pages: list[LabelledPage], slice_fields: tuple[str, ...] = (), labels_sha256: str | None = None
) -> dict:
    """The report: figures over all pages and per value of each slice field, plus the outcomes."""
    chain = build_chain(config)
    outcomes = judge_pages(chain, pages)
    report: dict[str, Any] = {"all": summarize(outcomes), "slices": {}}
    for name in slice_fields:
        values = sorted({json.dumps(o.fields.get(name)) for o in outcomes})
        if values == ["null"]:
            raise InputError(f"--slice: no page has the field {name!r}; fields: "
                             f"{', '.join(sorted({k for o in outcomes for k in o.fields})) or 'none'}")
        for value in values:
            part = [o for o in outcomes if json.dumps(o.fields.get(name)) == value]
            report["slices"][f"{name}={value}"] = summarize(part)
    settings = quality_settings(config)
    decides = any(f.name == "quality_classifier" for f in chain) and not config.quality_pareto_alpha
    report["quality_threshold"] = settings.threshold if decides and settings is not None else None
    page = next((f for f in chain if f.name == "page_model"), None)
    report["page_threshold"] = page.threshold if page is not None else None
    report["warnings"] = []
    trained_on = page.model.info.get("labels", {}).get("sha256") if page is not None else None
    if trained_on and labels_sha256 == trained_on:
        report["warnings"].append(
            "the page model was trained on these very pages: the figures above are its fit, not what it does on "
            "new pages; its cross-validated figures are in the model file (info.cross_validated)")
    report["outcomes"] = outcomes
    return report


def format_summary(title: str, s: dict) -> str:
    """A few lines of text for one summary."""
    aucs = ", ".join(f"{k} {v:.3f}" for k, v in s["roc_auc"].items()) or "no scorer in the chain"
    lines = [
        f"{title}: {s['pages']} pages ({s['good']} good, {s['bad']} bad)",
        f"  good kept {s['good_kept']:.1%}   bad dropped {s['bad_dropped']:.1%}   "
        f"balanced accuracy {s['balanced_accuracy']:.3f}   precision of kept {s['precision']:.3f}",
        f"  ROC AUC: {aucs}",
    ]
    return "\n".join(lines)


def reason_rows(s: dict) -> list[tuple[str, int, int]]:
    """(reason, good pages, bad pages) rows of a summary's reason table, kept pages first."""
    return [(name, row["good"], row["bad"]) for name, row in s["reasons"].items()]


def report_json(report: dict) -> dict:
    """The report without the per-page outcomes, NaN as null (for --json)."""
    return _nan_to_none({k: v for k, v in report.items() if k != "outcomes"})


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def plot_score_distributions(report: dict, path: str | Path, score: str | None = None) -> Path:
    """A PNG of the good and bad pages' `score` distributions (default: the quality score, else the page
    model's), with the threshold as a line."""
    # matplotlib is imported here: loading it costs a second, and only this plot needs it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes = report["outcomes"]
    names = {k for o in outcomes for k in o.scores}
    score = score or next((n for n in ("quality_score", "page_score") if n in names), None)
    if score not in names:
        raise InputError("--plot: the chain computes no score to plot; pass --quality-model or --page-model")
    path = Path(path)
    bins = np.linspace(0.0, 1.0, 41)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, name, colour in ((1, "good", "tab:green"), (0, "bad", "tab:red")):
        values = np.array([o.scores[score] for o in outcomes if o.label == label and score in o.scores])
        weights = np.full(len(values), 100.0 / max(len(values), 1))
        ax.hist(values, bins=bins, weights=weights, alpha=0.5, color=colour, label=f"{name} ({len(values)} pages)")
    threshold = report.get("quality_threshold") if score == "quality_score" else report.get("page_threshold")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    auc = report["all"]["roc_auc"].get(score, math.nan)
    ax.set_xlabel(f"{score} (ROC AUC {auc:.3f})")
    ax.set_ylabel("% of the class's pages")
    ax.set_title("score distributions of pages people judged good and bad")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
