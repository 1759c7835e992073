"""What reward modelling, DPO and PPO share: the policy and reward checkpoints they start from (checked
for their kind and tokenizer), the batches of (prompt + response) sequences, and the stateful loader over
preference pairs.

Batch layout. A sequence is prompt + response, right-padded; `targets[t]` is the token at t + 1 where that
token belongs to the response, else -1, so `GPT.forward(idx, targets)` gives the response tokens'
logits and `last` indexes each row's final token (end-of-text for a whole response), where a reward
or value head reads. Right padding never changes what the causal model computes for the real tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from model.gpt import GPT, GPTConfig
from train.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from train.distributed import all_reduce_sum
from train.errors import CheckpointError, CheckpointKindError, TrainError, VocabMismatchError
from train.evaluate import check_tokenizer, load_tokenizer
from train.objective import LoopInfo, Objective
from train.align.preference import PreferenceData, TokenPair, load_preference_data
from train.tune.templates import PromptTemplate, template_from_checkpoint

log = logging.getLogger(__name__)

#: Checkpoint kinds that hold a policy: a plain GPT state dict under "model".
POLICY_KINDS = ("sft", "dpo", "ppo", "pretrain")


def load_policy_checkpoint(path: str | Path, option: str = "--policy") -> tuple[dict[str, Any], Path]:
    """A policy checkpoint (sft preferred; a pretrained model works, with a warning)."""
    path = resolve_checkpoint(path)
    payload = load_checkpoint(path)
    kind = payload.get("kind", "pretrain")
    if kind == "reward":
        raise CheckpointKindError(
            f"{path} is a reward model (kind reward), not a policy; pass the fine-tuned model "
            f"(DATA/runs/RUN-sft) as {option} and the reward model as --reward-model")
    if kind not in POLICY_KINDS:
        raise CheckpointKindError(f"{path} is a {kind} checkpoint, not a language model policy; pass an sft, dpo, "
                                  f"ppo or pretrain checkpoint as {option}")
    if kind == "pretrain":
        log.warning("%s is a pretrained model, not an instruction-tuned one: it has never seen the prompt "
                    "template; fine-tune it first (crawlgpt sft) for useful results", path)
    data_info(payload, path)
    return payload, path


def load_reward_checkpoint(path: str | Path, option: str = "") -> tuple[dict[str, Any], Path]:
    path = resolve_checkpoint(path)
    payload = load_checkpoint(path)
    kind = payload.get("kind", "pretrain")
    if kind != "reward":
        raise CheckpointKindError(
            f"{path} is a {kind} checkpoint, not a reward model; train one with `crawlgpt reward-train` "
            f"and pass its run folder (DATA/runs/RUN-reward){f' as {option}' if option else ''}")
    if "reward_head" not in payload:
        raise CheckpointError(f"{path} has no reward_head entry; it is incomplete")
    data_info(payload, path)
    return payload, path


def data_info(payload: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """vocab_size, eot_id and tokenizer_hash of a checkpoint's training data."""
    data = payload.get("data", {})
    if data.get("eot_id") is None:
        raise CheckpointError(f"{path} does not record its end-of-text id (payload data.eot_id); it was not "
                              f"written by this trainer's pretrain or sft")
    vocab = data.get("vocab_size") or payload["model_config"]["vocab_size"]
    return {"vocab_size": vocab, "eot_id": data["eot_id"], "tokenizer_hash": data.get("tokenizer_hash")}


def check_same_tokenizer(a: dict[str, Any], a_path, b: dict[str, Any], b_path) -> None:
    """Two models that exchange token ids (policy and reward model) must share the tokenizer."""
    da, db = data_info(a, a_path), data_info(b, b_path)
    if da["tokenizer_hash"] != db["tokenizer_hash"] or da["vocab_size"] != db["vocab_size"] \
            or da["eot_id"] != db["eot_id"]:
        raise VocabMismatchError(
            f"{a_path} and {b_path} use different tokenizers (sha256 {str(da['tokenizer_hash'])[:12]}, vocab "
            f"{da['vocab_size']} vs {str(db['tokenizer_hash'])[:12]}, vocab {db['vocab_size']}); train the reward "
            f"model from the same fine-tuned policy")


def open_tokenizer(path: str | Path, payload: dict[str, Any]):
    """The tokenizer, checked against the checkpoint's training data."""
    tokenizer = load_tokenizer(path)
    check_tokenizer(path, tokenizer, payload)
    return tokenizer


def gpt_from_payload(payload: dict[str, Any], device: torch.device) -> GPT:
    """A frozen GPT (eval mode, no gradients) with a policy checkpoint's weights."""
    model = model_from_checkpoint(payload)
    model.requires_grad_(False)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------
# Batches


@dataclass
class SequenceBatch:
    idx: torch.Tensor
    """(N, T) prompt + response token ids, right-padded."""
    targets: torch.Tensor
    """(N, T) the next token where it belongs to the response, else -1."""
    last: torch.Tensor
    """(N,) position of each row's final token."""
    tokens: int
    """Real (unpadded) tokens."""
    indices: list[int] | None = None
    """Which pairs (for per-pair precomputed values)."""


