"""Phase 2: LSH band keys, partitioned; candidate pairs; verification; local clusters.

Each document's signature is cut into `bands` bands of `rows` values; a band's values hash (with the
band number folded in) to a 64-bit *band key*. Two documents that share a band key are a candidate pair.
The probability of that, for a pair with Jaccard similarity s, is the S-curve

    P(candidate | s) = 1 - (1 - s^rows)^bands

Band keys are split into `partitions` by hash range (partition p owns keys in [p, p+1) * 2^64 / P), and
exact-content hashes likewise. A partition reads only the signature files, keeps the band keys in its
range, and needs nothing from any other partition: partitions run in parallel here and could run on
different machines. It holds 24 bytes per band entry (band key, document key, content hash), about
90 at the peak of sorting them, i.e. ~90 x bands / partitions bytes per document of the corpus, plus
4 x num_perm bytes per document with a candidate pair while it verifies them (bench/bench_dedup.py
measures 485 bytes per document for one of 8 partitions).

Inside a partition:
- exact duplicates: documents with the same content hash are linked to the one with the smallest key;
- buckets: entries with the same band key. Copies with the same content hash are collapsed to one entry
  first (they are already linked), then each entry is paired with the next `bucket_window` entries of its
  bucket in key order: a bucket of up to window + 1 documents yields all its pairs, a huge bucket of
  boilerplate yields a linear number of pairs instead of a quadratic one;
- verification: each candidate pair is kept only if the share of equal signature values (the MinHash
  estimate of Jaccard similarity, over all `num_perm` values, not only the banded ones) is at least
  `threshold`. This removes the false candidates of the S-curve's lower tail;
- the verified edges are reduced to their connected components (each member linked to its component's
  smallest key), so the cluster phase reads at most one edge per duplicate per partition.

Entries are sorted by (band key, document key) before pairing, so the edges do not depend on the order
of shards or rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from formats.manifest import atomic_path, output_record
from pipeline.stage import ShardStats, ShardTask

from .config import PartitionConfig
from .normalize import fmix64
from .unionfind import connected_components

log = logging.getLogger(__name__)

EDGE_SCHEMA = pa.schema([("key", pa.uint64()), ("root", pa.uint64())])
_BAND_SEED = np.uint64(0x2545F4914F6CDD1D)
_BAND_MULT = np.uint64(0x9FB21C651E98DF25)
#: Candidate pairs verified per numpy step (bounds the gathered pairs x num_perm signature arrays).
_VERIFY_CHUNK = 4096


def partition_name(index: int) -> str:
    return f"part-{index:05d}"


def partition_index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def partition_of(hashes: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each 64-bit hash: its position in [0, 2^64) cut into `partitions` equal ranges."""
    return ((hashes >> np.uint64(32)) * np.uint64(partitions) >> np.uint64(32)).astype(np.int64)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: a hash of each band's `rows` signature values and of the band number."""
    n = signatures.shape[0]
    banded = signatures[:, : bands * rows].reshape(n, bands, rows)
    h = np.broadcast_to(fmix64(np.arange(bands, dtype=np.uint64) + _BAND_SEED), (n, bands)).copy()
    for r in range(rows):
        h ^= banded[:, :, r]  # uint32 -> uint64, no copy of the whole signature matrix
        h *= _BAND_MULT
    return fmix64(h)


def exact_prefix(exact: pa.Array) -> np.ndarray:
    """The first 8 bytes of each 16-byte content hash, as uint64 (for partitioning and grouping)."""
    raw = np.frombuffer(exact.buffers()[1], dtype=np.uint64, count=2 * (exact.offset + len(exact)))
    return raw[2 * exact.offset :: 2].copy()


def signature_matrix(column: pa.Array) -> np.ndarray:
    """(rows, num_perm) uint32 view of a fixed_size_list<uint32> column."""
    width = column.type.list_size
    values = column.values.to_numpy(zero_copy_only=False)
    start = column.offset * width
    return values[start : start + len(column) * width].reshape(len(column), width)


#: Signature rows read at a time: bounds the per-batch temporaries (band keys, masks) of a partition.
BATCH_ROWS = 8192


