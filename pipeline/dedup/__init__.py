"""Exact and MinHash-LSH near-duplicate removal: DATA/filtered -> DATA/corpus.

See `stage.py` for how the four phases fit together and docs/dedup.md for the user manual.
"""

from pipeline.dedup.config import DedupConfig
from pipeline.dedup.stage import run_dedup

__all__ = ["DedupConfig", "run_dedup"]
