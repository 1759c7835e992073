"""Tiny real models for tests of evaluation and export: a byte-level BPE tokenizer trained in a second on
a few sentences, and crawlgpt checkpoints of small random GPTs that use it (grouped-query attention,
tied or untied embeddings). The weights are drawn with a large init_std so that logits are far apart
and greedy choices are not decided by float rounding."""

from __future__ import annotations

from pathlib import Path

import torch

from model.gpt import GPT, GPTConfig
from pipeline.tokenizer_train import TokenizerConfig, build_tokenizer, make_trainer, pad_vocab
from train.checkpoint import checkpoint_path, save_checkpoint
from train.evaluate import tokenizer_hash

TOKENIZER_VOCAB = 384
SENTENCES = [
    "The cat sat on the mat and looked at the garden.",
    "A river runs through the old village near the mountain.",
    "Pour the water into the glass before you drink it.",
    "She opened the door, took her coat, and walked to the station.",
    "To cut bread, use a sharp knife and a wooden board.",
    "He said that the history of the city was long and strange.",
    "Music played in the hall while the children danced.",
    "Keep the milk in the fridge so that it stays cold.",
]


def train_tiny_tokenizer(path: Path) -> Path:
    config = TokenizerConfig(vocab_size=TOKENIZER_VOCAB, min_frequency=1, reserved_tokens=15)
    tok = build_tokenizer(config.pattern)
    tok.train_from_iterator(SENTENCES * 20, trainer=make_trainer(config))
    pad_vocab(tok, config.vocab_size, config.reserved_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def tiny_config(tie: bool = True, **overrides) -> GPTConfig:
    values = dict(vocab_size=TOKENIZER_VOCAB, max_seq_len=96, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                  tie_embeddings=tie, init_std=0.2, rope_theta=500.0)
    return GPTConfig(**{**values, **overrides})


def write_tiny_checkpoint(run_dir: Path, tokenizer_path: Path, config: GPTConfig, seed: int = 0,
                          step: int = 1) -> Path:
    """A checkpoint as `pretrain` writes it (model, configs, data facts), for a random model."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():  # non-trivial norm gains, so a wrong norm mapping would show
        for block in model.blocks:
            block.attn_norm.weight.uniform_(0.5, 1.5)
            block.ffn_norm.weight.uniform_(0.5, 1.5)
        model.norm.weight.uniform_(0.5, 1.5)
    path = checkpoint_path(run_dir, step)
    save_checkpoint(path, {
        "step": step, "model": model.state_dict(), "model_config": config.to_dict(),
        "data": {"vocab_size": TOKENIZER_VOCAB, "eot_id": 0, "tokenizer_hash": tokenizer_hash(tokenizer_path),
                 "shards_dir": str(tokenizer_path.parent)},
    })
    return path
