"""What a kind of training brings to the one training loop: data, model, loss, evaluation.

`train.loop.train` owns everything every kind of training shares: processes and devices, precision,
the optimizer and its schedule, gradient accumulation and clipping, logging and throughput, SIGTERM,
checkpoints and exact resume. An `Objective` owns what differs: which batches come next (and the
state that says where the loader is), how the model is built and initialised (a plain GPT, a GPT
with a classification or value head, a policy with a frozen reference), the loss of one micro-batch,
and what "evaluation" means. Pretraining (`PretrainObjective`, below), instruction tuning,
classification, reward modelling, DPO and PPO are each one subclass; none of them copies the loop.

Rules an objective follows so that DDP and FSDP2 work unchanged:
- `loss` calls the module it is given (the wrapped model) exactly once per micro-batch, through its
  `forward`; everything the loss needs comes out of that call (DDP hooks the gradient sync there).
- The model's decoder blocks are `model.gpt.Block` instances somewhere in the module tree: FSDP2
  shards each one, and `--compile` compiles each one.
- Anything that must survive a resume is either in the model's state dict, in the loader's
  `state_dict()`, or derived from the objective's config (e.g. a frozen reference model reloaded
  from the checkpoint it was initialised from).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch
import torch.nn as nn

from model.gpt import GPT, GPTConfig
from train.data import TokenBatchLoader, eval_windows, open_split
from train.distributed import DistContext
from train.errors import TrainError, VocabMismatchError
from train.evaluate import evaluate_loss, load_tokenizer, sample_tokens, tokenizer_hash

log = logging.getLogger(__name__)

#: The embedding is padded to a multiple of this many rows: aligned matmuls run faster.
VOCAB_MULTIPLE = 64


def padded_vocab(vocab_size: int) -> int:
    return VOCAB_MULTIPLE * math.ceil(vocab_size / VOCAB_MULTIPLE)


class BatchLoader(Protocol):
    """A stateful source of micro-batches: its state goes into every checkpoint."""

    def next_batch(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class LoopInfo:
    """What the loop tells an objective when it sets it up."""

    ctx: DistContext
    device: torch.device
    bf16: bool
    seed: int
    micro_batch_size: int
    seq_len: int | None
    """--seq-len (None = the model's context)."""
    prefetch_batches: int
    eval_max_tokens: int | None
    verify_checksums: bool


class Objective:
    """Base class: a kind of training. Subclasses override what differs from pretraining."""

    kind: str = "pretrain"
    """Stored in every checkpoint as "kind": later commands use it to check they were given the right model."""

    sharded: bool = False
    """Set by the loop before `setup`: True under FSDP2, where every rank must take part in each forward
    (so sampling cannot stop early at end-of-text on one rank only)."""

    fixed_batch_tokens: bool = False
    """True when a step's tokens are the global batch by construction (windows of the token shards): the
    loop then warns when the batch is rounded, and counts tokens seen as steps x batch."""

    # ---- setup (called once, in this order) -------------------------------------------------------

    def setup(self, info: LoopInfo) -> None:
        """Open the data; called before the model exists."""
        self.info = info

    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (the model pads it to a multiple of 64)."""
        raise NotImplementedError

    def data_info(self) -> dict[str, Any]:
        """What the data was (vocab size, end-of-text id, tokenizer hash, ...): stored in checkpoints."""
        return {}

    def model_config(self, preset_config: GPTConfig) -> GPTConfig:
        """The config of the network to build; fine-tuning takes its base checkpoint's config instead."""
        return preset_config

    def build_model(self, config: GPTConfig) -> nn.Module:
        """The module the loop trains (its parameters with requires_grad=False are not optimised)."""
        return GPT(config)

    def init_weights(self, model: nn.Module) -> None:
        """Initialise a fresh run's weights (after build, before wrapping; not called on resume)."""

    def check_resume(self, payload: dict[str, Any], path) -> None:
        """Refuse a checkpoint made for other data (raise a TrainError naming the difference)."""

    def seq_len(self, config: GPTConfig) -> int:
        """Tokens per example/window fed to the model."""
        return self.info.seq_len or config.max_seq_len

    def make_loader(self, model: nn.Module, seq_len: int) -> BatchLoader:
        raise NotImplementedError

    def micro_steps(self, global_batch_tokens: int, seq_len: int) -> int:
        """Micro-batches per optimizer step on each rank (gradient accumulation)."""
        per_micro = self.info.micro_batch_size * seq_len * self.info.ctx.world_size
        return max(1, global_batch_tokens // per_micro)

    # ---- the step --------------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch (a scalar to minimise, mean over the micro-batch) and extra
        scalars to log (detached; averaged over the logging interval like the loss)."""
        raise NotImplementedError

    def batch_tokens(self, batch: Any) -> int:
        """Tokens this rank processed in the micro-batch (for tokens/s)."""
        raise NotImplementedError

    def tokens_seen(self, step: int, global_batch_tokens: int, counted: float) -> int:
        """Training tokens seen after `step` steps: `counted` (summed over every logged interval) unless
        each step is exactly one global batch."""
        return step * global_batch_tokens if self.fixed_batch_tokens else int(counted)

    # ---- evaluation, samples, checkpoints -------------------------------------------------------

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation figures (every rank calls it; collectives allowed). Must hold "val_loss" (None, and every
        figure None, when there is no validation data: never zeros)."""
        raise NotImplementedError

    def sample(self, model: nn.Module, step: int) -> str | None:
        """A short sample to log (rank 0 only unless FSDP); None = no sample."""
        return None

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra plain values stored in every checkpoint (a prompt template, class names, ...)."""
        return {}

    #: Evaluate once before the first step of a fresh run (step 0): the "before" of before/after figures.
    evaluate_at_start: bool = False

    def checkpoint_model_state(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The checkpoint entries that hold the trained module's full state. Default: all of it under
        "model". A policy with a value model stores its plain GPT weights under "model" (so `sample`,
        `evaluate` and export read it like any GPT) and the rest under other keys."""
        return {"model": state}

    def resume_model_state(self, payload: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The trained module's full state from a checkpoint: the inverse of checkpoint_model_state."""
        return payload["model"]

    def close(self) -> None:
        """Release what setup opened."""


# ------------------------------------------------------------------------------------------------
# Pretraining: next-token prediction over windows of the token shards


class PretrainObjective(Objective):
    """Next-token prediction over seeded random windows of memory-mapped token shards."""

    kind = "pretrain"
    fixed_batch_tokens = True

    def __init__(self, shards_dir: str, tokenizer_path: str | None = None, sample_prompt: str = "The",
                 sample_tokens: int = 48):
        self.shards_dir = shards_dir
        self.tokenizer_path = tokenizer_path
        self.sample_prompt = sample_prompt
        self.sample_tokens = sample_tokens
        self.tokenizer = None

    def setup(self, info: LoopInfo) -> None:
        super().setup(info)
        self.train_shards = open_split(self.shards_dir, "train", info.verify_checksums)
        self.val_shards = open_split(self.shards_dir, "val", info.verify_checksums)
        if info.ctx.is_main:
            log.info("data: %s train tokens, %s val tokens, vocab %d, in %s",
                     f"{self.train_shards.num_tokens:,}", f"{self.val_shards.num_tokens:,}",
                     self.train_shards.vocab_size, self.shards_dir)
        self._load_tokenizer()

    def _load_tokenizer(self) -> None:
        """The tokenizer is only for samples, and must be the one the shards were made with."""
        path = self.tokenizer_path
        if not path or self.sample_tokens == 0:
            return
        from pathlib import Path

        if not Path(path).is_file():
            log.warning("tokenizer %s does not exist: samples will be token ids", path)
            return
        if tokenizer_hash(path) != self.train_shards.tokenizer_hash:
            raise VocabMismatchError(
                f"tokenizer {path} (sha256 {tokenizer_hash(path)[:12]}) is not the one the shards in "
                f"{self.shards_dir} were made with ({self.train_shards.tokenizer_hash[:12]}); rerun "
                f"`make shards` after changing the tokenizer, or pass the right --tokenizer")
        try:
            self.tokenizer = load_tokenizer(path)
        except TrainError as err:  # e.g. the tokenizers package is not installed
            log.warning("samples will be token ids: %s", err)

    def vocab_size(self) -> int:
        return self.train_shards.vocab_size

    def data_info(self) -> dict[str, Any]:
        return {"vocab_size": self.train_shards.vocab_size, "eot_id": self.train_shards.eot_id,
                "tokenizer_hash": self.train_shards.tokenizer_hash, "shards_dir": str(self.shards_dir)}

    def check_resume(self, payload: dict[str, Any], path) -> None:
        saved = payload.get("data", {})
        if saved.get("tokenizer_hash") not in (None, self.train_shards.tokenizer_hash) \
                or saved.get("vocab_size") not in (None, self.train_shards.vocab_size):
            raise VocabMismatchError(
                f"checkpoint {path} was trained on shards of tokenizer {str(saved.get('tokenizer_hash'))[:12]} "
                f"(vocab {saved.get('vocab_size')}) but {self.shards_dir} holds tokenizer "
                f"{self.train_shards.tokenizer_hash[:12]} (vocab {self.train_shards.vocab_size}); resume on the "
                f"original shards or start a new --run")

    def make_loader(self, model: nn.Module, seq_len: int) -> TokenBatchLoader:
        info = self.info
        self._seq_len = seq_len
        return TokenBatchLoader(self.train_shards, seq_len, info.micro_batch_size, info.seed,
                                rank=info.ctx.rank, world_size=info.ctx.world_size,
                                prefetch_batches=info.prefetch_batches, pin_memory=info.device.type == "cuda")

    def loss(self, model, batch):
        inputs, targets = batch  # each (micro, seq_len), pinned on CUDA
        inputs = inputs.to(self.info.device, non_blocking=True)
        targets = targets.to(self.info.device, non_blocking=True)
        _, loss = model(inputs, targets)
        return loss, {}

    def batch_tokens(self, batch) -> int:
        return batch[0].numel()

    def _eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = self.info
        return eval_windows(self.val_shards, self._seq_len, info.micro_batch_size, info.ctx.rank,
                            info.ctx.world_size, info.eval_max_tokens)

    def evaluate(self, model) -> dict[str, float]:
        ev = evaluate_loss(model, self._eval_batches(), self.info.device, bf16=self.info.bf16, ctx=self.info.ctx)
        return {"val_loss": ev.loss, "val_ppl": ev.perplexity, "val_tokens": ev.tokens}

    def sample(self, model, step: int) -> str | None:
        eot = self.train_shards.eot_id
        prompt_ids = [eot]
        if self.tokenizer is not None:
            prompt_ids += self.tokenizer.encode(self.sample_prompt).ids
        context = model.config.max_seq_len if hasattr(model, "config") else len(prompt_ids) + 1
        prompt_ids = prompt_ids[-(context - 1):]
        new_ids = sample_tokens(model, prompt_ids, self.sample_tokens, self.info.device, seed=self.info.seed,
                                eot_id=None if self.sharded else eot, bf16=self.info.bf16)
        if self.tokenizer is not None:
            return self.sample_prompt + self.tokenizer.decode(new_ids)
        return " ".join(map(str, new_ids))

