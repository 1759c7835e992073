"""Synthetic token shards for tests, benchmarks and smoke runs: learnable, tiny, made in milliseconds.

Documents are walks of a sparse random Markov chain (each token has a handful of likely successors),
so a model can learn them and its loss falls quickly, unlike uniform noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def markov_documents(num_docs: int, vocab_size: int, eot_id: int, seed: int, min_len: int = 16,
                     max_len: int = 256, branching: int = 4) -> list[np.ndarray]:
    """num_docs token arrays (each ending with eot_id) drawn from one fixed random chain over
    the ids 0 .. vocab_size - 1 except eot_id."""
    rng = np.random.default_rng(seed)
    chain_rng = np.random.default_rng(12345)  # the same chain for every split and seed
    ids = np.array([i for i in range(vocab_size) if i != eot_id])
    successors = chain_rng.choice(ids, size=(vocab_size, branching))  # (vocab, branching)
    docs = []
    for _ in range(num_docs):
        length = int(rng.integers(min_len, max_len))
        doc = np.empty(length + 1, dtype=np.int64)
        token = int(rng.choice(ids))
        for i in range(length):
            doc[i] = token
            token = int(successors[token, rng.integers(branching)])
        doc[length] = eot_id
        docs.append(doc)
    return docs


def write_synthetic_shards(out_dir: str | Path, vocab_size: int = 256, train_docs: int = 400, val_docs: int = 40,
                           seed: int = 0, tokenizer_hash: str = "synthetic", max_len: int = 256) -> Path:
    """Write train and val splits of Markov documents as token shards under out_dir; returns out_dir."""
    from formats.token_shards import write_token_shards

    eot_id = vocab_size - 1
    write_token_shards(out_dir, {
        "train": markov_documents(train_docs, vocab_size, eot_id, seed, max_len=max_len),
        "val": markov_documents(val_docs, vocab_size, eot_id, seed + 1, max_len=max_len),
    }, vocab_size=vocab_size, eot_id=eot_id, tokenizer_hash=tokenizer_hash)
    return Path(out_dir)


def markov_corpus(num_tokens: int, vocab_size: int, eot_id: int, seed: int, min_len: int = 64,
                  max_len: int = 2048, branching: int = 4) -> list[np.ndarray]:
    """About num_tokens tokens of Markov documents like `markov_documents`, drawn for all documents at
    once (numpy over the documents, a loop over positions only): millions of tokens per second, so
    a GPU check can make a corpus of realistic size at run time instead of carrying it."""
    rng = np.random.default_rng(seed)
    chain_rng = np.random.default_rng(12345)
    ids = np.array([i for i in range(vocab_size) if i != eot_id])
    successors = chain_rng.choice(ids, size=(vocab_size, branching))  # (vocab, branching)
    lengths = []
    total = 0
    while total < num_tokens:
        n = int(rng.integers(min_len, max_len))
        lengths.append(n)
        total += n + 1
    lengths_arr = np.array(lengths)
    walks = np.empty((len(lengths), int(lengths_arr.max())), dtype=np.int64)  # (docs, longest)
    walks[:, 0] = rng.choice(ids, size=len(lengths))
    for i in range(1, walks.shape[1]):
        walks[:, i] = successors[walks[:, i - 1], rng.integers(branching, size=len(lengths))]
    return [np.append(walk[:n], eot_id) for walk, n in zip(walks, lengths)]
