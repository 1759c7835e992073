"""A fastText quality classifier applied as a filter, as in GPT-3 (Brown et al. 2020, "Language Models
are Few-Shot Learners", appendix A): a linear classifier scores how much a page looks like curated
reference text, and pages that score low are dropped.

Two ways to decide (both give the score, P(label), as the annotation `quality_score`):

- threshold (default): keep when P(label) >= threshold;
- Pareto sampling (GPT-3): keep when a draw from a Pareto (Lomax) distribution with shape `pareto_alpha`
  (GPT-3 used 9) exceeds 1 - score, so most high-scoring and a few low-scoring pages are kept. The draw
  is derived from a hash of the document id and the seed, so it does not depend on order or workers.

Any fastText model can be plugged in: give its label (e.g. `__label__hq`) and a threshold. Models made by
`crawlgpt quality-train` score text normalised by `normalize_text` (lower case, punctuation split off);
the filter stage reads that from the model's manifest. A plug-in model gets the raw text with newlines
replaced by spaces (`normalization="none"`), since fastText reads one line at a time.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pipeline.documents import Document
from pipeline.errors import ConfigError, InputError
from pipeline.filters.base import Decision
from pipeline.filters.models import load_fasttext
from pipeline.filters.text_stats import TextStats

QUALITY_OPTION = "--quality-model"
#: Labels written by `crawlgpt quality-train`.
HQ_LABEL = "__label__hq"
LQ_LABEL = "__label__lq"
#: Names of the text normalisations a quality model may expect.
NORMALIZATIONS = ("lower-punct", "none")

#: A token: a run of word characters, or one punctuation mark or symbol.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str, normalization: str = "lower-punct", max_chars: int = 100_000) -> str:
    """The one-line text a quality model sees.

    "lower-punct": lower case, each punctuation mark a token of its own, whitespace collapsed; the
    first `max_chars` characters only (a longer page adds little evidence and costs linear time).
    "none": newlines replaced by spaces, nothing else.
    """
    text = text[:max_chars]
    if normalization == "none":
        return text.replace("\n", " ")
    # "__label__" inside a document would read as a second label to fastText
    return " ".join(_TOKEN.findall(text.lower())).replace("__label__", "label")


def pareto_draw(doc_id: str, alpha: float, seed: int) -> float:
    """A Lomax(alpha) draw (numpy's `pareto`) fixed by the document id and seed."""
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return (1.0 - u) ** (-1.0 / alpha) - 1.0


class QualityClassifierFilter:
    """Drops documents whose P(`label`) under a fastText model is below `threshold` (or, with
    `pareto_alpha`, that lose GPT-3's Pareto draw)."""

    name = "quality_classifier"
    #: The annotation (and `filter_eval` score) this filter's `score` fills.
    score_name = "quality_score"

    def __init__(
        self,
        model_path: str | Path,
        threshold: float = 0.5,
        label: str = HQ_LABEL,
        normalization: str = "lower-punct",
        pareto_alpha: float | None = None,
        seed: int = 0,
        max_chars: int = 100_000,
    ):
        if normalization not in NORMALIZATIONS:
            raise ConfigError("--quality-normalization", f"{normalization!r} is not one of {NORMALIZATIONS}")
        self.model = load_fasttext(model_path, QUALITY_OPTION)
        labels = list(self.model.get_labels())
        if label not in labels:
            raise InputError(
                f"{QUALITY_OPTION}: {model_path} has labels {labels[:10]}, not {label!r}. "
                "Pass the label that marks good text with --quality-label."
            )
        self.label = label
        self.n_labels = len(labels)
        self.threshold = threshold
        self.normalization = normalization
        self.pareto_alpha = pareto_alpha
        self.seed = seed
        self.max_chars = max_chars
        """Characters of a document the model reads: the same as in training (the model's manifest)."""

    def score(self, text: str) -> float:
        """P(label | text) under the model."""
        labels, probs = self.model.predict(normalize_text(text, self.normalization, self.max_chars), k=self.n_labels)
        for lab, p in zip(labels, probs):
            if lab == self.label:
                return min(float(p), 1.0)
        return 0.0

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision:
        score = self.score(doc.text)
        notes = {"quality_score": round(score, 4)}
        if self.pareto_alpha is not None:
            keep = pareto_draw(doc.id, self.pareto_alpha, self.seed) > 1.0 - score
        else:
            keep = score >= self.threshold
        return Decision(keep, None if keep else "quality_classifier_low", score, notes)
