"""C4's rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", JMLR 21, section 2.2; reference code: tensorflow_datasets/text/c4_utils.py), applied as
drop decisions only.

C4 both drops pages and deletes lines. Filters here never edit, so:

- the page rules are kept as they are: a page containing "lorem ipsum" (`c4_lorem_ipsum`) or a curly
  bracket (`c4_curly_bracket`) is dropped;
- each line rule (lines mentioning "javascript", lines with cookie/privacy/terms phrases, lines not
  ending in terminal punctuation) marks the lines C4 would delete; if those lines hold more than
  `max_removed_word_ratio` of the page's words the page is dropped, named for that rule
  (`c4_javascript_lines`, `c4_policy_lines`, `c4_no_terminal_punct_lines`). The 5 % default is
  RefinedWeb's rule for turning line corrections into a page drop (Penedo et al. 2023, arXiv:2306.01116,
  appendix G.3). Below it the page is kept whole, boilerplate line included.
- C4's "at least 5 sentences" rule counts the sentences of the lines C4 would keep (lines of at least
  3 words, no word over 1000 characters, not deleted by an enabled line rule): `c4_min_sentences`.

The terminal-punctuation line rule is off by default, as in FineWeb (datatrove's
`C4QualityFilter(filter_no_terminal_punct=False)`): headings, captions and hard-wrapped text (Project
Gutenberg wraps at ~70 characters) end lines without punctuation, so it would delete most lines of good
pages; FineWeb's line-punctuation ratio (fineweb.py) covers the same ground more gently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.documents import Document
from pipeline.filters.base import KEEP, Decision, drop
from pipeline.filters.text_stats import TextStats

#: Phrases of C4's policy-line rule (from c4_utils.py).
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
#: C4's line-end characters (c4_utils.py: `_END_MARKS`), with a trailing ellipsis not counting.
C4_END_MARKS = (".", "?", "!", '"', "'")
#: Wikipedia-style citation marks, removed before C4 looks at a line's last character.
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
#: A sentence end: terminal punctuation, optional closing quotes/brackets, then space or end of line.
_SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’)\]]*(?=\s|$)")


@dataclass(frozen=True)
class C4Config:
    """The C4 rules as drop conditions (defaults: C4 and RefinedWeb, see the module docstring)."""

    #: Drop pages that contain "lorem ipsum" (placeholder text).
    drop_lorem_ipsum: bool = True
    #: Drop pages that contain "{" (code, templates, JSON).
    drop_curly_bracket: bool = True
    #: Count lines mentioning "javascript" as deleted ("please enable JavaScript" banners).
    javascript_lines: bool = True
    #: Count lines with cookie/privacy/terms-of-use phrases as deleted.
    policy_lines: bool = True
    #: Count lines not ending in terminal punctuation as deleted (off: see the module docstring).
    no_terminal_punct_lines: bool = False
    #: Largest share of words in lines one line rule deletes before the page is dropped instead.
    max_removed_word_ratio: float = 0.05
    #: Fewest sentences the kept lines must hold (None disables).
    min_sentences: int | None = 5
    #: Lines with fewer words are not counted as sentences.
    min_words_per_line: int = 3
    #: Lines with a longer word (characters) are not counted as sentences.
    max_word_length: int = 1000


class C4Filter:
    """Drops placeholder, code-like and boilerplate-heavy pages, and pages with too few sentences."""

    name = "c4"

    def __init__(self, config: C4Config = C4Config()):
        self.config = config

    def decide(self, doc: Document, stats: TextStats | None = None) -> Decision:
        c = self.config
        s = stats if stats is not None else TextStats(doc.text)
        lower = s.lower_text
        if c.drop_lorem_ipsum and "lorem ipsum" in lower:
            return drop("c4_lorem_ipsum", lower.count("lorem ipsum"))
        if c.drop_curly_bracket and "{" in s.text:
            return drop("c4_curly_bracket", s.text.count("{"))

        lines = s.logical_lines
        line_words = [len(line.split()) for line in lines]
        total_words = max(sum(line_words), 1)
        deleted = bytearray(len(lines))

        rules = []
        if c.javascript_lines and "javascript" in lower:
            rules.append(("c4_javascript_lines", lambda line: "javascript" in line.lower()))
        if c.policy_lines and any(p in lower for p in POLICY_PHRASES):
            rules.append(("c4_policy_lines", lambda line: any(p in line.lower() for p in POLICY_PHRASES)))
        if c.no_terminal_punct_lines:
            rules.append(("c4_no_terminal_punct_lines", _lacks_terminal_punct))
        for reason, hits in rules:
            removed = 0
            for i, line in enumerate(lines):
                if hits(line):
                    removed += line_words[i]
                    deleted[i] = 1
            if removed / total_words > c.max_removed_word_ratio:
                return drop(reason, removed / total_words)

        if c.min_sentences is not None:
            sentences = 0
            for i, line in enumerate(lines):
                if deleted[i] or line_words[i] < c.min_words_per_line:
                    continue
                if c.max_word_length and len(line) > c.max_word_length and any(
                    len(w) > c.max_word_length for w in line.split()
                ):
                    continue
                sentences += max(1, len(_SENTENCE_END.findall(line)))
                if sentences >= c.min_sentences:
                    break
            if sentences < c.min_sentences:
                return drop("c4_min_sentences", sentences)
        return KEEP


def _lacks_terminal_punct(line: str) -> bool:
    line = _CITATION.sub("", line).rstrip()
    return not line.endswith(C4_END_MARKS) or line.endswith("...")
