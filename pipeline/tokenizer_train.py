"""Train the byte-level BPE tokenizer on the curated corpus (`make tokenizer`).

What it builds: a Hugging Face `tokenizers` BPE model with
- no normalizer (text is never changed, so decoding gives back exactly what was encoded);
- a pre-tokenizer that first splits with the GPT-2 or Llama-3 regex (words, numbers, punctuation
  runs, whitespace), then maps bytes to the 256 printable ByteLevel symbols; every byte value is in
  the initial alphabet, so *any* text is encodable and nothing becomes an unknown token;
- a ByteLevel decoder;
- special tokens: `<|endoftext|>` (id 0, appended to every document by `make shards`) and reserved
  `<|reserved_N|>` tokens for later chat formats, padded so the vocabulary is *exactly* `vocab_size`
  (a multiple of 64: the embedding matrix tiles evenly on a GPU) even when the corpus is too small
  for that many merges.

Training streams Parquet row groups from the corpus (never the whole corpus in memory), skips the
documents held out for validation (the same id-hash rule as the shards' validation split, so the
compression figures are measured on text the tokenizer never saw), and can be capped to a byte
budget sampled evenly across the corpus. For a fixed corpus and config the result is byte-identical.

Text that Python can hold but UTF-8 cannot (lone surrogates, e.g. from `"\\ud800"` or a broken JSON
escape) is handled explicitly by `clean_text`: a surrogate *pair* becomes the character it encodes,
a lone surrogate becomes U+FFFD. Document text read from Parquet/Arrow is valid UTF-8 by
construction, so the shards stage never needs this.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow.compute as pc
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.documents import iter_document_batches, text_bytes
from pipeline.errors import ConfigError, InputError
from formats.manifest import atomic_path, manifest_hash, output_record, sha256_file
from pipeline.stage import Executor, ShardStats, ShardTask, run_stage, stage_documents
from formats.token_shards import hash_unit, split_of

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
EOT_TOKEN = "<|endoftext|>"

#: Pre-tokenization regexes. GPT-2: contractions, letter runs, digit runs, punctuation runs, spaces.
#: Llama-3 (tiktoken cl100k style): case-insensitive contractions, digits in groups of at most three
#: (numbers compress consistently), newlines kept apart from other whitespace.
SPLIT_PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "llama3": (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ),
}

#: Rows read per Parquet batch while streaming the corpus.
READ_BATCH_DOCS = 1024


@dataclass(frozen=True)
class TokenizerConfig:
    """How the tokenizer is trained. Changing any field retrains it (with --force)."""

    #: Total vocabulary including special tokens; a multiple of 64. 16,384 suits corpora of tens to
    #: hundreds of MB (about 4 bytes per token on English web text); use 32k-64k for GBs.
    vocab_size: int = 16384
    #: A pair must occur at least this often to be merged (1 lets noise in; 2 is the usual floor).
    min_frequency: int = 2
    #: Pre-tokenization regex: "llama3" or "gpt2".
    pattern: str = "llama3"
    #: Reserved special tokens `<|reserved_0|>`... kept for chat formats (in addition to <|endoftext|>).
    reserved_tokens: int = 15
    #: Train on at most this many bytes of text, sampled evenly by document id; 0 = the whole corpus.
    sample_bytes: int = 0
    #: Share of documents held out (by id hash, as the shards' validation split) for the compression report.
    heldout_fraction: float = 0.01
    #: At most this many bytes of held-out text are encoded for the compression report.
    max_heldout_bytes: int = 8 << 20

    def validate(self) -> None:
        if self.pattern not in SPLIT_PATTERNS:
            raise ConfigError("pattern", f"{self.pattern!r}; choose one of {sorted(SPLIT_PATTERNS)}")
        if self.reserved_tokens < 0:
            raise ConfigError("reserved_tokens", f"{self.reserved_tokens} is negative")
        floor = 256 + len(self.special_tokens()) + 64
        if self.vocab_size % 64 or self.vocab_size < floor:
            raise ConfigError(
                "vocab_size",
                f"{self.vocab_size}; use a multiple of 64 (so the embedding matrix tiles evenly on a GPU) "
                f"of at least {floor} (256 byte tokens + {len(self.special_tokens())} special tokens + merges)",
            )
        if self.vocab_size > 1 << 32:
            raise ConfigError("vocab_size", f"{self.vocab_size} does not fit in uint32 token shards")
        if self.min_frequency < 1:
            raise ConfigError("min_frequency", f"{self.min_frequency}; must be at least 1")
        if self.sample_bytes < 0:
            raise ConfigError("sample_bytes", f"{self.sample_bytes} is negative; 0 means the whole corpus")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError("heldout_fraction", f"{self.heldout_fraction}; must be in [0, 1)")

    def special_tokens(self) -> list[str]:
        return [EOT_TOKEN] + [f"<|reserved_{i}|>" for i in range(self.reserved_tokens)]


# --- building, loading, encoding ------------------------------------------------------------------


def build_tokenizer(pattern: str = "llama3") -> Tokenizer:
    """An untrained byte-level BPE tokenizer with the chosen split regex and the ByteLevel decoder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERNS[pattern]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def make_trainer(config: TokenizerConfig) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=config.special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


