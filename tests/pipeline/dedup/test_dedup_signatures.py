"""Normalisation, word and shingle hashing, MinHash signatures: known answers and reference-vs-fast."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup.config import SignatureConfig
from pipeline.dedup.normalize import (
    exact_hashes,
    id_keys,
    normalize_text,
    normalize_texts,
    word_hash_reference,
    word_hashes,
)
from pipeline.dedup.signatures import (
    EMPTY_HASH,
    MINHASH_SCHEME,
    minhash_signatures,
    shingle_hashes,
    signature_table,
)


def batch(*texts: str) -> pa.Array:
    return pa.array(list(texts), pa.large_string())


def test_normalisation_folds_case_punctuation_digits_and_whitespace():
    assert normalize_text("Hello,  WORLD!!\n1,234\tfoo_bar -- 1916") == "hello world 0 0 foo bar 0"


def test_normalisation_keeps_letters_of_every_script():
    assert normalize_text("Ça va? «Straße» 日本語テキスト, naïve") == "ça va straße 日本語テキスト naïve"


def test_normalisation_of_null_and_punctuation_only_is_empty():
    assert normalize_texts(pa.array([None, "...!?", ""], pa.large_string())).to_pylist() == ["", "", ""]


texts_strategy = st.lists(
    st.text(alphabet=st.sampled_from(list("ab cdé,.1 \n日本Ωx-")), max_size=40), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(texts_strategy)
def test_vectorised_word_hashes_match_the_reference_per_word(texts):
    normalized = normalize_texts(batch(*texts))
    got = word_hashes(normalized)
    words = [t.split() for t in normalized.to_pylist()]
    assert got.counts.tolist() == [len(w) for w in words]
    expected = [word_hash_reference(w) for ws in words for w in ws]
    assert got.hashes.tolist() == expected


@settings(max_examples=30, deadline=None)
@given(texts_strategy, st.integers(1, 5))
def test_a_documents_shingles_do_not_depend_on_its_batch(texts, ngram):
    normalized = normalize_texts(batch(*texts))
    together, offsets = shingle_hashes(word_hashes(normalized), ngram)
    for i in range(len(texts)):
        alone, _ = shingle_hashes(word_hashes(normalized.slice(i, 1)), ngram)
        assert together[offsets[i] : offsets[i + 1]].tolist() == alone.tolist()


def test_shingle_counts_are_word_ngrams_with_one_for_short_documents():
    words = word_hashes(normalize_texts(batch("a b c d e", "a b", "", "x y z")))
    _, offsets = shingle_hashes(words, 3)
    assert np.diff(offsets).tolist() == [3, 1, 0, 1]


def test_equal_ngrams_hash_equal_and_windows_never_span_documents():
    words = word_hashes(normalize_texts(batch("one two three four", "three four five")))
    shingles, offsets = shingle_hashes(words, 2)
    first, second = shingles[offsets[0] : offsets[1]], shingles[offsets[1] : offsets[2]]
    assert first[2] == second[0]  # "three four" in both
    assert len(set(first.tolist()) | set(second.tolist())) == 4  # 3 + 2 bigrams, one shared


def test_minhash_signatures_equal_datasketch_fed_one_value_at_a_time():
    rng = np.random.default_rng(0)
    shingles = rng.integers(0, 2**32, size=500, dtype=np.uint64).astype(np.uint32)
    offsets = np.array([0, 200, 200, 500])
    got = minhash_signatures(shingles, offsets, num_perm=64, seed=7)
    for doc, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        m = MinHash(num_perm=64, seed=7, hashfunc=int, scheme=MINHASH_SCHEME)
        for value in shingles[lo:hi].tolist():
            m.update(value)
        assert got[doc].tolist() == m.hashvalues.tolist()
    assert (got[1] == EMPTY_HASH).all()  # no shingles: the untouched datasketch state


def test_estimated_jaccard_is_close_to_the_true_jaccard():
    rng = np.random.default_rng(1)
    common = rng.integers(0, 2**32, 600, dtype=np.uint64)
    a = np.concatenate([common, rng.integers(0, 2**32, 200, dtype=np.uint64)]).astype(np.uint32)
    b = np.concatenate([common, rng.integers(0, 2**32, 200, dtype=np.uint64)]).astype(np.uint32)
    true = 600 / 1000
    sig = minhash_signatures(np.concatenate([a, b]), np.array([0, a.size, a.size + b.size]), 512, 1)
    estimate = (sig[0] == sig[1]).mean()
    assert abs(estimate - true) < 4 * np.sqrt(true * (1 - true) / 512)


def test_exact_hash_ignores_case_punctuation_and_digits_only():
    digests = exact_hashes(
        normalize_texts(batch("The 1916 election, in Georgia.", "the 1924 ELECTION in georgia", "the election"))
    )
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_signature_table_is_deterministic_and_seed_dependent():
    texts = batch("a quick brown fox jumps over the lazy dog " * 5, "something else entirely here")
    cfg = SignatureConfig(ngram=3, num_perm=32, seed=1)
    t1 = signature_table(["a", "b"], texts, cfg)
    t2 = signature_table(["a", "b"], texts, cfg)
    t3 = signature_table(["a", "b"], texts, SignatureConfig(ngram=3, num_perm=32, seed=2))
    assert t1.equals(t2)
    assert t1["signature"].to_pylist() != t3["signature"].to_pylist()
    assert t1["key"].to_pylist() == id_keys(["a", "b"]).tolist()
    assert t1["words"].to_pylist() == [45, 4]


@pytest.mark.parametrize("ngram", [1, 3, 5])
def test_chunked_signature_table_equals_one_document_at_a_time(ngram, monkeypatch):
    import pipeline.dedup.signatures as sigmod

    texts = [f"document number {i} " + "word " * i + "tail end" for i in range(20)]
    cfg = SignatureConfig(ngram=ngram, num_perm=16, seed=3)
    monkeypatch.setattr(sigmod, "CHUNK_BYTES", 64)  # many small chunks
    chunked = signature_table([str(i) for i in range(20)], batch(*texts), cfg)
    singles = [signature_table([str(i)], batch(t), cfg) for i, t in enumerate(texts)]
    assert chunked["signature"].to_pylist() == [s["signature"][0].as_py() for s in singles]
