"""Exact and MinHash-LSH near-duplicate removal: DATA/filtered -> DATA/corpus.

See `stage.py` for how the four phases fit together and docs/dedup.md for the user manual.
`run_dedup` is imported on first use, so that reading the config (e.g. for CLI defaults) stays cheap.
"""

from .config import DedupConfig

__all__ = ["DedupConfig", "run_dedup"]


def __getattr__(name: str):
    if name == "run_dedup":
        from .stage import run_dedup

        return run_dedup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
