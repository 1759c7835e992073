"""The lines, words and paragraphs of one document, computed once and shared by every rule filter.

datatrove's Gopher, C4 and FineWeb filters each split and tokenise the text again (with spaCy for
English); here each view is computed the first time a filter asks for it and then reused, which is
most of why our filter stage is faster. Definitions (used by every rule, documented once):

- a *line* is a line of `str.splitlines()` with surrounding whitespace removed; empty lines are not
  lines. (WET files use "\\n" between blocks, Gutenberg texts "\\r\\n"; both split the same way.)
- a *paragraph* is a run of text between blank lines, stripped; empty ones are skipped.
- a *token* is a whitespace-separated piece of the text; a *word* is a token with the punctuation
  and symbols at both ends removed, if anything is left ("Hello," -> "Hello", "--" -> no word).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cached_property

#: Characters stripped from the ends of tokens to make words: ASCII punctuation plus the quotes,
#: dashes, brackets and marks common in web text and in other scripts.
WORD_EDGE_PUNCTUATION = (
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    "‘’‚‛“”„‟«»‹›–—―…•·¡¿§¶†‡′″‰©®™°"
    "。、，：；！？（）【】「」『』〈〉《》．｡"
)

#: Characters that end a sentence in the scripts of `lid.176` (a subset of Unicode Sentence_Terminal,
#: the set FineWeb's line-punctuation rule uses); the ellipsis is not among them.
TERMINAL_PUNCTUATION = frozenset(".!?‼‽⁇⁈⁉。！？．｡؟۔।॥։။።፧፨។៕᙮᠃᠉")
#: Closing quotes and brackets that may follow a sentence's end: `He said "no."` ends a sentence.
CLOSING_MARKS = "\"'”’»›)]）」』】"


def ends_sentence(line: str) -> bool:
    """True if `line` ends in terminal punctuation, possibly followed by closing quotes or brackets.

    FineWeb (datatrove) looks at the last character only, so every line of dialogue ending in `."` or
    `.’` counts as unpunctuated; we look past the closing marks.
    """
    end = line.rstrip(CLOSING_MARKS)
    return bool(end) and end[-1] in TERMINAL_PUNCTUATION

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


class TextStats:
    """Lazily computed views of one text; each is computed at most once."""

    __slots__ = ("text", "__dict__")

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def lines(self) -> list[str]:
        """Non-empty lines, stripped."""
        return [s for s in (line.strip() for line in self.text.splitlines()) if s]

    @cached_property
    def lower_text(self) -> str:
        """The text in lower case (for phrase rules)."""
        return self.text.lower()

    @cached_property
    def wrap_width(self) -> int | None:
        """The width the text is hard-wrapped at, or None if it is not hard-wrapped (see `logical_lines`)."""
        return hard_wrap_width(self.lines)

    @cached_property
    def logical_lines(self) -> list[str]:
        """Lines as the author meant them: `lines`, except that hard-wrapped text is unwrapped.

        FineWeb's and C4's line rules assume one line per HTML block, as in WET files. Text hard-wrapped
        at a fixed width (e-texts, plain-text pages, mail archives) ends most lines mid-sentence, so
        those rules would call a novel a menu. For such text a physical line that fills the width
        continues on the next line; a blank line or a short line ends the logical line (as `fmt` and
        Markdown reflow text).
        """
        width = self.wrap_width
        if width is None:
            return self.lines
        short = WRAP_FULL_SHARE * width
        out: list[str] = []
        buf: list[str] = []
        for raw in self.text.splitlines():
            line = raw.strip()
            if not line:
                if buf:
                    out.append(" ".join(buf))
                    buf = []
                continue
            buf.append(line)
            if len(line) < short:
                out.append(" ".join(buf))
                buf = []
        if buf:
            out.append(" ".join(buf))
        return out

    @cached_property
    def logical_line_dup_stats(self) -> tuple[int, int, int]:
        """(logical lines repeating an earlier one, characters in those repeats, characters in all)."""
        if self.wrap_width is None:
            return (*self.duplicate_line_stats, self.line_chars)
        lines = self.logical_lines
        return (*_duplicates(Counter(lines)), sum(map(len, lines)))

    @cached_property
    def line_chars(self) -> int:
        """Characters in all lines (stripped), the denominator of line-share rules."""
        return sum(map(len, self.lines))

    @cached_property
    def paragraphs(self) -> list[str]:
        """Non-empty paragraphs (text between blank lines), stripped."""
        return [s for s in (p.strip() for p in _PARAGRAPH_BREAK.split(self.text)) if s]

    @cached_property
    def tokens(self) -> list[str]:
        """Whitespace-separated pieces of the text."""
        return self.text.split()

    @cached_property
    def words(self) -> list[str]:
        """Tokens without the punctuation at their ends; tokens that are only punctuation are not words."""
        strip = str.strip
        return [w for w in (strip(t, WORD_EDGE_PUNCTUATION) for t in self.tokens) if w]

    @cached_property
    def word_chars(self) -> int:
        """Characters in all words (for the mean word length)."""
        return sum(map(len, self.words))

    @cached_property
    def lower_word_set(self) -> frozenset[str]:
        """The distinct words, lower-cased (for stop-word rules)."""
        return frozenset(w.lower() for w in self.words)

    @cached_property
    def line_counts(self) -> Counter:
        """How often each line occurs."""
        return Counter(self.lines)

    @cached_property
    def duplicate_line_stats(self) -> tuple[int, int]:
        """(lines that repeat an earlier line, characters in those repeats)."""
        return _duplicates(self.line_counts)

    @cached_property
    def duplicate_paragraph_stats(self) -> tuple[int, int]:
        """(paragraphs that repeat an earlier paragraph, characters in those repeats)."""
        return _duplicates(Counter(self.paragraphs))


#: Hard-wrap detection: wrap widths seen in practice (Project Gutenberg ~70, mail 72-78, RFCs 72).
WRAP_MIN_WIDTH, WRAP_MAX_WIDTH = 40, 100
#: A line at least this share of the wrap width is "full" (it was wrapped, not ended).
WRAP_FULL_SHARE = 0.6
#: Hard-wrapped text has at least this share of full lines (paragraphs of two lines or more on average:
#: dialogue makes many one-line paragraphs) ...
WRAP_MIN_FULL_LINES = 0.4
#: ... and, because wrapping cuts sentences, at least this share of lines starting in lower case (about
#: half of the cuts land before a lower-case word in English prose).
WRAP_MIN_LOWER_STARTS = 0.25


def hard_wrap_width(lines: list[str]) -> int | None:
    """The wrap width (95th percentile of line lengths) if `lines` look hard-wrapped, else None.

    Hard-wrapped prose: most lines are nearly as long as the width, no line much longer, the width is
    between 40 and 100 characters, and many lines start in lower case (a sentence cut by the wrap).
    A menu or a table has lines of similar length too, but they start with capitals or digits.
    """
    if len(lines) < 4:
        return None
    lengths = sorted(map(len, lines))
    width = lengths[int(0.95 * (len(lengths) - 1))]
    if not WRAP_MIN_WIDTH <= width <= WRAP_MAX_WIDTH:
        return None
    full = sum(1 for n in lengths if WRAP_FULL_SHARE * width <= n <= width + 5)
    if full < WRAP_MIN_FULL_LINES * len(lengths):
        return None
    lower = sum(1 for line in lines[1:] if line[0].islower())
    if lower < WRAP_MIN_LOWER_STARTS * (len(lines) - 1):
        return None
    return width


def _duplicates(counts: Counter) -> tuple[int, int]:
    """Occurrences beyond the first, and their characters: the Gopher definition of duplicates."""
    n = chars = 0
    for item, c in counts.items():
        if c > 1:
            n += c - 1
            chars += (c - 1) * len(item)
    return n, chars
