"""A tiny base model for the fine-tuning tests: a BPE tokenizer with the reserved chat tokens, token
shards of text like the fixtures', and a `tiny` GPT pretrained on them for a few steps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "finetune"
SPECIAL_TOKENS = ["<|endoftext|>", "<|reserved_0|>", "<|reserved_1|>"]


def corpus_texts() -> list[str]:
    """Text that looks like the fixtures (so the tokenizer has merges for the template's words)."""
    from train.tune.templates import PromptTemplate

    template = PromptTemplate()
    texts = []
    for ex in json.loads((FIXTURES / "alpaca.json").read_text()):
        texts.append(template.prompt(ex["instruction"], ex["input"]) + ex["output"])
    for line in (FIXTURES / "chat.jsonl").read_text().splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    texts += [line.split("\t")[1] for line in (FIXTURES / "classes.tsv").read_text().splitlines()[1:]]
    return texts


def train_tokenizer(path: Path, texts: list[str], vocab_size: int = 384,
                    special_tokens: list[str] = SPECIAL_TOKENS) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_base(data: Path, steps: int = 12) -> Path:
    """DATA/tokenizer/tokenizer.json, DATA/shards and DATA/runs/base (a tiny pretrained model); returns the run."""
    from tokenizers import Tokenizer

    from formats.token_shards import write_token_shards
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train

    texts = corpus_texts()
    tok_path = train_tokenizer(data / "tokenizer" / "tokenizer.json", texts)
    tok = Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id("<|endoftext|>")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    docs = [np.array(tok.encode("\n\n".join(texts[j] for j in order[i:i + 4])).ids + [eot])
            for i in range(0, len(order), 4)]
    write_token_shards(data / "shards", {"train": docs[16:], "val": docs[:16]}, vocab_size=tok.get_vocab_size(),
                       eot_id=eot, tokenizer_hash=hashlib.sha256(tok_path.read_bytes()).hexdigest())
    run = data / "runs" / "base"
    train(TrainConfig(
        run_dir=str(run), max_steps=steps, preset="tiny", global_batch_tokens=4 * 64, seed=0,
        data=DataConfig(shards_dir=str(data / "shards"), seq_len=64, micro_batch_size=4, prefetch_batches=0),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2),
        eval=EvalConfig(every_steps=0, max_tokens=512, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=1),
        log=LogConfig(every_steps=5, tensorboard=False, plot=False),
    ))
    return run


@pytest.fixture(scope="session")
def finetune_data(tmp_path_factory) -> Path:
    """One tiny base for every fine-tuning test module (each writes its runs under its own names)."""
    pytest.importorskip("tokenizers")
    data = tmp_path_factory.mktemp("finetune-data")
    make_base(data)
    return data
