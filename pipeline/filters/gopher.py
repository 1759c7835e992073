"""Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis
& Insights from Training Gopher", arXiv:2112.11446, appendix A.1.1 and table A1).

The defaults are the published values. Reason codes are `gopher_<threshold field>`: a document dropped
with `gopher_min_words` had fewer words than `GopherQualityConfig.min_words`. A threshold set to None
turns its rule off. Words, lines and paragraphs are defined once in `text_stats`.

Words are whitespace tokens with edge punctuation removed (datatrove tokenises with spaCy in every
filter, which is most of its cost). The n-gram fractions count the characters of the words involved
(no spaces) over all characters of the document, as datatrove does; the paper says only "fraction of
characters".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pipeline.documents import Document
from pipeline.filters.base import KEEP, Decision, drop
from pipeline.filters.text_stats import TextStats

#: Gopher's stop words: a document must contain at least `min_stop_words` of them (English only).
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")

#: Line starts that count as a bullet point.
BULLETS = ("•", "‣", "◦", "▪", "●", "○", "■", "□", "-", "–", "*", "·")


@dataclass(frozen=True)
class GopherQualityConfig:
    """Thresholds of the Gopher quality rules (defaults: Rae et al. 2021, A.1.1); None disables a rule."""

    #: Fewest words a document may have.
    min_words: int | None = 50
    #: Most words a document may have.
    max_words: int | None = 100_000
    #: Smallest mean word length, in characters.
    min_mean_word_length: float | None = 3.0
    #: Largest mean word length, in characters.
    max_mean_word_length: float | None = 10.0
    #: Most hash symbols ("#") or ellipses ("...", "…") per word, each counted on its own.
    max_symbol_word_ratio: float | None = 0.1
    #: Largest share of lines that may start with a bullet point.
    max_bullet_line_ratio: float | None = 0.9
    #: Largest share of lines that may end with an ellipsis.
    max_ellipsis_line_ratio: float | None = 0.3
    #: Smallest share of words that contain at least one alphabetic character.
    min_alpha_word_ratio: float | None = 0.8
    #: Fewest distinct stop words (from `stop_words`) a document must contain; English-specific.
    min_stop_words: int | None = 2
    #: The stop words; replace them (or set min_stop_words=None) when keeping other languages.
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS


class GopherQualityFilter:
    """Drops documents that do not look like prose: too short or long, odd word lengths, symbol-heavy,
    mostly bullets or trailing ellipses, mostly non-alphabetic, or without common English words."""

    name = "gopher_quality"

    def __init__(self, config: GopherQualityConfig = GopherQualityConfig()):
        self.config = config
        self._stop_words = frozenset(w.lower() for w in config.stop_words)

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision:
        c = self.config
        s = stats if stats is not None else TextStats(doc.text)
        words = s.words
        n_words = len(words)
        if c.min_words is not None and n_words < c.min_words:
            return drop("gopher_min_words", n_words)
        if c.max_words is not None and n_words > c.max_words:
            return drop("gopher_max_words", n_words)
        if n_words == 0:  # only reachable with min_words disabled; every ratio below needs words
            return drop("gopher_min_words", 0)

        mean_len = s.word_chars / n_words
        if c.min_mean_word_length is not None and mean_len < c.min_mean_word_length:
            return drop("gopher_min_mean_word_length", mean_len)
        if c.max_mean_word_length is not None and mean_len > c.max_mean_word_length:
            return drop("gopher_max_mean_word_length", mean_len)

        if c.max_symbol_word_ratio is not None:
            text = s.text
            hashes = text.count("#") / n_words
            ellipses = (text.count("...") + text.count("…")) / n_words
            worst = max(hashes, ellipses)
            if worst > c.max_symbol_word_ratio:
                return drop("gopher_max_symbol_word_ratio", worst)

        lines = s.lines
        n_lines = max(len(lines), 1)
        if c.max_bullet_line_ratio is not None:
            ratio = sum(1 for line in lines if line.startswith(BULLETS)) / n_lines
            if ratio > c.max_bullet_line_ratio:
                return drop("gopher_max_bullet_line_ratio", ratio)
        if c.max_ellipsis_line_ratio is not None:
            ratio = sum(1 for line in lines if line.endswith(("...", "…"))) / n_lines
            if ratio > c.max_ellipsis_line_ratio:
                return drop("gopher_max_ellipsis_line_ratio", ratio)

        if c.min_alpha_word_ratio is not None:
            ratio = sum(1 for w in words if w.isalpha() or any(map(str.isalpha, w))) / n_words
            if ratio < c.min_alpha_word_ratio:
                return drop("gopher_min_alpha_word_ratio", ratio)

        if c.min_stop_words is not None:
            found = len(self._stop_words & s.lower_word_set)
            if found < c.min_stop_words:
                return drop("gopher_min_stop_words", found)
        return KEEP


@dataclass(frozen=True)
class GopherRepetitionConfig:
    """Thresholds of the Gopher repetition rules (defaults: Rae et al. 2021, table A1); None disables."""

    #: Largest share of lines that repeat an earlier line.
    max_dup_line_ratio: float | None = 0.30
    #: Largest share of paragraphs that repeat an earlier paragraph.
    max_dup_paragraph_ratio: float | None = 0.30
    #: Largest share of line characters inside repeated lines.
    max_dup_line_char_ratio: float | None = 0.20
    #: Largest share of paragraph characters inside repeated paragraphs.
    max_dup_paragraph_char_ratio: float | None = 0.20
    #: (n, limit): the most frequent n-gram's occurrences may hold at most `limit` of the characters.
    max_top_ngram_char_ratios: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    #: (n, limit): words inside repeats of an earlier n-gram may hold at most `limit` of the characters.
    max_dup_ngram_char_ratios: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )


class GopherRepetitionFilter:
    """Drops documents that repeat themselves: duplicated lines or paragraphs, one n-gram everywhere,
    or many duplicated long n-grams (template pages, keyword stuffing, scraped lists)."""

    name = "gopher_repetition"

    def __init__(self, config: GopherRepetitionConfig = GopherRepetitionConfig()):
        self.config = config
        self._dup_ngrams = tuple(sorted(config.max_dup_ngram_char_ratios))

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision:
        c = self.config
        s = stats if stats is not None else TextStats(doc.text)

        if c.max_dup_paragraph_ratio is not None or c.max_dup_paragraph_char_ratio is not None:
            paragraphs = s.paragraphs
            dup_n, dup_chars = s.duplicate_paragraph_stats
            if c.max_dup_paragraph_ratio is not None and paragraphs:
                ratio = dup_n / len(paragraphs)
                if ratio > c.max_dup_paragraph_ratio:
                    return drop("gopher_max_dup_paragraph_ratio", ratio)
            if c.max_dup_paragraph_char_ratio is not None and paragraphs:
                ratio = dup_chars / max(sum(map(len, paragraphs)), 1)
                if ratio > c.max_dup_paragraph_char_ratio:
                    return drop("gopher_max_dup_paragraph_char_ratio", ratio)

        lines = s.lines
        dup_n, dup_chars = s.duplicate_line_stats
        if c.max_dup_line_ratio is not None and lines:
            ratio = dup_n / len(lines)
            if ratio > c.max_dup_line_ratio:
                return drop("gopher_max_dup_line_ratio", ratio)
        if c.max_dup_line_char_ratio is not None and lines:
            ratio = dup_chars / max(s.line_chars, 1)
            if ratio > c.max_dup_line_char_ratio:
                return drop("gopher_max_dup_line_char_ratio", ratio)

        words = s.words
        total = len(s.text)
        if not words:
            return KEEP
        for n, limit in c.max_top_ngram_char_ratios:
            ratio = top_ngram_chars(words, n) / total
            if ratio > limit:
                return drop(f"gopher_max_top_{n}gram_char_ratio", ratio)

        # A word inside a repeated (n+1)-gram is inside a repeated n-gram too, so the covered share
        # never grows with n: once it is under every remaining limit, the larger n need not be computed.
        bound = 1.0
        for i, (n, limit) in enumerate(self._dup_ngrams):
            if bound <= min(lim for _, lim in self._dup_ngrams[i:]):
                break
            bound = dup_ngram_chars(words, n) / total
            if bound > limit:
                return drop(f"gopher_max_dup_{n}gram_char_ratio", bound)
        return KEEP


def _ngrams(words: list[str], n: int):
    return zip(*(words[i:] for i in range(n)))


def top_ngram_chars(words: list[str], n: int) -> int:
    """Word characters covered by the most frequent n-gram (0 unless it occurs more than once).

    Among equally frequent n-grams the one with the most characters counts, so the answer does not
    depend on which came first (datatrove takes whichever `most_common` returns).
    """
    if len(words) < n:
        return 0
    counts = Counter(_ngrams(words, n))
    top = max(counts.values())
    if top < 2:
        return 0
    return top * max(sum(map(len, g)) for g, c in counts.items() if c == top)


def dup_ngram_chars(words: list[str], n: int) -> int:
    """Characters of the words inside a repeat of an earlier n-gram.

    Only repeats count, not the first occurrence: a text said twice is half duplicate, not all of it
    (datatrove counts the same way; counting first occurrences too would drop ~5 % of Wikipedia
    articles, which repeat names and titles, at the published thresholds).
    """
    if len(words) <= n:
        return 0
    seen: set = set()
    covered = bytearray(len(words))
    for i, g in enumerate(_ngrams(words, n)):
        if g in seen:
            covered[i : i + n] = b"\x01" * n
        else:
            seen.add(g)
    if not any(covered):
        return 0
    return sum(len(w) for w, flag in zip(words, covered) if flag)
