"""The reward model: the fine-tuned GPT with a scalar head on the last token of prompt + response,
trained on preference pairs with the Bradley–Terry loss (InstructGPT, section 3.5).

A reward checkpoint (kind "reward") holds the trunk as a plain GPT state dict under "model" and the
head under "reward_head"; `reward_model_from_checkpoint` puts them back together. The head reads the
final token, which for a whole response is end-of-text: the model has then seen all of it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.gpt import GPT, GPTConfig
from train.align.functional import bradley_terry_loss
from train.align.common import (
    PairObjective,
    SequenceBatch,
    collate_pairs,
    collate_sequences,
    data_info,
    load_reward_checkpoint,
    open_tokenizer,
)
from train.checkpoint import load_model_state
from train.evaluate import autocast_context
from train.align.preference import (
    PairStats,
    encode_prompt,
    encode_response,
    load_preference_data,
)
from train.tune.templates import template_from_checkpoint

log = logging.getLogger(__name__)


class RewardModel(nn.Module):
    """GPT trunk + a linear head from the last position's hidden state to one number."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gpt = GPT(config)
        self.score = nn.Linear(config.d_model, 1)
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(config.d_model + 1))
        nn.init.zeros_(self.score.bias)
        if not config.tie_embeddings:  # the language-model head is unused: keep it out of training (and DDP)
            self.gpt.head.weight.requires_grad_(False)

    def forward(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """idx (B, T), last (B,) the position to read -> rewards (B,) in float32."""
        hidden = self.gpt.hidden_states(idx)  # (B, T, C)
        picked = hidden[torch.arange(idx.size(0), device=idx.device), last]  # (B, C)
        return self.score(picked).squeeze(-1).float()  # (B,)

    def values(self, idx: torch.Tensor) -> torch.Tensor:
        """The head at every position, (B, T): PPO's value model is built like a reward model."""
        return self.score(self.gpt.hidden_states(idx)).squeeze(-1).float()


def split_reward_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"model": {k[len("gpt."):]: v for k, v in state.items() if k.startswith("gpt.")},
            "reward_head": {k[len("score."):]: v for k, v in state.items() if k.startswith("score.")}}


def join_reward_state(trunk: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**{f"gpt.{k}": v for k, v in trunk.items()}, **{f"score.{k}": v for k, v in head.items()}}


def reward_model_from_checkpoint(payload: dict[str, Any]) -> RewardModel:
    model = RewardModel(GPTConfig.from_dict(payload["model_config"]))
    load_model_state(model, join_reward_state(payload["model"], payload["reward_head"]))
    return model


