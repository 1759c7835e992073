"""A learned page filter: logistic regression over the signals the chain already computes.

The rule filters compare one statistic each with a fixed threshold; the quality classifier scores how
much a page resembles reference text. On real web pages neither alone matches people's judgment well
(docs/filter.md). A page model weighs those same statistics (word counts, line punctuation, repetition,
boilerplate lines, the language score, the quality score) together, with weights learned from pages
people labelled (`crawlgpt page-model-train --labels FILE`), and drops pages whose probability of being
good is below its threshold (`page_model_low`).

The model is a small JSON file (feature names, standardisation, weights, threshold, and the
cross-validated figures it was shipped with); nothing in it is executed or unpickled. Features are
computed here, once, from `TextStats`, so training and filtering see the same numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.filters.base import Decision
from pipeline.filters.c4 import POLICY_PHRASES
from pipeline.filters.gopher import BULLETS, GOPHER_STOP_WORDS, dup_ngram_chars, top_ngram_chars
from pipeline.filters.text_stats import TextStats, ends_sentence
from formats.manifest import write_json_atomic

PAGE_MODEL_OPTION = "--page-model"
#: The page model shipped with crawlgpt (`--page-model web`): see docs/filter.md for how it was made.
BUNDLED_PAGE_MODEL = Path(__file__).resolve().parent / "assets" / "page-model-web.json"
FORMAT = "crawlgpt-page-model"
VERSION = 1

#: The features a page model may use, each a number computed by `page_features`.
FEATURES = (
    "log_words",                 # log(1 + words)
    "mean_word_length",          # characters per word
    "symbol_word_ratio",         # "#" and ellipses per word
    "bullet_line_ratio",         # lines starting with a bullet
    "ellipsis_line_ratio",       # lines ending with an ellipsis
    "alpha_word_ratio",          # words with a letter
    "stop_word_ratio",           # words that are one of Gopher's stop words
    "dup_line_char_ratio",       # characters in repeated lines
    "dup_paragraph_char_ratio",  # characters in repeated paragraphs
    "top_2gram_char_ratio",      # characters of the most frequent word pair
    "dup_5gram_char_ratio",      # characters in repeated 5-grams
    "line_punct_ratio",          # lines ending a sentence
    "short_line_ratio",          # lines of at most 30 characters
    "line_word_ratio",           # lines per word
    "log_mean_line_words",       # log(1 + words per line)
    "boilerplate_line_word_ratio",  # words in lines C4 deletes (javascript, cookie/privacy/terms phrases)
    "curly_bracket",             # 1 if the page has a "{"
    "upper_char_ratio",          # upper-case share of letters
    "digit_char_ratio",          # digits per character
    "lang_score",                # lid.176 probability of the top language
    "quality_score",             # the fastText quality classifier's P(good) (needs a quality model)
)


def page_features(stats: TextStats, lang_score: float, quality_score: float | None = None) -> dict[str, float]:
    """The features of one page (`quality_score` only when a quality model scored it)."""
    words = stats.words
    n_words = len(words)
    w = max(n_words, 1)
    lines = stats.lines
    n_lines = max(len(lines), 1)
    logical = stats.logical_lines
    n_logical = max(len(logical), 1)
    text = stats.text
    n_chars = max(len(text), 1)
    letters = sum(1 for ch in text if ch.isalpha())
    stop = frozenset(GOPHER_STOP_WORDS)
    lower = stats.lower_text
    boiler = 0
    if "javascript" in lower or any(p in lower for p in POLICY_PHRASES):
        for line in logical:
            ll = line.lower()
            if "javascript" in ll or any(p in ll for p in POLICY_PHRASES):
                boiler += len(line.split())
    out = {
        "log_words": math.log1p(n_words),
        "mean_word_length": stats.word_chars / w,
        "symbol_word_ratio": max(text.count("#"), text.count("...") + text.count("…")) / w,
        "bullet_line_ratio": sum(1 for line in lines if line.startswith(BULLETS)) / n_lines,
        "ellipsis_line_ratio": sum(1 for line in lines if line.endswith(("...", "…"))) / n_lines,
        "alpha_word_ratio": sum(1 for x in words if any(map(str.isalpha, x))) / w,
        "stop_word_ratio": sum(1 for x in words if x.lower() in stop) / w,
        "dup_line_char_ratio": stats.duplicate_line_stats[1] / max(stats.line_chars, 1),
        "dup_paragraph_char_ratio": stats.duplicate_paragraph_stats[1] / max(sum(map(len, stats.paragraphs)), 1),
        "top_2gram_char_ratio": top_ngram_chars(words, 2) / n_chars,
        "dup_5gram_char_ratio": dup_ngram_chars(words, 5) / n_chars,
        "line_punct_ratio": sum(1 for line in logical if ends_sentence(line)) / n_logical,
        "short_line_ratio": sum(1 for line in logical if len(line) <= 30) / n_logical,
        "line_word_ratio": len(logical) / w,
        "log_mean_line_words": math.log1p(n_words / n_logical),
        "boilerplate_line_word_ratio": boiler / w,
        "curly_bracket": 1.0 if "{" in text else 0.0,
        "upper_char_ratio": sum(1 for ch in text if ch.isupper()) / max(letters, 1),
        "digit_char_ratio": sum(1 for ch in text if ch.isdigit()) / n_chars,
        "lang_score": lang_score,
    }
    if quality_score is not None:
        out["quality_score"] = quality_score
    return out


@dataclass(frozen=True)
class PageModel:
    """A logistic regression over standardised features: P(good) = sigmoid(w . (x - mean) / scale + b)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    #: Keep pages with P(good) >= threshold.
    threshold: float = 0.5
    #: Anything worth keeping with the model: what it was trained on, cross-validated figures.
    info: dict = field(default_factory=dict, compare=False)

    @property
    def needs_quality_score(self) -> bool:
        return "quality_score" in self.features

    def probability(self, values: dict[str, float]) -> float:
        x = np.array([values[f] for f in self.features], dtype=np.float64)
        z = float(np.dot((x - np.array(self.mean)) / np.array(self.scale), np.array(self.weights)) + self.bias)
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """P(good) of each row of `matrix` (columns in `features` order)."""
        z = (matrix - np.array(self.mean)) / np.array(self.scale) @ np.array(self.weights) + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def fit_page_model(
    matrix: np.ndarray,
    labels: np.ndarray,
    features: tuple[str, ...],
    l2: float = 1.0,
    threshold: float = 0.5,
    sample_weight: np.ndarray | None = None,
) -> PageModel:
    """Fit an L2-regularised logistic regression with class-balanced weights (Newton's method).

    The classes are weighted so that each counts as much as the other (after `sample_weight`, 1 per
    page by default): a threshold of 0.5 then aims at balanced accuracy, whatever share is good.
    """
    x = np.asarray(matrix, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    base = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    n_pos, n_neg = base[y == 1].sum(), base[y == 0].sum()
    total = n_pos + n_neg
    sample_w = base * np.where(y == 1, total / (2 * max(n_pos, 1e-12)), total / (2 * max(n_neg, 1e-12)))
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    beta = np.zeros(z.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -50, 50)))
        grad = z.T @ (sample_w * (p - y)) + penalty * beta
        hess = (z * (sample_w * p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return PageModel(
        features=tuple(features),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in beta[:-1]),
        bias=float(beta[-1]),
        threshold=threshold,
    )


def save_page_model(model: PageModel, path: str | Path) -> None:
    """Write `model` as JSON (atomically)."""
    write_json_atomic(path, {"format": FORMAT, "version": VERSION, **asdict(model)})


def load_page_model(path: str | Path) -> PageModel:
    """Read a page model written by `save_page_model`; InputError naming what is wrong and the fix."""
    path = Path(path)
    fix = "train one with `crawlgpt page-model-train --labels FILE --out PATH`"
    if not path.is_file():
        raise InputError(f"{PAGE_MODEL_OPTION}: {path} does not exist; {fix}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{PAGE_MODEL_OPTION}: {path} is not a JSON page model ({exc}); {fix}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InputError(f"{PAGE_MODEL_OPTION}: {path} is not a page model (no \"format\": \"{FORMAT}\"); {fix}")
    if obj.get("version") != VERSION:
        raise InputError(f"{PAGE_MODEL_OPTION}: {path} is version {obj.get('version')!r}; this crawlgpt reads "
                         f"version {VERSION}; {fix}")
    try:
        features = tuple(str(f) for f in obj["features"])
        model = PageModel(
            features=features,
            mean=tuple(float(v) for v in obj["mean"]),
            scale=tuple(float(v) for v in obj["scale"]),
            weights=tuple(float(v) for v in obj["weights"]),
            bias=float(obj["bias"]),
            threshold=float(obj.get("threshold", 0.5)),
            info=dict(obj.get("info") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{PAGE_MODEL_OPTION}: {path} lacks or mangles a field ({exc!r}); {fix}") from exc
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not len(features) == len(model.mean) == len(model.scale) == len(model.weights):
        raise InputError(f"{PAGE_MODEL_OPTION}: {path}: features {unknown or 'and weights'} do not match this "
                         f"crawlgpt's ({', '.join(FEATURES)}); {fix}")
    return model


class PageModelFilter:
    """Drops pages whose page-model probability is below the model's threshold (`page_model_low`).

    It reads the language score from `lid` and, if the model uses it, the quality score from `quality`
    (the chain's own filters, so the models are loaded once).
    """

    name = "page_model"
    score_name = "page_score"

    def __init__(self, model: PageModel, lid, quality=None, threshold: float | None = None):
        if model.needs_quality_score and quality is None:
            raise InputError(f"{PAGE_MODEL_OPTION}: this page model uses the quality classifier's score; "
                             "pass the --quality-model it was trained with")
        self.model = model
        self.lid = lid
        #: The chain's quality classifier, if any (`filter_eval` reports its score too).
        self.quality_scorer = quality
        self.quality = quality if model.needs_quality_score else None
        self.threshold = model.threshold if threshold is None else threshold

    def features(self, text: str, stats: TextStats | None = None) -> dict[str, float]:
        s = stats if stats is not None else TextStats(text)
        quality = self.quality.score(text) if self.quality is not None else None
        return page_features(s, self.lid.identify(text)[1], quality)

    def score(self, text: str, stats: TextStats | None = None) -> float:
        return self.model.probability(self.features(text, stats))

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision:
        p = self.score(doc.text, stats)
        keep = p >= self.threshold
        return Decision(keep, None if keep else "page_model_low", p, {"page_score": round(p, 4)})