def pad_vocab(tok: Tokenizer, vocab_size: int, first_reserved: int) -> int:
    """Add reserved special tokens until the vocabulary has exactly `vocab_size` ids; return how many.

    A small corpus runs out of pairs to merge before reaching the requested size; padding keeps the
    promised (GPU-friendly) size instead of an odd one.
    """
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|reserved_{first_reserved + i}|>" for i in range(missing)])
    return max(missing, 0)


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Text as UTF-8 can carry it: surrogate pairs joined, lone surrogates replaced by U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class TextCodec:
    """A trained tokenizer as the pipeline uses it: documents in, ids out, and back, losslessly.

    Special-token strings inside a document (a web page quoting "<|endoftext|>") are encoded as plain
    text, never as the special id: only `make shards` puts end-of-text tokens into the data.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"tokenizer {self.path} does not exist; run `make tokenizer` first")
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - the Rust side raises a plain Exception
            raise InputError(f"tokenizer {self.path} cannot be loaded ({exc}); rerun `make tokenizer FORCE=1`") from exc
        self.tokenizer.encode_special_tokens = True
        self.hash = sha256_file(self.path)
        eot = self.tokenizer.token_to_id(EOT_TOKEN)
        if eot is None:
            raise InputError(f"tokenizer {self.path} has no {EOT_TOKEN} token; it was not made by `make tokenizer`")
        self.eot_id: int = eot
        self.vocab_size: int = self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(clean_text(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts on the library's thread pool. Texts must be valid UTF-8 (e.g. from Arrow)."""
        return [e.ids for e in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        """A readable form of one token (its decoded text, or its byte-level symbol if not valid UTF-8)."""
        text = self.tokenizer.decode([int(token_id)], skip_special_tokens=False)
        if "\ufffd" in text:
            return self.tokenizer.id_to_token(int(token_id)) or f"<{token_id}>"
        return text


# --- streaming the corpus -------------------------------------------------------------------------


def iter_text_batches(
    paths: Sequence[Path], batch_docs: int = READ_BATCH_DOCS
) -> Iterator[tuple[list[str], list[str], list[int]]]:
    """(ids, texts, utf-8 byte lengths) per Parquet batch, shard after shard: memory holds one batch."""
    for path in paths:
        for batch in iter_document_batches(path, ["id", "text"], batch_docs):
            lengths = pc.binary_length(batch.column("text")).to_pylist()
            yield batch.column("id").to_pylist(), batch.column("text").to_pylist(), lengths


@dataclass
class _Feed:
    """The training stream and what it saw: counts, the hash of the exact text fed, the held-out text."""

    docs: int = 0
    bytes: int = 0
    heldout: list = field(default_factory=list)
    heldout_bytes: int = 0
    heldout_docs: int = 0
    sampled_out: int = 0
    sha: "hashlib._Hash" = field(default_factory=hashlib.sha256)


def _training_stream(paths: Sequence[Path], config: TokenizerConfig, feed: _Feed) -> Iterator[list[str]]:
    rate = 1.0
    if config.sample_bytes:
        total = text_bytes(paths)
        rate = min(1.0, config.sample_bytes / max(total, 1))
        log.info("tokenizer: sampling about %.1f%% of %.1f MB of text", 100 * rate, total / 1e6)
    for ids, texts, lengths in iter_text_batches(paths):
        out = []
        for doc_id, text, n in zip(ids, texts, lengths):
            if split_of(doc_id, config.heldout_fraction) == "val":
                feed.heldout_docs += 1
                if feed.heldout_bytes < config.max_heldout_bytes:
                    feed.heldout.append(text)
                    feed.heldout_bytes += n
                continue
            if rate < 1.0 and hash_unit(doc_id, "tokenizer-sample:") >= rate:
                feed.sampled_out += 1
                continue
            if config.sample_bytes and feed.bytes >= config.sample_bytes:
                feed.sampled_out += 1
                continue
            out.append(text)
            feed.docs += 1
            feed.bytes += n
            feed.sha.update(text.encode("utf-8"))
            feed.sha.update(b"\0")
        if out:
            yield out


def measure_compression(codec_or_tok: TextCodec | Tokenizer, texts: Sequence[str]) -> dict:
    """Bytes per token and tokens per (whitespace-separated) word over `texts`."""
    tok = codec_or_tok.tokenizer if isinstance(codec_or_tok, TextCodec) else codec_or_tok
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_words = sum(len(t.split()) for t in texts)
    n_tokens = sum(len(e.ids) for e in tok.encode_batch_fast(list(texts), add_special_tokens=False)) if texts else 0
    return {
        "documents": len(texts),
        "bytes": n_bytes,
        "words": n_words,
        "tokens": n_tokens,
        "bytes_per_token": round(n_bytes / n_tokens, 4) if n_tokens else None,
        "tokens_per_word": round(n_tokens / n_words, 4) if n_words else None,
    }


# --- the stage ------------------------------------------------------------------------------------


STAGE = "tokenizer"
#: Facts of the trained tokenizer that the manifest carries at its top level.
_MANIFEST_FACTS = ("tokenizer_file", "tokenizer_sha256", "vocab_size", "eot_token", "eot_id", "special_tokens",
                   "padding_tokens", "training", "heldout")


def train_tokenizer(
    corpus_dir: str | Path,
    out_dir: str | Path,
    config: TokenizerConfig = TokenizerConfig(),
    force: bool = False,
    executor: Executor | None = None,
) -> dict:
    """Train on the corpus stage in `corpus_dir`; write `out_dir/tokenizer.json` and its manifest.

    A stage of one task under `pipeline.stage.run_stage`: skips when the receipt matches this config
    and corpus (and tokenizer.json is intact); refuses a changed config unless `force`; retrains when
    the corpus changed. Returns the manifest.
    """
    config.validate()
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    paths = stage_documents(corpus_dir, "corpus")
    task = ShardTask(STAGE, tuple(str(p) for p in paths))

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        facts = manifest["shards"][0]["extra"]
        manifest.update({k: facts[k] for k in _MANIFEST_FACTS})
        return manifest

    return run_stage(STAGE, out_dir, config, [task], train_tokenizer_shard, force=force,
                     upstream={"corpus": manifest_hash(corpus_dir)}, finalize=finalize, executor=executor,
                     refusal_hint="The token shards are remade after a retrained tokenizer.")


def train_tokenizer_shard(task: ShardTask, stage_dir: Path, config: TokenizerConfig) -> ShardStats:
    """Stage function: the corpus shards (`task.inputs`) -> stage_dir/tokenizer.json.

    Accounting: documents in = documents trained on (kept) + held out for the compression report
    (dropped `heldout`) + left out by the byte budget (dropped `sampled_out`).
    """
    paths = [Path(p) for p in task.inputs]
    tok_path = stage_dir / TOKENIZER_FILE
    start = time.monotonic()
    tok = build_tokenizer(config.pattern)
    feed = _Feed()
    tok.train_from_iterator(_training_stream(paths, config, feed), trainer=make_trainer(config))
    train_s = time.monotonic() - start
    if feed.docs == 0:
        raise InputError(f"the corpus ({len(paths)} shards) has no training text (all documents held out or "
                         "empty); check `make corpus` output or lower heldout_fraction")
    padded = pad_vocab(tok, config.vocab_size, config.reserved_tokens)
    with atomic_path(tok_path) as tmp:
        tok.save(str(tmp))
    codec = TextCodec(tok_path)
    heldout = measure_compression(codec, feed.heldout)
    stats = ShardStats(docs_in=feed.docs + feed.heldout_docs + feed.sampled_out, kept=feed.docs,
                       outputs=[output_record(tok_path, codec.vocab_size, stage_dir)])
    for reason, n in (("heldout", feed.heldout_docs), ("sampled_out", feed.sampled_out)):
        if n:
            stats.dropped[reason] = n
    stats.extra = {
        "tokenizer_file": TOKENIZER_FILE,
        "tokenizer_sha256": codec.hash,
        "vocab_size": codec.vocab_size,
        "eot_token": EOT_TOKEN,
        "eot_id": codec.eot_id,
        "special_tokens": config.special_tokens(),
        "padding_tokens": padded,
        "training": {
            "documents": feed.docs,
            "bytes": feed.bytes,
            "text_sha256": feed.sha.hexdigest(),
            "sampled_out_documents": feed.sampled_out,
            "elapsed_s": round(train_s, 3),
            "mb_per_s": round(feed.bytes / 1e6 / train_s, 3) if train_s > 0 else None,
        },
        "heldout": heldout,
    }
    log.info(
        "tokenizer: %d tokens trained on %.1f MB (%d docs) in %.1fs; held out: %s bytes/token, %s tokens/word",
        codec.vocab_size, feed.bytes / 1e6, feed.docs, train_s, heldout["bytes_per_token"], heldout["tokens_per_word"],
    )
    return stats