class RewardObjective(PairObjective):
    """Bradley–Terry on (chosen, rejected) pairs: one forward over the 2B sequences, rewards read at the end."""

    kind = "reward"
    evaluate_at_start = True

    def __init__(self, *args, center_coef: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.center_coef = center_coef

    def build_model(self, config: GPTConfig) -> nn.Module:
        return RewardModel(config)

    def init_weights(self, model: RewardModel) -> None:
        load_model_state(model.gpt, self.payload["model"])

    def make_loader(self, model, seq_len: int):
        self.drop_init_weights()
        return super().make_loader(model, seq_len)

    def checkpoint_model_state(self, state):
        return split_reward_state(state)

    def resume_model_state(self, payload):
        return join_reward_state(payload["model"], payload["reward_head"])

    def _rewards(self, model, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.info.device
        rewards = model(batch.idx.to(device), batch.last.to(device))  # (2B,)
        half = rewards.size(0) // 2
        return rewards[:half], rewards[half:]

    def loss(self, model, batch: SequenceBatch):
        chosen, rejected = self._rewards(model, batch)
        loss, accuracy, margin = bradley_terry_loss(chosen, rejected, self.center_coef)
        return loss, {"accuracy": accuracy, "margin": margin, "reward_mean": (chosen + rejected).mean() / 2}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums = {"loss": 0.0, "correct": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0, "pairs": 0.0}
        for batch in self.val_batches():
            with autocast_context(self.info.device, self.info.bf16):
                chosen, rejected = self._rewards(model, batch)
            loss, accuracy, margin = bradley_terry_loss(chosen, rejected)
            n = chosen.numel()
            sums["loss"] += loss.item() * n
            sums["correct"] += accuracy.item() * n
            sums["margin"] += margin.item() * n
            sums["chosen"] += chosen.sum().item()
            sums["rejected"] += rejected.sum().item()
            sums["pairs"] += n
        model.train(was_training)
        s = self.reduce(sums)
        n = max(s["pairs"], 1)
        return {"val_loss": s["loss"] / n, "val_accuracy": s["correct"] / n, "val_margin": s["margin"] / n,
                "val_reward_chosen": s["chosen"] / n, "val_reward_rejected": s["rejected"] / n,
                "val_pairs": int(s["pairs"])}


# ------------------------------------------------------------------------------------------------
# Using a trained reward model: score sequences, evaluate on a pair file


class RewardScorer:
    """A frozen reward model that scores prompt + response token sequences."""

    def __init__(self, checkpoint: str | Path, device: torch.device, bf16: bool = False, option: str = ""):
        self.payload, self.path = load_reward_checkpoint(checkpoint, option)
        self.model = reward_model_from_checkpoint(self.payload).to(device).eval().requires_grad_(False)
        self.device, self.bf16 = device, bf16
        self.data = data_info(self.payload, self.path)
        self.template = template_from_checkpoint(self.payload)
        self.context = self.model.gpt.config.max_seq_len
        self.payload = {k: v for k, v in self.payload.items() if k not in ("model", "optimizer", "reward_head")}

    @torch.no_grad()
    def score(self, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 8) -> torch.Tensor:
        """Rewards (N,) of prompt + response sequences (cut at the reward model's context)."""
        out = []
        for start in range(0, len(prompts), batch_size):
            p, r = prompts[start:start + batch_size], responses[start:start + batch_size]
            r = [resp[:max(1, self.context - len(q))] for q, resp in zip(p, r)]
            batch = collate_sequences(p, r, self.data["eot_id"])
            with autocast_context(self.device, self.bf16):
                out.append(self.model(batch.idx.to(self.device), batch.last.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


@dataclass
class RewardEval:
    accuracy: float
    """Share of pairs with the chosen response scored above the rejected one."""
    margin: float
    """Mean reward of chosen minus rejected."""
    pairs: int
    """Pairs scored."""
    stats: PairStats
    """What happened to every record of the file."""


def evaluate_reward_pairs(checkpoint: str | Path, pairs_path: str | Path, tokenizer_path: str | Path,
                          device: torch.device, batch_size: int = 8, split: str = "all",
                          val_fraction: float = 0.1) -> RewardEval:
    """Pairwise accuracy of a reward model on a pair file (split: all, train or val by prompt hash)."""
    scorer = RewardScorer(checkpoint, device, bf16=device.type == "cuda")
    tokenizer = open_tokenizer(tokenizer_path, scorer.payload)
    data = load_preference_data(pairs_path, tokenizer, scorer.template, scorer.data["eot_id"], scorer.context,
                                0.0 if split == "all" else val_fraction)
    pairs = {"all": data.train + data.val, "train": data.train, "val": data.val}[split]
    correct = margin = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = collate_pairs(chunk, scorer.data["eot_id"])
        with torch.no_grad(), autocast_context(device, scorer.bf16):
            rewards = scorer.model(batch.idx.to(device), batch.last.to(device)).float()
        chosen, rejected = rewards[:len(chunk)], rewards[len(chunk):]
        correct += (chosen > rejected).sum().item()
        margin += (chosen - rejected).sum().item()
    n = max(len(pairs), 1)
    return RewardEval(accuracy=correct / n, margin=margin / n, pairs=len(pairs), stats=data.stats)


def score_texts(checkpoint: str | Path, records: list[tuple[str, str, str]], tokenizer_path: str | Path,
                device: torch.device, batch_size: int = 8) -> list[float]:
    """Rewards of (instruction, input, response) texts; the prompt is rendered with the model's template."""
    scorer = RewardScorer(checkpoint, device, bf16=device.type == "cuda")
    tokenizer = open_tokenizer(tokenizer_path, scorer.payload)
    eot = scorer.data["eot_id"]
    prompts = [encode_prompt(tokenizer, scorer.template.prompt(instruction, inp), eot)[-(scorer.context - 1):]
               for instruction, inp, _ in records]
    responses = [encode_response(tokenizer, response, eot) for *_, response in records]
    return scorer.score(prompts, responses, batch_size).tolist()
