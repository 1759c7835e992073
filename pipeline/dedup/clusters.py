"""Phase 3: global clusters from the partitions' edges, a representative per cluster.

The partitions' edge files hold at most one (key, root) edge per duplicate document per partition, so
this phase's memory grows with the number of documents that have a duplicate, never with the number of
candidate pairs or with the rest of the corpus: about 500 bytes per duplicate (key arrays, its id and
content hash as Python objects, a sort key) plus one signature per cluster (4 x num_perm bytes) to
estimate each member's Jaccard similarity with its representative. (datatrove's cluster stage, by
contrast, reads every duplicate pair of every bucket into a Python dict.)

The representative of a cluster is the member with the most normalised words (the most complete copy),
ties broken by the smallest id: a rule on the documents themselves, not on where they were read.

The assignment of every duplicate goes to one file per input shard (dedup/clusters/<shard>.parquet), so
the apply phase for a shard reads only its own:

| column | type | meaning |
|---|---|---|
| id | string | a document that belongs to a cluster of two or more |
| cluster | string | cluster id: the smallest member key, 16 hex digits (stable across runs and partitions) |
| cluster_size | int32 | members in the cluster |
| representative | string | id of the member kept |
| reason | string | `representative`, `exact_duplicate` (same normalised text as the representative) or `near_duplicate` |
| jaccard | float32 | MinHash estimate of the Jaccard similarity with the representative (1 for the representative) |
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import AccountingError
from formats.manifest import atomic_path, output_record
from pipeline.stage import ShardStats, ShardTask

from .buckets import BATCH_ROWS, estimated_jaccard, signature_matrix
from .config import ClusterConfig
from .unionfind import connected_components

log = logging.getLogger(__name__)

REPRESENTATIVE = "representative"
EXACT = "exact_duplicate"
NEAR = "near_duplicate"

ASSIGNMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("cluster", pa.string()),
        ("cluster_size", pa.int32()),
        ("representative", pa.string()),
        ("reason", pa.string()),
        ("jaccard", pa.float32()),
    ]
)

#: Largest clusters listed in the manifest for inspection.
TOP_CLUSTERS = 10


def cluster_id(root_key: int) -> str:
    return f"{root_key:016x}"


def size_bin(size: int) -> str:
    """Histogram bin of a cluster size: 1, 2, 3, 4, then powers of two (5-8, 9-16, ...)."""
    if size <= 4:
        return str(size)
    hi = 1 << (size - 1).bit_length()
    return f"{hi // 2 + 1}-{hi}"


def size_histogram(sizes: np.ndarray, singletons: int) -> dict[str, int]:
    """Clusters per size bin, singletons (documents with no duplicate) included as size 1."""
    counts: Counter = Counter({"1": singletons} if singletons else {})
    for size, n in zip(*np.unique(sizes, return_counts=True)):
        counts[size_bin(int(size))] += int(n)
    return dict(histogram_rows(counts))


def histogram_rows(histogram: dict[str, int]) -> list[tuple[str, int]]:
    """(size bin, clusters) in size order (JSON manifests sort keys as strings: "129-256" < "2")."""
    return sorted(histogram.items(), key=lambda kv: int(kv[0].split("-")[0]))


def cluster_shard(task: ShardTask, stage_dir: Path, config: ClusterConfig) -> ShardStats:
    """Stage function: all edges -> components -> one assignment file per input shard."""
    edge_paths = task.inputs[: config.edge_files]
    sig_paths = task.inputs[config.edge_files :]
    edges = [pq.read_table(p) for p in edge_paths]
    a = np.concatenate([t["key"].to_numpy() for t in edges]) if edges else np.zeros(0, np.uint64)
    b = np.concatenate([t["root"].to_numpy() for t in edges]) if edges else np.zeros(0, np.uint64)
    del edges
    nodes, roots = connected_components(a, b)
    del a, b

    # Scan 1: what the representative rule needs about each member (no signatures yet).
    member_id = np.empty(nodes.size, object)
    member_words = np.zeros(nodes.size, np.int64)
    member_exact = np.empty(nodes.size, object)
    member_shard = np.empty(nodes.size, object)
    n_docs = 0
    for path in sig_paths:
        shard = Path(path).stem
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["key", "id", "words", "exact"]):
            keys = batch.column("key").to_numpy()
            n_docs += keys.size
            idx, rows = _lookup(nodes, keys)
            if rows.size:
                member_id[idx] = np.array(batch.column("id").to_pylist(), object)[rows]
                member_words[idx] = batch.column("words").to_numpy()[rows]
                member_exact[idx] = np.array(batch.column("exact").to_pylist(), object)[rows]
                member_shard[idx] = shard

    missing = np.flatnonzero(member_shard == None)  # noqa: E711 (element-wise on an object array)
    if missing.size:
        raise AccountingError(
            f"{missing.size} documents of the partitions' edges (key {int(nodes[missing[0]]):016x}, ...) are "
            "in no signature file: the work files under DATA/dedup are inconsistent. Rerun with --force."
        )

    # Representative: most words, then smallest id (a Python sort over duplicates only).
    order = sorted(range(nodes.size), key=lambda i: (int(roots[i]), -int(member_words[i]), member_id[i]))
    rep_of_root: dict[int, int] = {}
    for i in order:
        rep_of_root.setdefault(int(roots[i]), i)
    rep_index = np.array([rep_of_root[int(r)] for r in roots], np.int64)
    comp_roots, comp_sizes = np.unique(roots, return_counts=True)
    size_of = dict(zip(comp_roots.tolist(), comp_sizes.tolist()))

    # Scans 2 and 3: representatives' signatures, then each member's estimate against its representative.
    reps = np.unique(rep_index)
    rep_sig = _signatures_of(sig_paths, nodes[reps])
    rep_row = np.full(nodes.size, -1, np.int64)
    rep_row[reps] = np.arange(reps.size)
    jaccard = np.ones(nodes.size, np.float32)
    for path in sig_paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["key", "signature"]):
            idx, rows = _lookup(nodes, batch.column("key").to_numpy())
            if rows.size:
                sig = signature_matrix(batch.column("signature"))[rows]
                jaccard[idx] = estimated_jaccard(sig, rep_sig[rep_row[rep_index[idx]]])

    reason = np.where(
        rep_index == np.arange(nodes.size),
        REPRESENTATIVE,
        np.where(member_exact == member_exact[rep_index], EXACT, NEAR),
    )
    stats = ShardStats()
    for path in sig_paths:
        shard = Path(path).stem
        sel = np.flatnonzero(member_shard == shard)
        sel = sel[np.argsort(member_id[sel].astype(str), kind="stable")] if sel.size else sel
        table = pa.table(
            {
                "id": pa.array(member_id[sel].tolist(), pa.string()),
                "cluster": pa.array([cluster_id(int(roots[i])) for i in sel], pa.string()),
                "cluster_size": pa.array([size_of[int(roots[i])] for i in sel], pa.int32()),
                "representative": pa.array(member_id[rep_index[sel]].tolist(), pa.string()),
                "reason": pa.array(reason[sel].tolist(), pa.string()),
                "jaccard": pa.array(jaccard[sel], pa.float32()),
            },
            schema=ASSIGNMENT_SCHEMA,
        )
        out_path = stage_dir / f"{shard}.parquet"
        with atomic_path(out_path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        stats.outputs.append(output_record(out_path, table.num_rows, stage_dir))

    removed = Counter(reason.tolist())
    largest = np.argsort(-comp_sizes, kind="stable")[:TOP_CLUSTERS]
    stats.extra = {
        "docs": n_docs,
        "clusters": int(comp_roots.size),
        "docs_in_clusters": int(nodes.size),
        "exact_duplicate": int(removed.get(EXACT, 0)),
        "near_duplicate": int(removed.get(NEAR, 0)),
        "cluster_size_histogram": size_histogram(comp_sizes, n_docs - int(nodes.size)),
        "largest_clusters": [
            {
                "cluster": cluster_id(int(comp_roots[c])),
                "size": int(comp_sizes[c]),
                "representative": member_id[rep_of_root[int(comp_roots[c])]],
            }
            for c in largest
        ],
    }
    return stats


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions in sorted_keys, positions in keys) of the keys present in sorted_keys."""
    if sorted_keys.size == 0 or keys.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pos = np.searchsorted(sorted_keys, keys)
    pos[pos == sorted_keys.size] = 0
    rows = np.flatnonzero(sorted_keys[pos] == keys)
    return pos[rows], rows


def _signatures_of(paths: tuple[str, ...], wanted: np.ndarray) -> np.ndarray:
    """Signatures of the documents with keys `wanted` (sorted), in that order."""
    out = None
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["key", "signature"]):
            idx, rows = _lookup(wanted, batch.column("key").to_numpy())
            if rows.size:
                sig = signature_matrix(batch.column("signature"))
                if out is None:
                    out = np.zeros((wanted.size, sig.shape[1]), np.uint32)
                out[idx] = sig[rows]
    return out if out is not None else np.zeros((0, 0), np.uint32)
