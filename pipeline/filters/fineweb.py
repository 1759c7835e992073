"""FineWeb's own rules (Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text
Data at Scale", arXiv:2406.17557, section 3.3 "custom filters"; code: datatrove FineWebQualityFilter).

Published thresholds: a page is dropped when fewer than 12 % of its lines end in terminal punctuation,
when more than 67 % of its lines are 30 characters or shorter, or when more than 10 % of its
characters sit in duplicated lines (the paper writes <= and >=; we use strict comparisons, as datatrove
does, so that `min_`/`max_` mean what they say). Note the last one: datatrove's class default is 0.01, ten times stricter than
the paper; at 0.01 one repeated heading or "* * *" separator drops a long article, so we keep the
published 0.1. The newline-per-word rule (`max_line_word_ratio`, 0.3) is in datatrove's code but not in
the paper; we keep it, counting non-empty lines (datatrove counts "\\n" characters, so blank lines and
"\\r\\n\\n" paragraph breaks would count double).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.documents import Document
from pipeline.filters.base import KEEP, Decision, drop
from pipeline.filters.text_stats import TextStats, ends_sentence


@dataclass(frozen=True)
class FineWebConfig:
    """Thresholds of the FineWeb rules (defaults: Penedo et al. 2024); None disables a rule."""

    #: Smallest share of lines that must end a sentence (. ! ? or other scripts' marks, closing quotes
    #: and brackets after them allowed: `text_stats.ends_sentence`).
    min_line_punct_ratio: float | None = 0.12
    #: Largest share of lines that may be short (at most `short_line_max_chars` characters).
    max_short_line_ratio: float | None = 0.67
    #: A line this long or shorter (characters, stripped) is short.
    short_line_max_chars: int = 30
    #: Largest share of line characters that may sit in repeats of an earlier line.
    max_dup_line_char_ratio: float | None = 0.1
    #: Most lines per word (a list or table has many lines of few words).
    max_line_word_ratio: float | None = 0.3


class FineWebFilter:
    """Drops list-like, menu-like and repetitive pages that pass Gopher and C4."""

    name = "fineweb"

    def __init__(self, config: FineWebConfig = FineWebConfig()):
        self.config = config

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision:
        c = self.config
        s = stats if stats is not None else TextStats(doc.text)
        lines = s.logical_lines
        if not lines:
            return drop("fineweb_min_line_punct_ratio", 0.0) if c.min_line_punct_ratio is not None else KEEP
        n = len(lines)
        if c.min_line_punct_ratio is not None:
            ratio = sum(1 for line in lines if ends_sentence(line)) / n
            if ratio < c.min_line_punct_ratio:
                return drop("fineweb_min_line_punct_ratio", ratio)
        if c.max_short_line_ratio is not None:
            limit = c.short_line_max_chars
            ratio = sum(1 for line in lines if len(line) <= limit) / n
            if ratio > c.max_short_line_ratio:
                return drop("fineweb_max_short_line_ratio", ratio)
        if c.max_dup_line_char_ratio is not None:
            _, dup_chars, all_chars = s.logical_line_dup_stats
            ratio = dup_chars / max(all_chars, 1)
            if ratio > c.max_dup_line_char_ratio:
                return drop("fineweb_max_dup_line_char_ratio", ratio)
        if c.max_line_word_ratio is not None:
            ratio = n / max(len(s.words), 1)
            if ratio > c.max_line_word_ratio:
                return drop("fineweb_max_line_word_ratio", ratio)
        return KEEP