def _batches(path: str, columns: list[str]):
    yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def exact_pairs(exact: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member, first) pairs linking each document to the smallest key with the same content hash."""
    if exact.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    order = np.lexsort((keys, exact))
    e, k = exact[order], keys[order]
    new_group = np.ones(e.size, bool)
    new_group[1:] = e[1:] != e[:-1]
    first = k[np.maximum.accumulate(np.where(new_group, np.arange(e.size), 0))]
    dup = ~new_group
    return k[dup], first[dup]


def bucket_pairs(
    band: np.ndarray, keys: np.ndarray, exact: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Unique candidate pairs (a < b) from entries (band key, document key, content hash).

    Returns (a, b, buckets) where `buckets` counts band keys shared by two or more distinct documents.
    """
    empty = np.zeros(0, np.uint64)
    if band.size == 0:
        return empty, empty, 0
    # Collapse copies with equal content inside a bucket to the smallest key (they are linked anyway).
    order = np.lexsort((keys, exact, band))
    band, keys, exact = band[order], keys[order], exact[order]
    first = np.ones(band.size, bool)
    first[1:] = (band[1:] != band[:-1]) | (exact[1:] != exact[:-1])
    band, keys = band[first], keys[first]
    order = np.lexsort((keys, band))
    band, keys = band[order], keys[order]
    starts = np.ones(band.size, bool)
    starts[1:] = band[1:] != band[:-1]
    sizes = np.diff(np.append(np.flatnonzero(starts), band.size))
    buckets = int((sizes > 1).sum())
    a_parts, b_parts = [], []
    for d in range(1, window + 1):
        if d >= band.size:
            break
        same = band[:-d] == band[d:]
        if not same.any():
            break  # no bucket has more than d members
        a_parts.append(keys[:-d][same])
        b_parts.append(keys[d:][same])
    if not a_parts:
        return empty, empty, buckets
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    first = np.ones(lo.size, bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])  # the same pair from several bands counts once
    return lo[first], hi[first], buckets


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal MinHash values per row pair: the MinHash estimate of Jaccard similarity."""
    return np.count_nonzero(sig_a == sig_b, axis=1) / sig_a.shape[1]


def partition_shard(task: ShardTask, stage_dir: Path, config: PartitionConfig) -> ShardStats:
    """Stage function: one partition's edges -> stage_dir/<part>.parquet (columns key, root)."""
    part = partition_index(task.name)
    P = config.partitions
    band_parts, key_parts, exact_parts = [], [], []
    exact_hash_parts, exact_key_parts = [], []
    own_keys, own_files = [], []
    n_docs = 0
    for file_index, path in enumerate(task.inputs):
        for batch in _batches(path, ["key", "shingles", "exact", "signature"]):
            keys = batch.column("key").to_numpy()
            exact = exact_prefix(batch.column("exact"))
            n_docs += keys.size
            mine = partition_of(keys, P) == part
            own_keys.append(keys[mine])
            own_files.append(np.full(int(mine.sum()), file_index, np.int32))
            mine = partition_of(exact, P) == part
            exact_hash_parts.append(exact[mine])
            exact_key_parts.append(keys[mine])
            has_shingles = batch.column("shingles").to_numpy() > 0
            sig = signature_matrix(batch.column("signature"))[has_shingles]
            bk = band_keys(sig, config.bands, config.rows)
            mine = partition_of(bk, P) == part
            doc_rows = np.nonzero(mine)[0]  # row-major, like bk[mine]
            band_parts.append(bk[mine])
            key_parts.append(keys[has_shingles][doc_rows])
            exact_parts.append(exact[has_shingles][doc_rows])
    _check_unique_keys(_cat(own_keys, np.uint64), _cat(own_files, np.int32), task.inputs)

    ex_a, ex_b = exact_pairs(_cat(exact_hash_parts, np.uint64), _cat(exact_key_parts, np.uint64))
    band = _cat(band_parts, np.uint64)
    cand_a, cand_b, buckets = bucket_pairs(
        band, _cat(key_parts, np.uint64), _cat(exact_parts, np.uint64), config.bucket_window
    )
    jaccard = _verify(task.inputs, cand_a, cand_b)
    ok = jaccard >= config.threshold
    a = np.concatenate([ex_a, cand_a[ok]])
    b = np.concatenate([ex_b, cand_b[ok]])
    nodes, roots = connected_components(a, b)
    linked = nodes != roots

    out_path = stage_dir / f"{task.name}.parquet"
    table = pa.table({"key": nodes[linked], "root": roots[linked]}, schema=EDGE_SCHEMA)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    stats = ShardStats(outputs=[output_record(out_path, table.num_rows, stage_dir)])
    stats.extra = {
        "docs_scanned": n_docs,
        "band_entries": int(band.size),
        "buckets": buckets,
        "exact_pairs": int(ex_a.size),
        "candidate_pairs": int(cand_a.size),
        "verified_pairs": int(ok.sum()),
        "rejected_pairs": int((~ok).sum()),
        "edges": table.num_rows,
    }
    log.debug("partition %s: %s", task.name, stats.extra)
    return stats


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _verify(paths: tuple[str, ...], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of each candidate pair, reading only the candidates' signatures."""
    if a.size == 0:
        return np.zeros(0, np.float64)
    wanted = np.unique(np.concatenate([a, b]))
    found_keys, found_sigs = [], []
    for path in paths:
        for batch in _batches(path, ["key", "signature"]):
            keys = batch.column("key").to_numpy()
            sel = np.isin(keys, wanted)
            if sel.any():
                found_keys.append(keys[sel])
                found_sigs.append(signature_matrix(batch.column("signature"))[sel])
    keys = np.concatenate(found_keys)
    sigs = np.concatenate(found_sigs)
    order = np.argsort(keys)
    keys, sigs = keys[order], sigs[order]
    ia, ib = np.searchsorted(keys, a), np.searchsorted(keys, b)
    out = np.empty(a.size, np.float64)
    for lo in range(0, a.size, _VERIFY_CHUNK):  # gather pairs' signatures a chunk at a time
        hi = lo + _VERIFY_CHUNK
        out[lo:hi] = estimated_jaccard(sigs[ia[lo:hi]], sigs[ib[lo:hi]])
    return out


def _check_unique_keys(keys: np.ndarray, files: np.ndarray, paths: tuple[str, ...]) -> None:
    """Two documents with the same id (or, with odds of 2^-64, the same id hash) cannot be told apart."""
    if keys.size < 2:
        return
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    same = np.flatnonzero(k[1:] == k[:-1])
    if same.size == 0:
        return
    i = same[0]
    f1, f2 = paths[files[order][i]], paths[files[order][i + 1]]
    ids = [
        row
        for path in (f1, f2)
        for row in pq.read_table(path, columns=["key", "id"]).to_pylist()
        if row["key"] == int(k[i])
    ]
    raise InputError(
        f"document id {ids[0]['id'] if ids else hex(int(k[i]))!r} appears in two filtered shards "
        f"({Path(f1).stem} and {Path(f2).stem}; their raw files are listed in DATA/filtered/manifest.json); the "
        "dedup stage tells documents apart by id. Most often the same raw file is in SOURCE twice (a copy in "
        "another folder): remove one copy and run `make corpus FORCE=1`. If the two files really differ, give "
        "their documents unique ids (or remove the id field: each document is then named <file>:<line>)."
    )
