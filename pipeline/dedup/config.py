"""The dedup stage's config, the per-phase configs derived from it, and the LSH S-curve.

Kept free of heavy imports (no datasketch, no pyarrow) so that the CLI can show defaults cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError

#: Jaccard similarities at which the manifest and the CLI report the S-curve.
SCURVE_POINTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)


def candidate_probability(jaccard, bands: int, rows: int):
    """The LSH S-curve: probability that a pair with this Jaccard similarity shares at least one band,
    1 - (1 - s^rows)^bands."""
    s = np.asarray(jaccard, dtype=float)
    return 1.0 - (1.0 - s**rows) ** bands


@dataclass(frozen=True)
class SignatureConfig:
    """The part of the dedup config that phase 1 (signatures) depends on."""

    ngram: int
    num_perm: int
    seed: int


@dataclass(frozen=True)
class PartitionConfig:
    """The part of the dedup config that phase 2 (band keys, pairs, verification) depends on."""

    bands: int
    rows: int
    threshold: float
    partitions: int
    bucket_window: int


#: Folders of the dedup work files (under DATA/dedup): phase 1's signatures, phase 2's edges.
SIGNATURES_DIR = "signatures"
PARTITIONS_DIR = "partitions"


@dataclass(frozen=True)
class ClusterConfig:
    """Phase 3 has no options of its own; its config records the input layout it was run on."""

    edge_files: int
    signature_files: int


@dataclass(frozen=True)
class DedupConfig:
    """Exact and MinHash-LSH near-duplicate removal. Defaults and their reasons: docs/dedup.md."""

    ngram: int = 3
    """Words per shingle. 3 keeps copies with 6-8 % of words edited at Jaccard >= 0.55 (5-grams: ~0.45)."""
    num_perm: int = 120
    """MinHash permutations per signature (cost is linear in it; estimate std ~ sqrt(J(1-J)/num_perm))."""
    bands: int = 40
    """LSH bands: two documents become a candidate pair if any band of their signatures is equal."""
    rows: int = 3
    """Signature values per band; bands x rows must not exceed num_perm."""
    threshold: float = 0.55
    """Minimum estimated Jaccard similarity for a candidate pair to count as near duplicates."""
    seed: int = 1
    """Seed of the MinHash permutations; the same seed gives the same clusters."""
    partitions: int = 8
    """Hash-range partitions of the band keys, processed independently (memory per partition ~ 1/P)."""
    bucket_window: int = 32
    """Each bucket member is paired with the next this-many members (all pairs in smaller buckets)."""

    def __post_init__(self) -> None:
        for name in ("ngram", "num_perm", "bands", "rows", "partitions", "bucket_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be an integer of at least 1, got {value!r}")
        if self.bands * self.rows > self.num_perm:
            raise ConfigError(
                "bands",
                f"bands x rows = {self.bands} x {self.rows} = {self.bands * self.rows} exceeds num_perm = "
                f"{self.num_perm}; lower --bands or --rows, or raise --num-perm",
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("threshold", f"must be in (0, 1], got {self.threshold}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be in [0, 2^32), got {self.seed}")

    def signature_config(self) -> SignatureConfig:
        return SignatureConfig(ngram=self.ngram, num_perm=self.num_perm, seed=self.seed)

    def partition_config(self) -> PartitionConfig:
        return PartitionConfig(
            bands=self.bands,
            rows=self.rows,
            threshold=self.threshold,
            partitions=self.partitions,
            bucket_window=self.bucket_window,
        )

    def scurve(self) -> dict[str, float]:
        """P(candidate pair) at a few Jaccard similarities, for the manifest and the CLI."""
        return {f"{s:.2f}": round(float(candidate_probability(s, self.bands, self.rows)), 4) for s in SCURVE_POINTS}
