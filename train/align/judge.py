"""Aligned policies against their starting point: each answers the same held-out prompts with the same
sampling seed, the reward model judges every answer, and the win rate (ties count half) says how often
the aligned answer scored higher. The KL each policy paid is log π − log π_baseline summed over its own
answers' tokens (the quantity PPO's penalty keeps small), averaged over prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from train.align.common import (
    check_same_tokenizer,
    data_info,
    gpt_from_payload,
    load_policy_checkpoint,
    open_tokenizer,
)
from train.align.preference import PreferenceDataError, load_prompt_ids
from train.align.ppo import generate_responses, sequence_kl
from train.align.reward import RewardScorer
from train.tune.templates import template_from_checkpoint

log = logging.getLogger(__name__)


@dataclass
class PolicyRow:
    name: str
    """The policy's checkpoint."""
    win_rate: float
    """Share of prompts where its answer outscored the baseline's (ties half)."""
    score: float
    """Mean reward-model score of its answers."""
    kl: float
    """Mean over prompts of the summed log π − log π_baseline of its answers."""
    length: float
    """Mean answer length in tokens."""


@dataclass
class CompareReport:
    prompts: int
    baseline: str
    baseline_score: float
    rows: list[PolicyRow] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)


def compare_policies(policies: list[str | Path], baseline: str | Path, reward_checkpoint: str | Path,
                     prompts_path: str | Path, tokenizer_path: str | Path, device: torch.device,
                     val_fraction: float = 0.1, num_prompts: int = 64, max_new_tokens: int = 64,
                     temperature: float = 0.7, seed: int = 0) -> CompareReport:
    bf16 = device.type == "cuda"
    scorer = RewardScorer(reward_checkpoint, device, bf16, "--reward-model")
    base_payload, base_path = load_policy_checkpoint(baseline, "--baseline")
    check_same_tokenizer(base_payload, base_path, scorer.payload, scorer.path)
    tokenizer = open_tokenizer(tokenizer_path, base_payload)
    template = template_from_checkpoint(base_payload)
    eot = data_info(base_payload, base_path)["eot_id"]
    context = min(base_payload["model_config"]["max_seq_len"], scorer.context)
    _, prompts, _ = load_prompt_ids(prompts_path, tokenizer, template, eot, context - max_new_tokens, val_fraction)
    prompts = prompts[:num_prompts]
    if not prompts:
        raise PreferenceDataError(f"{prompts_path} has no held-out prompt at --val-fraction {val_fraction}")
    base_model = gpt_from_payload(base_payload, device)

    def answer(model) -> list[list[int]]:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        return generate_responses(model, prompts, max_new_tokens, temperature, None, generator, eot, device, bf16)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode([i for i in ids if i != eot])

    base_answers = answer(base_model)
    base_scores = scorer.score(prompts, base_answers)
    report = CompareReport(prompts=len(prompts), baseline=str(base_path), baseline_score=base_scores.mean().item())
    report.samples = [{"prompt": decode(p)[-160:], "answers": {"baseline": (decode(a), s)}}
                      for p, a, s in zip(prompts, base_answers, base_scores.tolist())]
    for policy in policies:
        payload, path = load_policy_checkpoint(policy)
        check_same_tokenizer(payload, path, scorer.payload, scorer.path)
        model = gpt_from_payload(payload, device)
        answers = answer(model)
        scores = scorer.score(prompts, answers)
        wins = (scores > base_scores).float() + 0.5 * (scores == base_scores).float()
        kl = sequence_kl(model, base_model, prompts, answers, eot, device, bf16)
        name = f"{payload.get('kind')} {path.parent.parent.name} step {payload['step']}"
        report.rows.append(PolicyRow(name=name, win_rate=wins.mean().item(), score=scores.mean().item(),
                                     kl=kl.mean().item(), length=sum(len(a) for a in answers) / len(answers)))
        for sample, a, s in zip(report.samples, answers, scores.tolist()):
            sample["answers"][payload.get("kind", "policy")] = (decode(a), s)
        log.info("%s: win rate %.3f against %s", name, report.rows[-1].win_rate, base_path)
    return report
