"""Tiny models and a byte-level tokenizer for the alignment tests: made in milliseconds, no training.

A "policy checkpoint" here is a freshly initialised tiny GPT saved as the fine-tuning stage saves one
(kind sft, plain GPT state dict, data info, template); its tokenizer maps each byte to one token id
(0-255) and end-of-text to 256, so any text round-trips and the vocabulary is tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.gpt import GPT, preset_config
from train.checkpoint import save_checkpoint
from train.evaluate import tokenizer_hash
from train.tune.templates import PromptTemplate

EOT_ID = 256
VOCAB = 257


def write_byte_tokenizer(path: Path) -> Path:
    """A tokenizer.json of 256 byte tokens plus <|endoftext|> = 256 (a BPE without merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<|endoftext|>"] = EOT_ID
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def write_policy_checkpoint(path: Path, tokenizer: Path | None, kind: str = "sft", seed: int = 0,
                            max_seq_len: int = 256, **overrides) -> Path:
    torch.manual_seed(seed)
    config = preset_config("tiny", 320, max_seq_len=max_seq_len, **overrides)  # 257 padded to 64
    model = GPT(config)
    save_checkpoint(path, {
        "step": 0, "model": model.state_dict(), "model_config": config.to_dict(), "kind": kind,
        "data": {"vocab_size": VOCAB, "eot_id": EOT_ID,
                 "tokenizer_hash": tokenizer_hash(tokenizer) if tokenizer else "synthetic"},
        "template": PromptTemplate().to_dict(),
    })
    return path


def write_pairs(path: Path, n: int = 40, fmt: str = "book") -> Path:
    """n pairs whose chosen answers are polite and rejected answers rude: a pattern a model learns fast."""
    records = []
    for i in range(n):
        q = f"What is {i} plus {i % 7}?"
        good, bad = f"Thank you! It is {i + i % 7}.", f"Ugh. {i + i % 7}, obviously."
        if fmt == "book":
            records.append({"instruction": q, "input": "", "chosen": good, "rejected": bad})
        elif fmt == "prompt":
            records.append({"prompt": q, "chosen": good, "rejected": bad})
        else:
            user = [{"role": "user", "content": q}]
            records.append({"chosen": user + [{"role": "assistant", "content": good}],
                            "rejected": user + [{"role": "assistant", "content": bad}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def make_config(run_dir: Path, steps: int, lr: float = 1e-3, micro: int = 4, eval_every: int = 0,
                sample_every: int = 0, **changes):
    """A short fine-tuning run of the tiny model: constant learning rate, no plots or TensorBoard."""
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig

    base = TrainConfig(
        run_dir=str(run_dir), max_steps=steps, preset="tiny", handle_signals=False,
        data=DataConfig(micro_batch_size=micro, seed=1, prefetch_batches=0),
        optim=OptimConfig(lr=lr, min_lr=lr, warmup_steps=0),
        eval=EvalConfig(every_steps=eval_every, sample_every_steps=sample_every),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=5),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False))
    return base.replace(**changes)


def val_records(run_dir: Path) -> list[dict]:
    from train.metrics import read_metrics

    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["kind"] == "val"]


def write_reward_checkpoint(path: Path, tokenizer: Path | None, seed: int = 1, max_seq_len: int = 256) -> Path:
    """An untrained reward model saved as `crawlgpt reward-train` saves one."""
    from train.align.reward import RewardModel, split_reward_state

    torch.manual_seed(seed)
    config = preset_config("tiny", 320, max_seq_len=max_seq_len)
    model = RewardModel(config)
    save_checkpoint(path, {
        "step": 0, **split_reward_state(model.state_dict()), "model_config": config.to_dict(), "kind": "reward",
        "data": {"vocab_size": VOCAB, "eot_id": EOT_ID,
                 "tokenizer_hash": tokenizer_hash(tokenizer) if tokenizer else "synthetic"},
        "template": PromptTemplate().to_dict(),
    })
    return path
