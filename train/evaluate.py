"""Validation loss and perplexity, text perplexity, and samples: used by the training loop and by the
`evaluate` and `sample` commands.

The `tokenizers` library is imported only inside `load_tokenizer`, when text has to be encoded or
decoded; the rest needs only torch and numpy.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from model.gpt import GPT
from formats.manifest import sha256_file
from train.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from train.data import eval_windows, open_split
from train.distributed import DistContext, all_reduce_sum
from train.errors import CheckpointKindError, SeqLenError, TrainConfigError, TrainError, VocabMismatchError
from train.metrics import perplexity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    """Mean cross-entropy in nats per token."""
    perplexity: float
    """exp(loss)."""
    tokens: int
    """Tokens scored (predicted targets), all ranks together."""


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; plain float32 otherwise."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  bf16: bool = False, ctx: DistContext | None = None) -> EvalResult:
    """Mean loss over the batches, summed over tokens and across ranks (every rank must call it)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of token losses, tokens)
    for inputs, targets in batches:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, bf16):
            _, loss = model(inputs, targets)
        totals[0] += loss.double() * targets.numel()
        totals[1] += targets.numel()
    if ctx is not None:
        all_reduce_sum(totals, ctx)
    model.train(was_training)
    tokens = int(totals[1].item())
    loss = float(totals[0].item() / max(tokens, 1))
    return EvalResult(loss=loss, perplexity=perplexity(loss), tokens=tokens)


# ------------------------------------------------------------------------------------------------
# Tokenizer (optional dependency)


def tokenizer_hash(path: str | Path) -> str:
    """sha256 of tokenizer.json: the hash token shards record."""
    return sha256_file(path)


def load_tokenizer(path: str | Path):
    """A `tokenizers.Tokenizer` from tokenizer.json (imports `tokenizers` here, not at module import)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"tokenizer {path} does not exist; run `make tokenizer` or pass --tokenizer PATH")
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise TrainError("reading text needs the `tokenizers` package: pip install tokenizers") from err
    return Tokenizer.from_file(str(path))


def check_tokenizer(path: str | Path, tokenizer, payload: dict[str, Any]) -> None:
    """The tokenizer must be the one the checkpoint's training data was made with (or at least fit
    the model's vocabulary when the checkpoint does not say)."""
    model_vocab = payload["model_config"]["vocab_size"]
    data = payload.get("data", {})
    vocab = tokenizer.get_vocab_size()
    if vocab > model_vocab:
        raise VocabMismatchError(
            f"tokenizer {path} has {vocab:,} tokens but the model's vocabulary has {model_vocab:,} rows; "
            f"use the tokenizer the model was trained with (--tokenizer)")
    want_hash = data.get("tokenizer_hash")
    if want_hash and tokenizer_hash(path) != want_hash:
        raise VocabMismatchError(
            f"tokenizer {path} is not the one the model was trained with (sha256 {tokenizer_hash(path)[:12]}, "
            f"the training shards say {want_hash[:12]}); pass the tokenizer.json of the training data with --tokenizer")
    if data.get("vocab_size") is not None and vocab != data["vocab_size"]:
        raise VocabMismatchError(
            f"tokenizer {path} has {vocab:,} tokens but the model was trained on shards with a "
            f"{data['vocab_size']:,}-token vocabulary; pass the training data's tokenizer with --tokenizer")


def check_data_vocab(shards, payload: dict[str, Any], shards_dir: str | Path) -> None:
    """Token shards must come from the tokenizer the checkpoint was trained with."""
    model_vocab = payload["model_config"]["vocab_size"]
    data = payload.get("data", {})
    if shards.vocab_size > model_vocab:
        raise VocabMismatchError(
            f"shards {shards_dir} use a {shards.vocab_size:,}-token vocabulary but the model has only "
            f"{model_vocab:,} rows; evaluate on shards made with the model's tokenizer")
    if data.get("tokenizer_hash") and shards.tokenizer_hash != data["tokenizer_hash"]:
        raise VocabMismatchError(
            f"shards {shards_dir} were made with tokenizer {shards.tokenizer_hash[:12]} but the model was "
            f"trained with {data['tokenizer_hash'][:12]}; evaluate on shards made with the model's tokenizer")


# ------------------------------------------------------------------------------------------------
# Checkpoint evaluation (the `evaluate` command)


#: Checkpoint kinds that are plain language models; a classifier or a reward model carries a head
#: of its own and is not one (as a language model it would lose the head, or fail to load).
LANGUAGE_MODEL_KINDS = ("pretrain", "sft", "dpo", "ppo")
_KIND_HINTS = {"classify": "a classifier: use `crawlgpt classify`",
               "reward": "a reward model, which scores answers but does not write them: use `crawlgpt reward-score`"}


def load_for_inference(checkpoint: str | Path, device: torch.device) -> tuple[GPT, dict[str, Any], Path]:
    """A language model checkpoint's GPT (evaluate, sample, export, benchmark): other kinds are refused."""
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    kind = payload.get("kind", "pretrain")
    if kind not in LANGUAGE_MODEL_KINDS:
        raise CheckpointKindError(f"{path} is a {kind!r} checkpoint, not a language model: it is "
                                  f"{_KIND_HINTS.get(kind, 'of a kind this command cannot read')}; pass a "
                                  f"pretrained, sft, dpo or ppo checkpoint")
    model = model_from_checkpoint(payload).to(device).eval()
    log.info("loaded %s (step %d, %s parameters)", path, payload["step"], f"{model.num_params():,}")
    return model, payload, path


