"""What every filter shares: the `Decision` it returns and the `Filter` protocol.

A filter looks at a document and decides; it never edits the text (datatrove's C4 filter rewrites the
document it was asked to judge, which makes a filter's output depend on the filters before it). A
decision carries keep/drop, a reason code named for the failing condition (`gopher_min_words` means
"fewer words than gopher.min_words"), and a score: the measured value that was compared with the
threshold, so a user reading `rejected/` sees how far a document missed. Annotations (language, its
score, the quality score) are returned, not written: the filter stage copies them into `doc.meta`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pipeline.documents import Document
from pipeline.filters.text_stats import TextStats


@dataclass(frozen=True)
class Decision:
    """The verdict of one filter on one document."""

    #: True to keep the document, False to drop it.
    keep: bool
    #: Reason code of the failing condition (None when kept), e.g. `gopher_min_words`.
    reason: str | None = None
    #: The measured value behind the decision (a ratio, a count, a probability); NaN when none applies.
    score: float = float("nan")
    #: Facts to store in the document's metadata when it is kept (e.g. {"lang": "en", "lang_score": 0.93}).
    annotations: dict = field(default_factory=dict)


#: The decision of a rule filter whose every rule passed (shared: decisions are immutable).
KEEP = Decision(keep=True)


def drop(reason: str, score: float) -> Decision:
    """A drop decision; `score` is the measured value that failed its threshold."""
    return Decision(keep=False, reason=reason, score=float(score))


@runtime_checkable
class Filter(Protocol):
    """A named decision over documents.

    `stats` holds the lines, words and paragraphs of `doc.text`, computed once per document and shared
    by every filter in a chain (datatrove tokenises the text again in each filter); filters that do not
    need it ignore it. Passing None makes the filter compute its own.
    """

    name: str

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision: ...
