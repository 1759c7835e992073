"""The tokenizer stage: lossless round trips, exact vocab size, determinism, held-out report, resume."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from pipeline.documents import Document, read_documents, write_documents
from pipeline.errors import ConfigError, InputError, StageConfigChanged
from formats.manifest import output_record, sha256_file
from pipeline.stage import ShardStats, ShardTask, run_stage
from formats.token_shards import split_of
from pipeline.tokenizer_train import (
    EOT_TOKEN,
    TextCodec,
    TokenizerConfig,
    build_tokenizer,
    clean_text,
    train_tokenizer,
)

VOCAB = 512
WORDS = ("the of and to in a is that was for on with as by it at from his an were are which this be or had "
         "tokenizer shard corpus crawl document river mountain history village century language music").split()
EXTRA = ["日本語のテキスト", "emoji 😀🎉 here", "naïve café – déjà vu", "tab\tand\r\nnewline", "3.14159 and 1234567"]


def copy_docs(task: ShardTask, stage_dir: Path, config: dict) -> ShardStats:
    """A stand-in corpus stage: copies its input documents unchanged."""
    docs = list(read_documents(task.inputs[0]))
    out = stage_dir / f"{task.name}.parquet"
    write_documents(out, docs)
    return ShardStats(docs_in=len(docs), kept=len(docs), outputs=[output_record(out, len(docs), stage_dir)])


def make_corpus(root: Path, shards: dict[str, list[Document]]) -> Path:
    """A finished corpus stage (Parquet shards + manifest) at root/corpus, as `make corpus` leaves it."""
    tasks = []
    for name, docs in shards.items():
        src = root / "raw" / f"{name}.parquet"
        write_documents(src, docs)
        tasks.append(ShardTask(name, (str(src),)))
    run_stage("corpus", root / "corpus", {"test": True}, tasks, copy_docs)
    return root / "corpus"


def synthetic_docs(n: int, seed: int, prefix: str) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 120))]
        text = " ".join(words).capitalize() + ". " + rng.choice(EXTRA)
        docs.append(Document(id=f"{prefix}-{i}", text=text))
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    return make_corpus(root, {"a": synthetic_docs(300, 1, "a"), "b": synthetic_docs(200, 2, "b")})


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tokenizer")
    manifest = train_tokenizer(corpus, out, TokenizerConfig(vocab_size=VOCAB, heldout_fraction=0.1))
    return out, manifest


@pytest.fixture(scope="module")
def codec(trained) -> TextCodec:
    return TextCodec(trained[0] / "tokenizer.json")


def test_tokenizer_json_loads_with_exact_vocab_size_and_special_tokens(trained):
    out, m = trained
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == VOCAB == m["vocab_size"]
    assert tok.token_to_id(EOT_TOKEN) == m["eot_id"] == 0
    for i in range(15):
        assert tok.token_to_id(f"<|reserved_{i}|>") is not None
    assert m["tokenizer_sha256"] == sha256_file(out / "tokenizer.json")


def test_small_corpus_vocab_is_padded_with_reserved_tokens(corpus, tmp_path):
    # 500 short documents cannot supply 4,096 - 272 merges: reserved tokens fill the vocabulary.
    m = train_tokenizer(corpus, tmp_path, TokenizerConfig(vocab_size=4096, min_frequency=2))
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == 4096
    assert m["padding_tokens"] > 0
    assert tok.token_to_id(f"<|reserved_{15 + m['padding_tokens'] - 1}|>") == 4095


def test_loads_with_transformers_fast_tokenizer(trained, codec):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(trained[0] / "tokenizer.json"))
    text = "Hello world, 日本語 😀"
    assert fast.encode(text) == codec.encode(text)
    assert fast.decode(fast.encode(text)) == text


def test_training_is_deterministic(corpus, trained, tmp_path):
    m = train_tokenizer(corpus, tmp_path, TokenizerConfig(vocab_size=VOCAB, heldout_fraction=0.1))
    assert sha256_file(tmp_path / "tokenizer.json") == trained[1]["tokenizer_sha256"] == m["tokenizer_sha256"]
    assert m["training"]["text_sha256"] == trained[1]["training"]["text_sha256"]


def test_held_out_documents_are_not_trained_on_and_give_the_compression_report(corpus, trained, codec):
    _, m = trained
    docs = [d for p in sorted(corpus.glob("*.parquet")) for d in read_documents(p)]
    train = [d.text for d in docs if split_of(d.id, 0.1) == "train"]
    held = [d.text for d in docs if split_of(d.id, 0.1) == "val"]
    assert 0 < len(held) < len(docs)
    h = hashlib.sha256()
    for t in train:
        h.update(t.encode() + b"\0")
    assert m["training"]["text_sha256"] == h.hexdigest()  # exactly the training documents, in order
    assert m["training"]["documents"] == len(train)
    n_bytes = sum(len(t.encode()) for t in held)
    n_tokens = sum(len(codec.encode(t)) for t in held)
    assert m["heldout"]["documents"] == len(held)
    assert m["heldout"]["bytes_per_token"] == pytest.approx(n_bytes / n_tokens, rel=1e-3)
    assert m["heldout"]["tokens_per_word"] == pytest.approx(n_tokens / sum(len(t.split()) for t in held), rel=1e-3)
    assert m["training"]["elapsed_s"] > 0


def test_sample_cap_limits_training_bytes(corpus, tmp_path):
    m = train_tokenizer(corpus, tmp_path, TokenizerConfig(vocab_size=VOCAB, sample_bytes=50_000))
    longest = max(len(d.text.encode()) for p in corpus.glob("*.parquet") for d in read_documents(p))
    assert 0 < m["training"]["bytes"] <= 50_000 + longest
    assert m["training"]["sampled_out_documents"] > 0


@pytest.mark.parametrize("bad", [TokenizerConfig(vocab_size=1000), TokenizerConfig(vocab_size=256)])
def test_vocab_size_must_be_a_multiple_of_64_with_room_for_merges(corpus, tmp_path, bad):
    with pytest.raises(ConfigError, match="vocab_size.*multiple of 64"):
        train_tokenizer(corpus, tmp_path, bad)


def test_unknown_pattern_is_a_config_error(corpus, tmp_path):
    with pytest.raises(ConfigError, match="pattern"):
        train_tokenizer(corpus, tmp_path, TokenizerConfig(vocab_size=VOCAB, pattern="gpt5"))


def test_missing_corpus_names_make_corpus(tmp_path):
    with pytest.raises(InputError, match="make corpus"):
        train_tokenizer(tmp_path / "nowhere", tmp_path / "tok", TokenizerConfig(vocab_size=VOCAB))


def test_rerun_skips_changed_config_refuses_force_retrains(corpus, tmp_path):
    cfg = TokenizerConfig(vocab_size=VOCAB)
    train_tokenizer(corpus, tmp_path, cfg)
    mtime = (tmp_path / "tokenizer.json").stat().st_mtime_ns
    train_tokenizer(corpus, tmp_path, cfg)
    assert (tmp_path / "tokenizer.json").stat().st_mtime_ns == mtime  # not retrained
    with pytest.raises(StageConfigChanged, match="--force"):
        train_tokenizer(corpus, tmp_path, TokenizerConfig(vocab_size=VOCAB + 64))
    m = train_tokenizer(corpus, tmp_path, TokenizerConfig(vocab_size=VOCAB + 64), force=True)
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab_size() == VOCAB + 64
    assert json.loads((tmp_path / "manifest.json").read_text())["tokenizer_sha256"] == m["tokenizer_sha256"]


def test_corrupted_tokenizer_json_is_retrained(corpus, tmp_path):
    cfg = TokenizerConfig(vocab_size=VOCAB)
    m = train_tokenizer(corpus, tmp_path, cfg)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert train_tokenizer(corpus, tmp_path, cfg)["tokenizer_sha256"] == m["tokenizer_sha256"]


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "", "Hello, world!", "  leading and trailing spaces  ", "日本語と中文和한국어", "emoji 😀👩‍👩‍👧‍👦🏳️‍🌈",
    "control \x00\x01\x07\x1b[31m\x7f chars", "\r\n\r\n\t\v\f", "combining e\u0301 and zero\u200bwidth",
    "private use \ue000 and astral \U0010fffd", "<|endoftext|> inside a document", "BOM \ufeff here",
])
def test_known_hard_texts_round_trip(codec, text):
    assert codec.decode(codec.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_unicode_text_round_trips(codec, text):
    assert codec.decode(codec.encode(text)) == text


# Hypothesis's text() never yields surrogates, so they are mixed in by code point.
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.characters(), SURROGATE)).map("".join))
def test_text_with_surrogates_round_trips_to_its_cleaned_form(codec, text):
    cleaned = clean_text(text)
    assert any(0xD800 <= ord(c) <= 0xDFFF for c in text) or cleaned == text
    cleaned.encode("utf-8")  # always valid UTF-8
    assert codec.decode(codec.encode(text)) == cleaned
    assert len(cleaned) <= len(text)


def test_surrogates_are_handled_explicitly():
    assert clean_text("a\ud800b") == "a\ufffdb"  # a lone surrogate becomes U+FFFD
    assert clean_text("\udc00") == "\ufffd"
    assert clean_text("\ud83d\ude00") == "😀"  # a surrogate pair becomes the character it encodes
    assert clean_text("plain") == "plain"


def test_special_token_text_in_a_document_is_not_the_special_id(codec):
    ids = codec.encode("see <|endoftext|> here")
    assert codec.eot_id not in ids
    assert codec.decode(ids) == "see <|endoftext|> here"


def test_llama3_pattern_splits_digits_in_threes_and_gpt2_does_not():
    llama = build_tokenizer("llama3").pre_tokenizer.pre_tokenize_str("x 1234567")
    gpt2 = build_tokenizer("gpt2").pre_tokenizer.pre_tokenize_str("x 1234567")
    assert [p for p, _ in llama] == ["x", "Ġ", "123", "456", "7"]
    assert [p for p, _ in gpt2] == ["x", "Ġ1234567"]
