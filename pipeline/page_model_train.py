"""Train a page model (`filters/page_model.py`) on pages people labelled, and measure it honestly.

The labelled pages (JSONL `text`, `label` 1/0, as `crawlgpt evaluate-filter` reads them) go through the
configured chain once: language ID and the rule families decide as they would in `crawlgpt filter`,
and every page's features (`page_features`) are computed. A logistic regression over the features is
then fitted on all pages and saved as JSON.

The figures printed and stored with the model are never those of the fit: a few hundred pages are too
few to trust a fitted model's own score. They come from repeated stratified k-fold cross-validation
(5 folds, 10 repeats by default): each page is decided by a model fitted without it, the chain's
balanced accuracy is computed over all pages once per repeat, and the mean and standard deviation over
the repeats are reported, overall and per slice (e.g. `unanimous`).

Optionally, documents of good text (`--extra-positives`: the reference text, instruction data) join
the positives with a small total weight, so the model does not learn that books and encyclopaedia
articles, rare among web pages, are bad.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.documents import Document
from pipeline.errors import ConfigError, InputError
from pipeline.filter_eval import LabelledPage
from pipeline.filter_stage import FilterConfig, build_chain, decide
from pipeline.filters.page_model import FEATURES, PageModel, fit_page_model, page_features
from pipeline.filters.text_stats import TextStats
from formats.manifest import sha256_file
from pipeline.quality_train import roc_auc
from pipeline.readers import ReaderConfig, Unreadable, read_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PageModelTrainConfig:
    """How a page model is fitted and cross-validated."""

    #: L2 penalty on the standardised weights (larger: smoother, closer to equal weights).
    l2: float = 10.0
    #: Keep pages whose probability of being good is at least this.
    threshold: float = 0.5
    #: Folds of the cross-validation.
    folds: int = 5
    #: Repeats of the cross-validation, each with another split.
    repeats: int = 10
    #: Seed of the splits and of the sampling of extra positives.
    seed: int = 0
    #: Files of good text added as positives (JSONL/.zst/.gz, Parquet, .txt, WET, or instruction JSON).
    extra_positives: tuple[str, ...] = ()
    #: Total weight of the extra positives, as a share of the labelled pages' weight.
    extra_weight: float = 0.5
    #: At most this many extra documents are read (a uniform sample, seeded).
    max_extra: int = 1000

    def __post_init__(self) -> None:
        if self.l2 < 0:
            raise ConfigError("--l2", f"must be >= 0, got {self.l2}")
        if not 0 < self.threshold < 1:
            raise ConfigError("--threshold", f"must be between 0 and 1, got {self.threshold}")
        if self.folds < 2:
            raise ConfigError("--folds", f"must be at least 2, got {self.folds}")
        if self.repeats < 1:
            raise ConfigError("--repeats", f"must be at least 1, got {self.repeats}")
        if not 0 <= self.extra_weight <= 10:
            raise ConfigError("--extra-weight", f"must be between 0 and 10, got {self.extra_weight}")


@dataclass
class PageSignals:
    """What the chain (without a page model) says about each page, and each page's features."""

    #: Feature names, the columns of `matrix`.
    features: tuple[str, ...]
    #: (pages, features) float64.
    matrix: np.ndarray
    #: True where language ID and every rule keep the page.
    base_keep: np.ndarray


def page_signals(config: FilterConfig, texts: list[str]) -> PageSignals:
    """Run the chain of `config` (page model and classifier threshold aside) over `texts`."""
    chain = build_chain(replace(config, page_model=None, quality_pareto_alpha=None, quality_threshold=0.0))
    lid = chain[0]
    quality = next((f for f in chain if f.name == "quality_classifier"), None)
    deciders = [f for f in chain if f is not quality]
    features = FEATURES if quality is not None else tuple(f for f in FEATURES if f != "quality_score")
    rows, keep = [], []
    for i, text in enumerate(texts):
        stats = TextStats(text)
        decision, _ = decide(deciders, Document(id=str(i), text=text))
        keep.append(decision is None)
        values = page_features(stats, lid.identify(text)[1], quality.score(text) if quality is not None else None)
        rows.append([values[f] for f in features])
    return PageSignals(features, np.array(rows, dtype=np.float64).reshape(len(texts), len(features)), np.array(keep))


def stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per page, each class spread evenly over the folds."""
    out = np.zeros(len(labels), dtype=int)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        out[idx] = np.arange(len(idx)) % folds
    return out


def balanced_accuracy(labels: np.ndarray, keep: np.ndarray) -> tuple[float, float, float]:
    """(balanced accuracy, good kept, bad dropped) of keep decisions against labels."""
    good, bad = labels == 1, labels == 0
    good_kept = float(keep[good].mean()) if good.any() else math.nan
    bad_dropped = float((~keep[bad]).mean()) if bad.any() else math.nan
    return (good_kept + bad_dropped) / 2, good_kept, bad_dropped


def cross_validate(
    signals: PageSignals,
    labels: np.ndarray,
    config: PageModelTrainConfig,
    slices: dict[str, np.ndarray] | None = None,
    extra: np.ndarray | None = None,
) -> dict:
    """Repeated stratified k-fold figures of the chain with a page model: {slice: {metric: [mean, sd]}}
    for balanced accuracy, good kept, bad dropped, precision of the kept pages, and the ROC AUC of the
    page model's out-of-fold probability (over all pages, also those the rules drop).

    Every page is decided by a model fitted on the other folds (plus the extra positives, which are
    never tested); the figures are computed over all pages once per repeat.
    """
    slices = {"all": np.ones(len(labels), dtype=bool), **(slices or {})}
    per_repeat: dict[str, list[tuple[float, ...]]] = {name: [] for name in slices}
    rng = np.random.default_rng(config.seed)
    for _ in range(config.repeats):
        folds = stratified_folds(labels, config.folds, rng)
        prob = np.zeros(len(labels))
        for k in range(config.folds):
            train, test = folds != k, folds == k
            model = _fit(signals.matrix[train], labels[train], signals.features, config, extra)
            prob[test] = model.probabilities(signals.matrix[test])
        keep = signals.base_keep & (prob >= config.threshold)
        for name, mask in slices.items():
            kept, y = keep[mask], labels[mask]
            precision = float(y[kept].mean()) if kept.any() else math.nan
            auc = roc_auc(prob[mask][y == 1], prob[mask][y == 0])
            per_repeat[name].append((*balanced_accuracy(y, kept), precision, auc))
    out = {}
    for name, rows in per_repeat.items():
        arr = np.array(rows)
        out[name] = {
            metric: [round(float(arr[:, j].mean()), 4), round(float(arr[:, j].std()), 4)]
            for j, metric in enumerate(("balanced_accuracy", "good_kept", "bad_dropped", "precision", "roc_auc"))
        }
        out[name]["pages"] = int(slices[name].sum())
    return out


def _fit(matrix, labels, features, config: PageModelTrainConfig, extra: np.ndarray | None) -> PageModel:
    weights = np.ones(len(labels))
    if extra is not None and len(extra) and config.extra_weight > 0:
        matrix = np.vstack([matrix, extra])
        labels = np.concatenate([labels, np.ones(len(extra))])
        weights = np.concatenate([weights, np.full(len(extra), config.extra_weight * len(weights) / len(extra))])
    return fit_page_model(matrix, labels, features, l2=config.l2, threshold=config.threshold, sample_weight=weights)


def read_extra_texts(paths: tuple[str, ...], limit: int, seed: int) -> list[str]:
    """Up to `limit` texts (a seeded uniform sample) from files of good text.

    Instruction data (a JSON list of {instruction, input, output}) becomes instruction, input and
    output joined by blank lines; other files are read with the pipeline's readers.
    """
    texts: list[str] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--extra-positives: {path} does not exist")
        if p.suffix == ".json":
            texts += _instruction_texts(p)
            continue
        for item in read_file(p, ReaderConfig()):
            if not isinstance(item, Unreadable) and item.text.strip():
                texts.append(item.text)
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def _instruction_texts(path: Path) -> list[str]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--extra-positives: {path} is not JSON ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"--extra-positives: {path}: expected a JSON list of objects with instruction/input/output")
    out = []
    for r in rows:
        parts = [str(r.get(k) or "").strip() for k in ("instruction", "input", "output")]
        text = "\n\n".join(x for x in parts if x)
        if text:
            out.append(text)
    return out


def train_page_model(
    filter_config: FilterConfig,
    pages: list[LabelledPage],
    config: PageModelTrainConfig,
    slice_fields: tuple[str, ...] = (),
    labels_path: str | None = None,
) -> tuple[PageModel, dict]:
    """Fit the page model on all `pages`; return it (its `info` holds the cross-validated figures)."""
    labels = np.array([p.label for p in pages])
    log.info("page model: computing the signals of %d labelled pages", len(pages))
    signals = page_signals(filter_config, [p.text for p in pages])
    extra = None
    if config.extra_positives:
        texts = read_extra_texts(config.extra_positives, config.max_extra, config.seed)
        log.info("page model: computing the signals of %d extra positives", len(texts))
        extra = page_signals(filter_config, texts).matrix
    slices = {}
    for name in slice_fields:
        values = sorted({json.dumps(p.fields.get(name)) for p in pages})
        if values == ["null"]:
            raise InputError(f"--slice: no labelled page has the field {name!r}")
        for value in values:
            slices[f"{name}={value}"] = np.array([json.dumps(p.fields.get(name)) == value for p in pages])
    log.info("page model: %d x %d-fold cross-validation", config.repeats, config.folds)
    cv = cross_validate(signals, labels, config, slices, extra)
    base = {name: dict(zip(("balanced_accuracy", "good_kept", "bad_dropped"),
                           (round(v, 4) for v in balanced_accuracy(labels[m], signals.base_keep[m]))))
            for name, m in {"all": np.ones(len(labels), dtype=bool), **slices}.items()}
    model = _fit(signals.matrix, labels, signals.features, config, extra)
    info = {
        "labels": {"file": Path(labels_path).name if labels_path else None, "pages": len(pages),
                   "good": int(labels.sum()), "bad": int(len(labels) - labels.sum()),
                   "sha256": sha256_file(labels_path) if labels_path else None},
        "extra_positives": {"files": [Path(p).name for p in config.extra_positives],
                            "documents": 0 if extra is None else int(len(extra)), "weight": config.extra_weight},
        "chain": {"langs": list(filter_config.langs), "min_lang_score": filter_config.min_lang_score,
                  "rules": list(filter_config.rules),
                  "quality_model_sha256": sha256_file(filter_config.quality_model) if filter_config.quality_model else None},
        "train": {"l2": config.l2, "threshold": config.threshold, "folds": config.folds, "repeats": config.repeats,
                  "seed": config.seed},
        "cross_validated": cv,
        "without_page_model": base,
    }
    return replace(model, info=info), info
