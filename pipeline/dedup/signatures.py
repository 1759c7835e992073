"""Phase 1: shingles and MinHash signatures, one Parquet file per input shard.

A shingle is `ngram` consecutive words of the normalised text; a document with fewer words than that
has a single shingle made of all its words, and a document with no words has none (it can still be an
exact duplicate). Shingle hashes are computed for a whole batch at once from the word hashes, then each
document's MinHash comes from datasketch's vectorised `update_batch` over the numpy array of its shingle
hashes (via `MinHash.generator`, which reuses the permutations): no Python call per shingle.

The signature file of a shard has one row per document and no text, so later phases never hold texts:

| column | type | meaning |
|---|---|---|
| key | uint64 | 64-bit hash of the document id (see `normalize.id_keys`) |
| id | string | the document id |
| words | int32 | words in the normalised text (the representative rule prefers more) |
| shingles | int32 | shingles hashed (0: no words; the document takes part in exact dedup only) |
| exact | fixed_size_binary(16) | blake2b of the normalised text |
| signature | fixed_size_list<uint32>[num_perm] | the MinHash signature |
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash

from pipeline.documents import iter_document_batches
from pipeline.errors import InputError
from formats.manifest import atomic_path, output_record
from pipeline.stage import ShardStats, ShardTask, report_progress

from .config import SignatureConfig
from .normalize import EXACT_HASH_BYTES, WordHashes, exact_hashes, fmix64, id_keys, normalize_texts, word_hashes

log = logging.getLogger(__name__)

#: datasketch's permutation scheme, fixed so that a datasketch upgrade cannot silently change signatures.
MINHASH_SCHEME = "affine32"
EMPTY_HASH = np.uint32(0xFFFFFFFF)  # what datasketch holds before any update
_SHINGLE_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd (golden-ratio constant)


def signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema(
        [
            ("key", pa.uint64()),
            ("id", pa.string()),
            ("words", pa.int32()),
            ("shingles", pa.int32()),
            ("exact", pa.binary(EXACT_HASH_BYTES)),
            ("signature", pa.list_(pa.uint32(), num_perm)),
        ]
    )


def shingle_hashes(words: WordHashes, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every word n-gram of every document, flattened, and per-document offsets.

    The n-gram starting at word i hashes as fmix64(sum_k w[i+k] * C^(n-1-k)) truncated to 32 bits
    (datasketch's affine32 scheme takes 32-bit input). Documents with 0 < words < ngram get one shingle
    over their words; the terms past a document's end are masked to zero so windows never mix documents.
    """
    w, offsets = words.hashes, words.offsets
    counts = np.diff(offsets)
    n_docs = counts.size
    total = w.size
    if total == 0:
        return np.zeros(0, np.uint32), np.zeros(n_docs + 1, np.int64)
    doc_of_word = np.repeat(np.arange(n_docs), counts)
    doc_end = offsets[1:][doc_of_word]  # one past the last word of each word's document
    pos = np.arange(total)
    padded = np.concatenate([w, np.zeros(ngram - 1, np.uint64)])
    acc = np.zeros(total, np.uint64)
    for k in range(ngram):
        term = padded[k : k + total] * np.uint64(pow(int(_SHINGLE_BASE), ngram - 1 - k, 1 << 64))
        term[pos + k >= doc_end] = 0
        acc += term
    full = pos + ngram <= doc_end
    short = (counts[doc_of_word] < ngram) & (pos == offsets[:-1][doc_of_word])
    keep = full | short
    shingles = (fmix64(acc[keep]) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    per_doc = np.where(counts >= ngram, counts - ngram + 1, (counts > 0).astype(np.int64))
    shingle_offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(per_doc, out=shingle_offsets[1:])
    return shingles, shingle_offsets


def _identity(x):
    """datasketch hashfunc: our values are already hashed, so the whole array passes through."""
    return x


def minhash_signatures(shingles: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures; documents without shingles get all-EMPTY_HASH rows.

    Each document's shingle array is handed to `update_batch` as a single batch element with an identity
    hashfunc, so datasketch permutes and min-reduces the whole array in numpy (one call per document).
    `tests/test_dedup_signatures.py` checks this equals datasketch fed one value at a time.
    """
    n_docs = offsets.size - 1
    out = np.full((n_docs, num_perm), EMPTY_HASH, dtype=np.uint32)
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    starts, ends = offsets[:-1].tolist(), offsets[1:].tolist()
    batches = ([shingles[starts[i] : ends[i]]] for i in nonempty.tolist())
    minhashes = MinHash.generator(batches, num_perm=num_perm, seed=seed, hashfunc=_identity, scheme=MINHASH_SCHEME)
    for i, m in zip(nonempty.tolist(), minhashes):
        out[i] = m.hashvalues
    return out


#: Normalised bytes hashed per vectorised step: big enough to amortise numpy calls, small enough that
#: the temporary arrays (about 40 bytes per text byte) stay in cache and memory stays flat.
CHUNK_BYTES = 1 << 19


def _chunks(normalized: pa.LargeStringArray, max_bytes: int) -> list[tuple[int, int]]:
    """[lo, hi) document ranges of about `max_bytes` normalised bytes each (at least one document)."""
    offsets = np.frombuffer(normalized.buffers()[1], np.int64, len(normalized) + 1, normalized.offset * 8)
    ranges, lo, n = [], 0, len(normalized)
    while lo < n:
        hi = int(np.searchsorted(offsets, offsets[lo] + max_bytes, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        ranges.append((lo, hi))
        lo = hi
    return ranges


def signature_table(ids: list[str], texts: pa.Array, config: SignatureConfig) -> pa.Table:
    """The signature rows (see the module docstring) of one batch of documents."""
    normalized = normalize_texts(texts)
    n_docs = len(normalized)
    signatures = np.empty((n_docs, config.num_perm), np.uint32)
    word_counts = np.zeros(n_docs, np.int32)
    shingle_counts = np.zeros(n_docs, np.int32)
    for lo, hi in _chunks(normalized, CHUNK_BYTES):
        words = word_hashes(normalized.slice(lo, hi - lo))
        shingles, shingle_offsets = shingle_hashes(words, config.ngram)
        signatures[lo:hi] = minhash_signatures(shingles, shingle_offsets, config.num_perm, config.seed)
        word_counts[lo:hi] = words.counts
        shingle_counts[lo:hi] = np.diff(shingle_offsets)
    flat = pa.array(signatures.reshape(-1), pa.uint32())
    return pa.table(
        {
            "key": pa.array(id_keys(ids), pa.uint64()),
            "id": pa.array(ids, pa.string()),
            "words": pa.array(word_counts, pa.int32()),
            "shingles": pa.array(shingle_counts, pa.int32()),
            "exact": pa.array(exact_hashes(normalized), pa.binary(EXACT_HASH_BYTES)),
            "signature": pa.FixedSizeListArray.from_arrays(flat, config.num_perm),
        },
        schema=signature_schema(config.num_perm),
    )


def signature_shard(task: ShardTask, stage_dir: Path, config: SignatureConfig) -> ShardStats:
    """Stage function: signatures of one input document shard -> stage_dir/<shard>.parquet."""
    (source,) = task.inputs
    out_path = stage_dir / f"{task.name}.parquet"
    stats = ShardStats()
    seen: set[str] = set()
    batches = iter_document_batches(source, ["id", "text"])
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, signature_schema(config.num_perm), compression="zstd") as writer:
            for batch in batches:
                ids = batch.column("id").to_pylist()
                for doc_id in ids:
                    if doc_id in seen:
                        raise InputError(
                            f"{source}: document id {doc_id!r} appears twice (raw input: "
                            f"{_raw_source(source, doc_id)}); the dedup stage tells documents apart by id. The id "
                            "field of that file repeats a value: give its documents unique ids, or remove the "
                            "id field (each document is then named <file>:<line>), then run `make corpus` again."
                        )
                    seen.add(doc_id)
                table = signature_table(ids, batch.column("text"), config)
                writer.write_table(table)
                stats.docs_in += table.num_rows
                shingle_counts = table["shingles"].to_numpy()
                stats.extra["shingles"] = stats.extra.get("shingles", 0) + int(shingle_counts.sum())
                stats.extra["docs_without_shingles"] = stats.extra.get("docs_without_shingles", 0) + int(
                    (shingle_counts == 0).sum()
                )
                report_progress(table.num_rows)
    stats.kept = stats.docs_in
    stats.outputs = [output_record(out_path, stats.docs_in, stage_dir)]
    return stats


def _raw_source(shard: str | Path, doc_id: str) -> str:
    """The raw file name recorded for `doc_id` in a document shard (for error messages)."""
    try:
        rows = pq.read_table(shard, columns=["id", "source"]).to_pylist()
    except (OSError, KeyError, pa.ArrowInvalid):
        return "unknown"
    return ", ".join(sorted({str(r["source"]) for r in rows if r["id"] == doc_id})) or "unknown"
