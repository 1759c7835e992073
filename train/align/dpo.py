"""Direct Preference Optimization (Rafailov et al. 2023) on the one training loop.

The policy starts as a copy of the fine-tuned model, which also serves, frozen, as the reference.
The loss of a pair is −log σ(β ((log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)))), with
log-probabilities summed over the response tokens (the paper; `average_logprobs` takes the mean per
token instead, as the book's chapter 7 notebook does). β (log π − log π_ref) is each response's
implicit reward; its accuracy (chosen above rejected) and margin are logged on train and validation.

The reference's log-probabilities do not change, so by default they are computed once, before the
first step, for every pair (`reference="precompute"`), and the reference model is then freed; with
`reference="online"` it stays loaded and is run beside the policy at each step (less start-up time when
you train on a small part of a big pair file, at the cost of one more forward pass per step).
A DPO checkpoint (kind "dpo") is a plain GPT with the template: `sample`, `evaluate` and export read it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from model.gpt import GPT, GPTConfig
from train.align.functional import dpo_loss, sequence_logprobs
from train.align.common import PairObjective, SequenceBatch, collate_pairs, gpt_from_payload
from train.checkpoint import load_model_state
from train.errors import TrainConfigError
from train.evaluate import autocast_context, sample_tokens
from train.objective import LoopInfo

log = logging.getLogger(__name__)

REFERENCE_MODES = ("precompute", "online")


class DPOObjective(PairObjective):
    kind = "dpo"
    evaluate_at_start = True

    def __init__(self, *args, beta: float = 0.1, average_logprobs: bool = False, reference: str = "precompute",
                 sample_tokens: int = 48, **kwargs):
        super().__init__(*args, **kwargs)
        if beta <= 0:
            raise TrainConfigError("--beta", f"must be > 0, got {beta}")
        if reference not in REFERENCE_MODES:
            raise TrainConfigError("--reference", f"must be one of {REFERENCE_MODES}, got {reference!r}")
        self.beta = beta
        self.average = average_logprobs
        self.reference_mode = reference
        self.sample_tokens = sample_tokens
        self.reference: GPT | None = None
        self.ref_train = self.ref_val = None

    def setup(self, info: LoopInfo) -> None:
        super().setup(info)
        self.reference = gpt_from_payload(self.payload, info.device)
        if self.reference_mode == "precompute":
            self.ref_train = self._reference_logprobs(self.data.train)
            self.ref_val = self._reference_logprobs(self.data.val)
            self.reference = None
            if info.ctx.is_main:
                log.info("reference log-probabilities of %d pairs computed", len(self.data.train) + len(self.data.val))

    @torch.no_grad()
    def _reference_logprobs(self, pairs) -> torch.Tensor:
        """(N, 2) reference log-probabilities of each pair's chosen and rejected responses."""
        out = []
        size = self.info.micro_batch_size
        for start in range(0, len(pairs), size):
            chunk = pairs[start:start + size]
            out.append(self._ref_batch(collate_pairs(chunk, self.eot_id)).cpu())
        return torch.cat(out) if out else torch.zeros(0, 2)

    def _ref_batch(self, batch: SequenceBatch) -> torch.Tensor:
        device = self.info.device
        with torch.no_grad(), autocast_context(device, self.info.bf16):
            logits, _ = self.reference(batch.idx.to(device), batch.targets.to(device))
        lp = sequence_logprobs(logits, batch.targets.to(device), self.average)  # (2B,)
        half = lp.size(0) // 2
        return torch.stack((lp[:half], lp[half:]), dim=1)  # (B, 2)

    def build_model(self, config: GPTConfig) -> nn.Module:
        return GPT(config)

    def init_weights(self, model: GPT) -> None:
        load_model_state(model, self.payload["model"])

    def make_loader(self, model, seq_len: int):
        self.drop_init_weights()
        return super().make_loader(model, seq_len)

    def _loss(self, model, batch: SequenceBatch, reference: torch.Tensor | None):
        device = self.info.device
        targets = batch.targets.to(device)
        logits, _ = model(batch.idx.to(device), targets)
        lp = sequence_logprobs(logits, targets, self.average)  # (2B,)
        half = lp.size(0) // 2
        ref = reference.to(device) if reference is not None else self._ref_batch(batch).to(device)
        return dpo_loss(lp[:half], lp[half:], ref[:, 0], ref[:, 1], self.beta)

    def loss(self, model, batch: SequenceBatch):
        ref = self.ref_train[batch.indices] if self.ref_train is not None else None
        loss, chosen, rejected = self._loss(model, batch, ref)
        return loss, {"reward_accuracy": (chosen > rejected).float().mean(),
                      "reward_margin": (chosen - rejected).mean(),
                      "reward_chosen": chosen.mean(), "reward_rejected": rejected.mean()}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums = {"loss": 0.0, "correct": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0, "pairs": 0.0}
        for batch in self.val_batches():
            ref = self.ref_val[batch.indices] if self.ref_val is not None else None
            with autocast_context(self.info.device, self.info.bf16):
                loss, chosen, rejected = self._loss(model, batch, ref)
            n = chosen.numel()
            sums["loss"] += loss.item() * n
            sums["correct"] += (chosen > rejected).sum().item()
            sums["margin"] += (chosen - rejected).sum().item()
            sums["chosen"] += chosen.sum().item()
            sums["rejected"] += rejected.sum().item()
            sums["pairs"] += n
        model.train(was_training)
        s = self.reduce(sums)
        n = max(s["pairs"], 1)
        return {"val_loss": s["loss"] / n, "val_reward_accuracy": s["correct"] / n,
                "val_reward_margin": s["margin"] / n, "val_reward_chosen": s["chosen"] / n,
                "val_reward_rejected": s["rejected"] / n, "val_pairs": int(s["pairs"])}

    def sample(self, model, step: int) -> str | None:
        if not self.sample_tokens or not (self.data.val or self.data.train):
            return None
        prompt = (self.data.val or self.data.train)[0].prompt
        new = sample_tokens(model, prompt, self.sample_tokens, self.info.device, temperature=0.0, top_k=None,
                            eot_id=None if self.sharded else self.eot_id, bf16=self.info.bf16)
        if self.eot_id in new:
            new = new[:new.index(self.eot_id)]
        return self.tokenizer.decode(new)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "dpo": {"beta": self.beta, "average_logprobs": self.average}}
