"""Token shards: self-describing Arrow IPC files of packed documents, and the reader the trainer uses.

Format (version 1). A token shard is an *uncompressed* Arrow IPC file (so it can be memory-mapped and
read without a copy) with one column, `tokens: large_list<uint16 | uint32>`, one row per document.
Arrow stores such a column as exactly what a trainer wants: a flat token buffer (every document
concatenated, each ending with the end-of-text token) plus a document offsets buffer (int64). A file may
hold several record batches; no document spans two batches. The schema metadata (keys prefixed
`crawlgpt.`) makes every file describe itself: format version, tokenizer hash (sha256 of
tokenizer.json), vocab size, dtype, end-of-text id, token and document counts.

A shard folder holds `<split>/*.arrow` for the splits `train` and `val`, plus `manifest.json` whose
top-level fields repeat the tokenizer facts and whose `splits` lists, per split and in order, every
file with its tokens, documents, bytes and sha256. The reader trusts nothing: it compares each file
with the manifest (size, and sha256 unless told not to) and with the expected tokenizer, and every
mismatch raises `TokenShardError` naming the command that remakes the shards.

This module imports only numpy, pyarrow and the standard library: the trainer runs where the
tokenizer library and click are not installed.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from formats.manifest import atomic_path, listed_path, sha256_file, write_json_atomic

TOKEN_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
META_PREFIX = "crawlgpt."
#: The command that rebuilds token shards, named in every error.
REMAKE = "make shards"
#: Documents per record batch when writing: keeps the offsets of one batch small, costs nothing to read.
BATCH_DOCS = 65536


class TokenShardError(PipelineError):
    """A token shard is missing, truncated, corrupt, or was made with another tokenizer."""


def hash_unit(key: str, salt: str = "") -> float:
    """A stable number in [0, 1) for `key`: the first 8 bytes of sha256(salt + key) over 2**64."""
    digest = hashlib.sha256(f"{salt}{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(doc_id: str, val_fraction: float) -> str:
    """'val' or 'train' for a document, from a hash of its id alone.

    Depends on nothing but the id, so the split is the same whatever the order, sharding or number of
    workers, and the tokenizer can hold out exactly the documents the shards put in validation.
    """
    return "val" if hash_unit(doc_id, "split:") < val_fraction else "train"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65,536), else uint32: half the bytes for common vocabs."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _arrow_type(dtype: np.dtype) -> pa.DataType:
    return pa.uint16() if dtype == np.uint16 else pa.uint32()


def _schema(dtype: np.dtype, meta: dict[str, str]) -> pa.Schema:
    metadata = {f"{META_PREFIX}{k}".encode(): str(v).encode() for k, v in meta.items()}
    return pa.schema([pa.field("tokens", pa.large_list(pa.field("item", _arrow_type(dtype), nullable=False)))],
                     metadata=metadata)


# --- writing -------------------------------------------------------------------------------------


def write_shard(
    path: str | Path,
    docs: Sequence[np.ndarray],
    *,
    vocab_size: int,
    eot_id: int,
    tokenizer_hash: str,
) -> dict:
    """Write documents (token arrays, each ending with `eot_id`) to one shard at `path`, atomically.

    Returns the shard's record: {path (as given), tokens, documents, bytes, sha256}. Raises ValueError
    for an id outside the vocabulary or a document that does not end with the end-of-text token,
    because a shard that lies about its contents would only fail later, inside training.
    """
    path = Path(path)
    dtype = dtype_for_vocab(vocab_size)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    if len(docs) and int(lengths.min()) < 1:
        raise ValueError("every document must hold at least its end-of-text token")
    num_tokens = int(lengths.sum())
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    meta = {
        "format_version": TOKEN_FORMAT_VERSION,
        "tokenizer_hash": tokenizer_hash,
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "eot_id": eot_id,
        "num_tokens": num_tokens,
        "num_documents": len(docs),
    }
    schema = _schema(dtype, meta)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, schema) as writer:
                # One record batch per BATCH_DOCS documents: only one batch is ever concatenated in memory.
                for lo in range(0, len(docs), BATCH_DOCS):
                    hi = min(lo + BATCH_DOCS, len(docs))
                    raw = np.concatenate(docs[lo:hi])
                    # Check before narrowing to uint16, where an id >= 65,536 would silently wrap.
                    if int(raw.min()) < 0 or int(raw.max()) >= vocab_size:
                        bad = int(raw.max()) if int(raw.max()) >= vocab_size else int(raw.min())
                        raise ValueError(f"token id {bad} is outside the vocabulary (size {vocab_size})")
                    off = offsets[lo : hi + 1] - offsets[lo]
                    if not np.all(raw[off[1:] - 1] == eot_id):
                        raise ValueError(f"every document must end with the end-of-text token {eot_id}")
                    values = pa.array(raw.astype(dtype, copy=False), type=_arrow_type(dtype))
                    col = pa.LargeListArray.from_arrays(pa.array(off, pa.int64()), values)
                    col = col.cast(schema.field("tokens").type)
                    writer.write_batch(pa.record_batch([col], schema=schema))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return {
        "path": str(path),
        "tokens": num_tokens,
        "documents": len(docs),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


class ShardPacker:
    """Collects documents and writes `<out_dir>/<prefix>-NNNNN.arrow` each time `max_shard_bytes` fill.

    Memory holds at most one shard's tokens, so a large input becomes several files of bounded size;
    `finish()` writes the remainder and returns the records of every file written (paths relative to
    `base`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str,
        *,
        vocab_size: int,
        eot_id: int,
        tokenizer_hash: str,
        max_shard_bytes: int = 256 << 20,
        base: str | Path | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.meta = dict(vocab_size=vocab_size, eot_id=eot_id, tokenizer_hash=tokenizer_hash)
        self.itemsize = dtype_for_vocab(vocab_size).itemsize
        self.max_shard_bytes = max_shard_bytes
        self.base = Path(base) if base is not None else self.out_dir
        self.records: list[dict] = []
        self._docs: list[np.ndarray] = []
        self._tokens = 0

    def add(self, doc: np.ndarray) -> None:
        self._docs.append(doc)
        self._tokens += len(doc)
        if self._tokens * self.itemsize >= self.max_shard_bytes:
            self._write()

    def _write(self) -> None:
        path = self.out_dir / f"{self.prefix}-{len(self.records):05d}.arrow"
        record = write_shard(path, self._docs, **self.meta)
        record["path"] = str(Path(record["path"]).relative_to(self.base))
        self.records.append(record)
        self._docs, self._tokens = [], 0

    def finish(self) -> list[dict]:
        if self._docs:
            self._write()
        return self.records


def write_manifest(out_dir: str | Path, splits: dict[str, list[dict]], *, vocab_size: int, eot_id: int,
                   tokenizer_hash: str, extra: dict | None = None) -> dict:
    """Write a minimal token-shard `manifest.json` (the fields the reader checks); return it."""
    manifest = dict(extra or {})
    manifest.update(shard_manifest_fields(splits, vocab_size=vocab_size, eot_id=eot_id, tokenizer_hash=tokenizer_hash))
    write_json_atomic(Path(out_dir) / MANIFEST_NAME, manifest)
    return manifest


def shard_manifest_fields(splits: dict[str, list[dict]], *, vocab_size: int, eot_id: int, tokenizer_hash: str) -> dict:
    """The top-level manifest fields the reader relies on (also added by the shards stage's finalize)."""
    return {
        "token_format_version": TOKEN_FORMAT_VERSION,
        "vocab_size": vocab_size,
        "eot_id": eot_id,
        "dtype": dtype_for_vocab(vocab_size).name,
        "tokenizer_hash": tokenizer_hash,
        "splits": {s: list(splits.get(s, [])) for s in sorted(set(SPLITS) | set(splits))},
        "split_totals": {
            s: {"files": len(recs), "tokens": sum(r["tokens"] for r in recs),
                "documents": sum(r["documents"] for r in recs), "bytes": sum(r["bytes"] for r in recs)}
            for s, recs in sorted(splits.items())
        },
    }


def write_token_shards(
    out_dir: str | Path,
    splits: dict[str, Iterable[np.ndarray]],
    *,
    vocab_size: int,
    eot_id: int,
    tokenizer_hash: str,
    max_shard_bytes: int = 256 << 20,
) -> dict:
    """Write `{split: [doc token arrays incl. eot]}` as `out_dir/<split>/*.arrow` + `manifest.json`.

    The simple way to make shards from token arrays (tests, fixtures, small experiments); `make shards`
    writes the same format from a corpus. Returns the manifest.
    """
    out_dir = Path(out_dir)
    records: dict[str, list[dict]] = {}
    for split, docs in splits.items():
        packer = ShardPacker(out_dir / split, split, vocab_size=vocab_size, eot_id=eot_id,
                             tokenizer_hash=tokenizer_hash, max_shard_bytes=max_shard_bytes, base=out_dir)
        for doc in docs:
            packer.add(np.asarray(doc))
        records[split] = packer.finish()
    return write_manifest(out_dir, records, vocab_size=vocab_size, eot_id=eot_id, tokenizer_hash=tokenizer_hash)


# --- reading -------------------------------------------------------------------------------------


@dataclass
class ShardFile:
    """One opened shard: its metadata and zero-copy views of its tokens, per record batch."""

    path: Path
    meta: dict
    #: Flat token arrays, one per record batch (views into the memory map).
    chunks: list[np.ndarray]
    #: Document offsets per chunk (int64, starting at 0, length documents + 1).
    offsets: list[np.ndarray]

    @property
    def num_tokens(self) -> int:
        return int(self.meta["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.meta["num_documents"])

    def tokens(self) -> np.ndarray:
        """All tokens of the shard (a view when it has one batch, a copy otherwise)."""
        if len(self.chunks) == 1:
            return self.chunks[0]
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.dtype(self.meta["dtype"]))

    def document_lengths(self) -> np.ndarray:
        return np.concatenate([np.diff(o) for o in self.offsets]) if self.offsets else np.zeros(0, np.int64)


def read_shard_meta(schema: pa.Schema, where: str | Path) -> dict:
    """Decode and type the `crawlgpt.*` schema metadata of a shard; TokenShardError if it is not one."""
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    meta = {k[len(META_PREFIX):]: v for k, v in raw.items() if k.startswith(META_PREFIX)}
    needed = ("format_version", "tokenizer_hash", "vocab_size", "dtype", "eot_id", "num_tokens", "num_documents")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise TokenShardError(f"{where} is not a crawlgpt token shard (metadata lacks {missing}); run `{REMAKE}`")
    for k in ("format_version", "vocab_size", "eot_id", "num_tokens", "num_documents"):
        meta[k] = int(meta[k])
    if meta["format_version"] != TOKEN_FORMAT_VERSION:
        raise TokenShardError(
            f"{where} has token format version {meta['format_version']}, this reader expects "
            f"{TOKEN_FORMAT_VERSION}; run `{REMAKE} FORCE=1` to rewrite the shards"
        )
    return meta


def open_shard(path: str | Path) -> ShardFile:
    """Memory-map one shard and check it is internally consistent (counts, dtype, end-of-text)."""
    path = Path(path)
    if not path.exists():
        raise TokenShardError(f"token shard {path} is missing; run `{REMAKE}` to remake it")
    try:
        source = pa.memory_map(str(path), "r")
        reader = pa.ipc.open_file(source)
        meta = read_shard_meta(reader.schema, path)
        chunks, offsets = [], []
        for i in range(reader.num_record_batches):
            col = reader.get_batch(i).column(0)
            off = col.offsets.to_numpy()
            values = col.values.to_numpy(zero_copy_only=True)
            chunks.append(values[off[0] : off[-1]])
            offsets.append(off - off[0])
    except TokenShardError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TokenShardError(f"token shard {path} cannot be read ({exc}); it is truncated or corrupt: run `{REMAKE}`") from exc
    shard = ShardFile(path, meta, chunks, offsets)
    tokens = sum(len(c) for c in chunks)
    docs = sum(len(o) - 1 for o in offsets)
    if tokens != meta["num_tokens"] or docs != meta["num_documents"]:
        raise TokenShardError(
            f"token shard {path} holds {tokens} tokens in {docs} documents but its metadata says "
            f"{meta['num_tokens']} in {meta['num_documents']}; run `{REMAKE}`"
        )
    if chunks and chunks[0].dtype != np.dtype(meta["dtype"]):
        raise TokenShardError(f"token shard {path} stores {chunks[0].dtype}, metadata says {meta['dtype']}; run `{REMAKE}`")
    for chunk, off in zip(chunks, offsets):
        if len(off) > 1 and (np.any(np.diff(off) < 1) or not np.all(chunk[off[1:] - 1] == meta["eot_id"])):
            raise TokenShardError(f"token shard {path} has a document that does not end with the end-of-text "
                                  f"token {meta['eot_id']} (corrupt); run `{REMAKE}`")
    return shard


class TokenShards:
    """One split of a token-shard folder, read as a single concatenated token sequence.

    Opening checks every listed file against the manifest (exists, size, sha256 when `verify_checksums`,
    metadata) and against the expected tokenizer, then memory-maps them. `window(start, length)` costs a
    binary search over chunk starts and returns a zero-copy view when the window lies inside one chunk;
    nothing is cached per read, so memory stays flat however many windows are read.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        split: str = "train",
        expect_vocab_size: int | None = None,
        expect_tokenizer_hash: str | None = None,
        verify_checksums: bool = True,
    ):
        self.shards_dir = Path(shards_dir)
        self.split = split
        manifest_path = self.shards_dir / MANIFEST_NAME
        if not manifest_path.exists():
            raise TokenShardError(f"{self.shards_dir} has no {MANIFEST_NAME}: the shards are missing or unfinished; run `{REMAKE}`")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = manifest["splits"][split]
            self.vocab_size = int(manifest["vocab_size"])
            self.eot_id = int(manifest["eot_id"])
            self.tokenizer_hash = str(manifest["tokenizer_hash"])
            self.dtype = np.dtype(manifest["dtype"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenShardError(f"{manifest_path} is not a token-shard manifest or lacks split '{split}' ({exc!r}); run `{REMAKE}`") from exc
        self.manifest = manifest
        if expect_vocab_size is not None and expect_vocab_size != self.vocab_size:
            raise TokenShardError(
                f"{self.shards_dir} was tokenized with vocab size {self.vocab_size}, expected {expect_vocab_size}; "
                f"run `{REMAKE}` after `make tokenizer` with the wanted VOCAB_SIZE, or point at the right DATA"
            )
        if expect_tokenizer_hash is not None and expect_tokenizer_hash != self.tokenizer_hash:
            raise TokenShardError(
                f"{self.shards_dir} was made with tokenizer {self.tokenizer_hash[:12]}, expected "
                f"{expect_tokenizer_hash[:12]} (the tokenizer changed); run `{REMAKE}` to retokenize"
            )
        if not files:
            raise TokenShardError(f"{self.shards_dir}: split '{split}' has no shards; run `{REMAKE}` (is the corpus empty?)")
        self.files: list[ShardFile] = []
        for rec in files:
            try:
                path = listed_path(self.shards_dir, rec["path"], manifest_path)
            except ValueError as exc:
                raise TokenShardError(f"{exc} Or run `{REMAKE}`") from exc
            if not path.exists():
                raise TokenShardError(f"token shard {path} listed in {manifest_path} is missing; run `{REMAKE}`")
            size = path.stat().st_size
            if size != rec["bytes"]:
                raise TokenShardError(
                    f"token shard {path} has {size} bytes, the manifest says {rec['bytes']} (truncated or "
                    f"replaced); run `{REMAKE}`"
                )
            if verify_checksums and sha256_file(path) != rec["sha256"]:
                raise TokenShardError(f"token shard {path} does not match its sha256 in {manifest_path} (corrupt); run `{REMAKE}`")
            shard = open_shard(path)
            m = shard.meta
            for key, want in (("tokenizer_hash", self.tokenizer_hash), ("vocab_size", self.vocab_size),
                              ("eot_id", self.eot_id), ("dtype", self.dtype.name),
                              ("num_tokens", rec["tokens"]), ("num_documents", rec["documents"])):
                if m[key] != want:
                    raise TokenShardError(
                        f"token shard {path} has {key}={m[key]!r} but {manifest_path} says {want!r} "
                        f"(shards from two runs mixed); run `{REMAKE} FORCE=1`"
                    )
            self.files.append(shard)
        # Flatten all (file, batch) chunks into one index.
        self._chunks: list[np.ndarray] = [c for f in self.files for c in f.chunks]
        self._doc_offsets: list[np.ndarray] = [o for f in self.files for o in f.offsets]
        tok_lens = np.array([len(c) for c in self._chunks], dtype=np.int64)
        doc_lens = np.array([len(o) - 1 for o in self._doc_offsets], dtype=np.int64)
        self._tok_starts = np.concatenate([[0], np.cumsum(tok_lens)]).astype(np.int64)
        self._doc_starts = np.concatenate([[0], np.cumsum(doc_lens)]).astype(np.int64)
        self.num_tokens = int(self._tok_starts[-1])
        self.num_documents = int(self._doc_starts[-1])

    def __len__(self) -> int:
        return self.num_tokens

    def __reduce__(self):
        # Pickled (e.g. into DataLoader worker processes) as "reopen these files", never as their
        # contents: the receiving process maps the same files. Checksums were verified here already.
        return (TokenShards, (str(self.shards_dir), self.split, self.vocab_size, self.tokenizer_hash, False))

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.shards_dir)!r}, split={self.split!r}: {self.num_tokens:,} tokens, "
                f"{self.num_documents:,} documents, {len(self.files)} files, vocab {self.vocab_size})")

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's concatenation, across shard boundaries.

        A view into the memory map when the window lies inside one chunk (the common case), a fresh
        array otherwise. Raises IndexError for a window outside the split.
        """
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) is outside the {self.num_tokens} tokens of split '{self.split}'")
        starts = self._tok_starts
        i = bisect.bisect_right(starts, start) - 1  # type: ignore[arg-type]  # works on numpy arrays
        i = min(i, len(self._chunks) - 1)
        lo = start - int(starts[i])
        if lo + length <= len(self._chunks[i]):
            return self._chunks[i][lo : lo + length]
        out = np.empty(length, dtype=self.dtype)
        filled = 0
        while filled < length:
            piece = self._chunks[i][lo : lo + (length - filled)]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            i, lo = i + 1, 0
        return out

    def document(self, i: int) -> np.ndarray:
        """Tokens of document `i` of the split (ending with the end-of-text token); a zero-copy view."""
        i = int(i)
        if i < 0 or i >= self.num_documents:
            raise IndexError(f"document {i} is outside the {self.num_documents} documents of split '{self.split}'")
        c = bisect.bisect_right(self._doc_starts, i) - 1  # type: ignore[arg-type]
        j = i - int(self._doc_starts[c])
        off = self._doc_offsets[c]
        return self._chunks[c][int(off[j]) : int(off[j + 1])]

    def document_lengths(self) -> np.ndarray:
        """Length in tokens of every document of the split, in order."""
        return np.concatenate([np.diff(o) for o in self._doc_offsets])
