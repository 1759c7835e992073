"""Tokenize the corpus into packed token shards (`make shards`).

One task per corpus shard (a Parquet file of `make corpus`): its documents are read a batch at a
time, encoded with `encode_batch_fast` (the tokenizer library runs a batch on its own thread pool),
given an end-of-text token each, sent to the train or validation split by a hash of their id, and
packed into `<shards>/<split>/<corpus shard>-NNNNN.arrow` files (format: `formats.token_shards`).

Shard size: every corpus shard becomes at least one token file per split, and a new file is started
whenever one reaches `max_shard_bytes` of tokens, so files never exceed that size (plus the offsets)
and a worker holds at most one file's tokens per split in memory. Corpus shards are small (the
filter writes one per input file, about 100-500 MB of text), so in practice there is one train and
one (small) validation file per corpus shard; a huge corpus shard is cut into several files.

Resume: the stage runs under `pipeline.stage.run_stage`, so a shard with a valid receipt is skipped,
and a shard killed half-way is redone from scratch (its partial files are removed first). The
manifest lists every file per split with tokens, documents, bytes and sha256, and repeats the
tokenizer facts (hash, vocab size, end-of-text id, dtype) the reader checks. A copy of the tokenizer
travels inside the shard folder (`tokenizer.json`), so a folder copied elsewhere can still be decoded.

Accounting: documents in = documents packed + documents dropped as `empty` (no text, so no tokens).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.errors import ConfigError, InputError
from formats.manifest import atomic_path, manifest_hash, sha256_file
from pipeline.stage import Executor, Progress, ShardStats, ShardTask, report_progress, run_stage, stage_documents
from formats.token_shards import SPLITS, ShardPacker, dtype_for_vocab, shard_manifest_fields, split_of
from pipeline.tokenizer_train import TOKENIZER_FILE, TextCodec, iter_text_batches

log = logging.getLogger(__name__)

STAGE = "shards"
#: Documents per encode_batch call: enough to keep the tokenizer's threads busy, little memory. Not part
#: of the config because it does not change the output.
ENCODE_BATCH_DOCS = 1024


@dataclass(frozen=True)
class ShardsConfig:
    """How documents become token shards. Changing a field remakes the shards (with --force)."""

    #: Share of documents (chosen by a hash of their id) in the validation split. 1% of a 10k-document
    #: corpus is ~100 documents (~100k tokens): enough for a stable validation loss, little taken from training.
    val_fraction: float = 0.01
    #: A token file is closed when its tokens reach this many bytes (256 MiB = 128M uint16 tokens):
    #: large enough that file count stays small, small enough to write from memory on a laptop.
    max_shard_bytes: int = 256 << 20
    #: What is tokenized: "corpus" (the curated documents of `make corpus`) or "raw" (every readable
    #: document of the download stage's files, unfiltered and not deduplicated: the baseline of the
    #: data ablation, see docs/ablation.md).
    source: str = "corpus"

    def validate(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction", f"{self.val_fraction}; must be in [0, 1)")
        if self.max_shard_bytes < 1 << 10:
            raise ConfigError("max_shard_bytes", f"{self.max_shard_bytes}; must be at least 1 KiB")
        if self.source not in SOURCES:
            raise ConfigError("source", f"{self.source!r}; choose one of {SOURCES}")


SOURCES = ("corpus", "raw")


_CODECS: dict[tuple, TextCodec] = {}


def _codec(path: str) -> TextCodec:
    """The tokenizer, loaded once per worker process (keyed by path, size and mtime)."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _CODECS:
        _CODECS.clear()
        _CODECS[key] = TextCodec(path)
    return _CODECS[key]


def _remove_partial_outputs(stage_dir: Path, name: str) -> None:
    """Delete what an earlier, killed attempt at this shard left (files are rewritten from scratch)."""
    for split in SPLITS:
        folder = stage_dir / split
        if folder.is_dir():
            for p in folder.glob(f"{name}-[0-9][0-9][0-9][0-9][0-9].arrow"):
                p.unlink()
            for p in folder.glob(f".{name}-[0-9][0-9][0-9][0-9][0-9].arrow.*.tmp"):
                p.unlink()


def tokenize_shard(task: ShardTask, stage_dir: Path, config: ShardsConfig) -> ShardStats:
    """Tokenize one corpus shard (`task.inputs = (corpus parquet, tokenizer.json)`) into token files."""
    corpus_path, tokenizer_path = task.inputs
    codec = _codec(tokenizer_path)
    tok, eot, dtype = codec.tokenizer, codec.eot_id, dtype_for_vocab(codec.vocab_size)
    _remove_partial_outputs(stage_dir, task.name)
    packers = {
        split: ShardPacker(stage_dir / split, task.name, vocab_size=codec.vocab_size, eot_id=eot,
                           tokenizer_hash=codec.hash, max_shard_bytes=config.max_shard_bytes, base=stage_dir)
        for split in SPLITS
    }
    stats = ShardStats()
    tokens = {s: 0 for s in SPLITS}
    text_bytes = 0
    for ids, texts, lengths in _document_batches(Path(corpus_path), stats, raw=config.source == "raw"):
        encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
        for doc_id, enc, n_bytes in zip(ids, encodings, lengths):
            stats.docs_in += 1
            doc_ids = enc.ids
            if not doc_ids:
                stats.dropped["empty"] += 1
                continue
            arr = np.empty(len(doc_ids) + 1, dtype=dtype)
            arr[:-1] = doc_ids
            arr[-1] = eot
            split = split_of(doc_id, config.val_fraction)
            packers[split].add(arr)
            tokens[split] += len(arr)
            text_bytes += n_bytes
            stats.kept += 1
        report_progress(len(texts))
    for split, packer in packers.items():
        for rec in packer.finish():
            stats.outputs.append({**rec, "rows": rec["documents"]})
    stats.extra = {
        "tokens": sum(tokens.values()),
        "text_bytes": text_bytes,
        **{f"{s}_tokens": tokens[s] for s in SPLITS},
        **{f"{s}_documents": sum(r["documents"] for r in packers[s].records) for s in SPLITS},
    }
    log.debug("%s: %d documents, %d tokens", task.name, stats.kept, stats.extra["tokens"])
    return stats