def collate_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> SequenceBatch:
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    T = max(lengths)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    targets = torch.full((len(prompts), T), -1, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        idx[i, :len(seq)] = torch.tensor(seq)
        targets[i, len(p) - 1:len(seq) - 1] = torch.tensor(r)
    return SequenceBatch(idx, targets, torch.tensor([n - 1 for n in lengths]), sum(lengths))


def collate_pairs(pairs: list[TokenPair], pad_id: int, indices: list[int] | None = None) -> SequenceBatch:
    """Chosen rows first, then rejected rows: (2B, T)."""
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = collate_sequences(prompts, responses, pad_id)
    batch.indices = indices
    return batch


class PairLoader:
    """Micro-batches of pair indices in a seeded order that is new every epoch; its state is one number.

    Example i of the global stream is pair permutation(seed, i // n)[i % n]; each micro-step every rank
    takes its own slice of micro_batch_size examples, so the order does not depend on the rank count."""

    def __init__(self, num_pairs: int, micro_batch_size: int, seed: int, rank: int, world_size: int,
                 make_batch: Callable[[list[int]], Any]):
        self.n = num_pairs
        self.micro = micro_batch_size
        self.seed = seed
        self.rank, self.world = rank, world_size
        self.make_batch = make_batch
        self.position = 0
        self._perm_epoch, self._perm = -1, None

    def _pair(self, i: int) -> int:
        epoch = i // self.n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[i % self.n])

    def next_batch(self):
        start = self.position + self.rank * self.micro
        indices = [self._pair(start + j) for j in range(self.micro)]
        self.position += self.micro * self.world
        return self.make_batch(indices)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "num_pairs": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("num_pairs") != self.n:
            raise TrainError(f"the checkpoint's loader walked {state.get('num_pairs')} pairs, this run has {self.n}; "
                             f"resume with the same pairs file, --val-fraction and --max-len")
        self.position = int(state["position"])

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# The objective both reward modelling and DPO build on


class PairObjective(Objective):
    """Training on preference pairs from a policy checkpoint: data, model config, loader, bookkeeping."""

    def __init__(self, policy_checkpoint: str | Path, pairs_path: str | Path, tokenizer_path: str | Path,
                 val_fraction: float = 0.1, batch_pairs: int = 8, template: PromptTemplate | None = None):
        self.policy_checkpoint = policy_checkpoint
        self.pairs_path = pairs_path
        self.tokenizer_path = tokenizer_path
        self.val_fraction = val_fraction
        self.batch_pairs = batch_pairs
        self.template_override = template

    def setup(self, info: LoopInfo) -> None:
        super().setup(info)
        self.payload, self.policy_path = load_policy_checkpoint(self.policy_checkpoint)
        self.info_data = data_info(self.payload, self.policy_path)
        self.eot_id = self.info_data["eot_id"]
        self.template = self.template_override or template_from_checkpoint(self.payload)
        self.tokenizer = open_tokenizer(self.tokenizer_path, self.payload)
        context = self.payload["model_config"]["max_seq_len"]
        self.max_len = min(info.seq_len or context, context)
        self.data: PreferenceData = load_preference_data(self.pairs_path, self.tokenizer, self.template,
                                                         self.eot_id, self.max_len, self.val_fraction)
        if info.ctx.is_main:
            log.info("pairs %s: %s; %d train, %d validation", self.pairs_path, self.data.stats.summary(),
                     len(self.data.train), len(self.data.val))

    def vocab_size(self) -> int:
        return self.info_data["vocab_size"]

    def data_info(self) -> dict[str, Any]:
        return {**self.info_data, "pairs": str(self.pairs_path), "pair_stats": self.data.stats.to_dict()}

    def model_config(self, preset_config: GPTConfig) -> GPTConfig:
        return GPTConfig.from_dict(self.payload["model_config"])

    def seq_len(self, config: GPTConfig) -> int:
        return self.max_len

    def micro_steps(self, global_batch_tokens: int, seq_len: int) -> int:
        return max(1, self.batch_pairs // (self.info.micro_batch_size * self.info.ctx.world_size))

    def make_loader(self, model, seq_len: int) -> PairLoader:
        info = self.info
        return PairLoader(len(self.data.train), info.micro_batch_size, info.seed, info.ctx.rank,
                          info.ctx.world_size, self._train_batch)

    def _train_batch(self, indices: list[int]) -> SequenceBatch:
        return collate_pairs([self.data.train[i] for i in indices], self.eot_id, indices)

    def batch_tokens(self, batch: SequenceBatch) -> int:
        return batch.tokens

    def val_batches(self, split: str = "val"):
        """This rank's share of the split, in micro-batches (chosen rows, then rejected rows)."""
        pairs = self.data.val if split == "val" else self.data.train
        mine = list(range(self.info.ctx.rank, len(pairs), self.info.ctx.world_size))
        size = self.info.micro_batch_size
        for start in range(0, len(mine), size):
            chunk = mine[start:start + size]
            yield collate_pairs([pairs[i] for i in chunk], self.eot_id, chunk)

    def reduce(self, sums: dict[str, float]) -> dict[str, float]:
        """Sum per-rank totals across ranks (every rank calls it, with the same keys in the same order)."""
        keys = list(sums)
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=self.info.device)
        all_reduce_sum(t, self.info.ctx)
        return dict(zip(keys, t.tolist()))

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"template": self.template.to_dict(), "init_checkpoint": str(self.policy_path)}

    def drop_init_weights(self) -> None:
        """The policy weights are needed only until the model is initialised."""
        self.payload = {k: v for k, v in self.payload.items() if k not in ("model", "optimizer")}