def _check_seq_len(seq_len: int | None, model: GPT) -> int:
    context = model.config.max_seq_len
    if seq_len is None:
        return context
    if seq_len > context:
        raise SeqLenError(f"--seq-len {seq_len} is longer than the model's context of {context} tokens; "
                          f"use --seq-len {context} or less")
    return seq_len


class TokenArray:
    """A token sequence in memory that looks like one split of TokenShards (for text files)."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens
        self.num_tokens = len(tokens)

    def window(self, start: int, length: int) -> np.ndarray:
        return self.tokens[start:start + length]


def evaluate_checkpoint_on_shards(checkpoint: str | Path, shards_dir: str | Path, split: str = "val",
                                  seq_len: int | None = None, batch_size: int = 8, max_tokens: int | None = None,
                                  device: torch.device = torch.device("cpu")) -> EvalResult:
    model, payload, _ = load_for_inference(checkpoint, device)
    seq_len = _check_seq_len(seq_len, model)
    shards = open_split(shards_dir, split)
    check_data_vocab(shards, payload, shards_dir)
    batch_size = max(1, min(batch_size, (shards.num_tokens - 1) // seq_len))
    batches = eval_windows(shards, seq_len, batch_size, rank=0, world_size=1, max_tokens=max_tokens)
    return evaluate_loss(model, batches, device, bf16=device.type == "cuda")


def evaluate_checkpoint_on_text(checkpoint: str | Path, text_path: str | Path, tokenizer_path: str | Path,
                                seq_len: int | None = None, batch_size: int = 8,
                                device: torch.device = torch.device("cpu")) -> EvalResult:
    """Perplexity of a text file: tokenized as one document (end-of-text first, as in training)."""
    if not Path(text_path).is_file():
        raise TrainError(f"text file {text_path} does not exist")
    data = Path(text_path).read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not text
    except UnicodeDecodeError as exc:
        raise TrainError(
            f"{text_path} is not UTF-8 text: byte offset {exc.start} (0x{data[exc.start]:02x}) cannot be decoded "
            f"({exc.reason}). Convert it first, e.g. `iconv -f latin1 -t utf-8`, or pass a UTF-8 file."
        ) from exc
    model, payload, _ = load_for_inference(checkpoint, device)
    seq_len = _check_seq_len(seq_len, model)
    tokenizer = load_tokenizer(tokenizer_path)
    check_tokenizer(tokenizer_path, tokenizer, payload)
    ids = tokenizer.encode(text).ids
    eot = payload.get("data", {}).get("eot_id")
    tokens = np.asarray(([eot] if eot is not None else []) + ids, dtype=np.int64)
    if len(tokens) < 2:
        raise TrainError(f"{text_path} holds too little text to score (needs at least 2 tokens)")
    seq_len = min(seq_len, len(tokens) - 1)
    stream = TokenArray(tokens)
    batch_size = max(1, min(batch_size, (len(tokens) - 1) // seq_len))
    batches = eval_windows(stream, seq_len, batch_size, rank=0, world_size=1, max_tokens=None)
    return evaluate_loss(model, batches, device, bf16=device.type == "cuda")


# ------------------------------------------------------------------------------------------------
# Samples


@torch.no_grad()
def sample_tokens(model: GPT, prompt_ids: list[int], max_new_tokens: int, device: torch.device,
                  temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                  seed: int | None = 0, eot_id: int | None = None, bf16: bool = False) -> list[int]:
    """The new tokens generated after prompt_ids (without the prompt)."""
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    was_training = model.training
    model.eval()
    # Compiled blocks would recompile for every new length; sampling is short, so run it eagerly.
    stance = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") \
        else contextlib.nullcontext()
    with stance, autocast_context(device, bf16):
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             seed=seed, eot_id=eot_id)
    model.train(was_training)
    return out[0, len(prompt_ids):].tolist()


def sample_text(checkpoint: str | Path, prompt: str, tokenizer_path: str | Path, max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                seed: int | None = 0, num_samples: int = 1,
                device: torch.device = torch.device("cpu")) -> list[str]:
    """num_samples continuations of prompt (seeds seed, seed + 1, ...); the new text only, cut at end-of-text."""
    for option, value, low in (("--max-new-tokens", max_new_tokens, 1), ("--num-samples", num_samples, 1),
                               ("--temperature", temperature, 0), ("--top-k", top_k or 0, 0)):
        if value < low:
            raise TrainConfigError(option, f"must be >= {low}, got {value}")
    if top_p is not None and not 0 < top_p <= 1:
        raise TrainConfigError("--top-p", f"must be in (0, 1], got {top_p}")
    model, payload, _ = load_for_inference(checkpoint, device)
    tokenizer = load_tokenizer(tokenizer_path)
    check_tokenizer(tokenizer_path, tokenizer, payload)
    eot = payload.get("data", {}).get("eot_id")
    prompt_ids = ([eot] if eot is not None else []) + tokenizer.encode(prompt).ids
    if len(prompt_ids) >= model.config.max_seq_len:
        raise SeqLenError(f"the prompt has {len(prompt_ids)} tokens; the model's context is "
                          f"{model.config.max_seq_len}: use a shorter prompt")
    texts = []
    for i in range(num_samples):
        new_ids = sample_tokens(model, prompt_ids, max_new_tokens, device, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=None if seed is None else seed + i, eot_id=eot,
                                bf16=device.type == "cuda")
        if eot is not None and eot in new_ids:
            new_ids = new_ids[:new_ids.index(eot)]
        texts.append(tokenizer.decode(new_ids))
    return texts