def _document_batches(path: Path, stats: ShardStats, raw: bool) -> Iterator[tuple[list[str], list[str], list[int]]]:
    """(ids, texts, UTF-8 byte lengths) batches of a corpus shard, or of a raw file read by the download
    stage's readers (then every unreadable record is counted in stats.unreadable by its reason)."""
    if not raw:
        yield from iter_text_batches([path], batch_docs=ENCODE_BATCH_DOCS)
        return
    from pipeline.readers import Unreadable, read_file

    batch: tuple[list[str], list[str], list[int]] = ([], [], [])
    for item in read_file(path):
        if isinstance(item, Unreadable):
            stats.docs_in += 1
            stats.unreadable[item.reason] += 1
            continue
        batch[0].append(item.id)
        batch[1].append(item.text)
        batch[2].append(len(item.text.encode("utf-8", "surrogatepass")))
        if len(batch[0]) >= ENCODE_BATCH_DOCS:
            yield batch
            batch = ([], [], [])
    if batch[0]:
        yield batch


@contextlib.contextmanager
def _threads_per_worker(workers: int, n_tasks: int) -> Iterator[None]:
    """Share the cores between worker processes instead of giving every process a thread per core.

    The tokenizer library encodes a batch on a thread pool as large as the machine (RAYON_NUM_THREADS).
    With several worker processes each would start one, oversubscribing the cores; the processes, one
    corpus shard each, already keep the cores busy (and balance better than threads waiting for the
    longest document of a batch), so each gets cores / processes threads. A value the user set wins.
    Spawned workers read the environment when they start, so setting it around the pool suffices.
    """
    processes = min(workers, n_tasks)
    if processes <= 1 or "RAYON_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["RAYON_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    try:
        yield
    finally:
        del os.environ["RAYON_NUM_THREADS"]


def make_shards(
    corpus_dir: str | Path,
    tokenizer_path: str | Path,
    out_dir: str | Path,
    config: ShardsConfig = ShardsConfig(),
    workers: int = 1,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    executor: Executor | None = None,
) -> dict:
    """Tokenize every corpus shard into `out_dir`; return the manifest (see the module docstring).

    With `config.source == "raw"`, corpus_dir is the download stage's folder (DATA/raw) and every file it
    lists is tokenized as read, with no filter and no dedup.
    """
    config.validate()
    corpus_dir, out_dir, tokenizer_path = Path(corpus_dir), Path(out_dir), Path(tokenizer_path).resolve()
    if config.source == "raw":
        from pipeline.download import load_raw_files

        inputs = load_raw_files(corpus_dir.parent)
    else:
        inputs = stage_documents(corpus_dir, "corpus")
    codec = TextCodec(tokenizer_path)  # fails early, naming `make tokenizer`, if it is missing
    if config.source == "raw":
        from pipeline.filter_stage import shard_name  # crawl-00000.warc.wet.gz -> crawl-00000, as filter names it

        names = [shard_name(p) for p in inputs]
    else:
        names = [Path(p).name.removesuffix(".parquet") for p in inputs]
    tasks = [ShardTask(name=n, inputs=(str(p), str(tokenizer_path))) for n, p in zip(names, inputs)]
    upstream = {"tokenizer": codec.hash, "corpus": manifest_hash(corpus_dir)}

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        splits = {s: [] for s in SPLITS}
        for shard in manifest["shards"]:
            for out in shard["outputs"]:
                split = out["path"].split("/", 1)[0]
                splits[split].append({k: out[k] for k in ("path", "tokens", "documents", "bytes", "sha256")})
        copy = stage_dir / TOKENIZER_FILE
        if not copy.exists() or sha256_file(copy) != codec.hash:
            with atomic_path(copy) as tmp:
                shutil.copyfile(tokenizer_path, tmp)
        manifest.update(shard_manifest_fields(splits, vocab_size=codec.vocab_size, eot_id=codec.eot_id,
                                              tokenizer_hash=codec.hash))
        manifest["tokenizer_file"] = TOKENIZER_FILE
        manifest["tokenizer_source"] = str(tokenizer_path)
        return manifest

    with _threads_per_worker(workers, len(tasks)):
        manifest = run_stage(STAGE, out_dir, config, tasks, tokenize_shard, workers=workers, force=force,
                             upstream=upstream, on_progress=on_progress, finalize=finalize, executor=executor)
    if manifest["totals"]["kept"] == 0:
        raise InputError(f"the corpus in {corpus_dir} produced no tokens (every document is empty); check `make corpus`")
    return manifest
