"""Document filters: each decides keep/drop with a reason code and a score, and never edits text.

`language` (fastText lid.176), `gopher` (quality and repetition), `c4`, `fineweb` and `classifier`
(a fastText quality model). `text_stats` computes a document's lines and words once for all of them;
`pipeline.filter_stage` chains them over shards.
"""

from pipeline.filters.base import KEEP, Decision, Filter, drop
from pipeline.filters.c4 import C4Config, C4Filter
from pipeline.filters.fineweb import FineWebConfig, FineWebFilter
from pipeline.filters.gopher import (
    GopherQualityConfig,
    GopherQualityFilter,
    GopherRepetitionConfig,
    GopherRepetitionFilter,
)
from pipeline.filters.text_stats import TextStats

__all__ = [
    "KEEP",
    "C4Config",
    "C4Filter",
    "Decision",
    "Filter",
    "FineWebConfig",
    "FineWebFilter",
    "GopherQualityConfig",
    "GopherQualityFilter",
    "GopherRepetitionConfig",
    "GopherRepetitionFilter",
    "TextStats",
    "drop",
]
