"""PPO (RLHF, as in InstructGPT) on the one training loop: the loader samples, the loop optimises.

One iteration: take the next `rollout_prompts` prompts; sample a response to each from the current
policy (KV cache, temperature 0.7); score prompt + response with the frozen reward model; compute
the per-token log-probabilities of the policy and of the frozen reference and the value estimates;
per-token reward = −kl_coef (log π − log π_ref), plus the score on the last response token, minus
`no_eot_penalty` when the response never produced end-of-text; GAE advantages (γ, λ), whitened over
the batch; then `epochs` passes over the rollout in shuffled minibatches, each one optimizer step of
the clipped policy loss plus vf_coef × the clipped value loss.

Fitting that into the loop: `RolloutLoader` is the loader. Its `next_batch` returns the next micro-batch
of the current rollout, and samples a new rollout when the last one has been used `epochs` times, so
one loop step is one PPO minibatch update and an iteration is epochs × rollout_prompts / minibatch
steps. The time the loop counts as "waiting for data" is the rollout (generation and scoring). The
loader's state (position, the sampling RNG, and the unfinished rollout itself) goes into every
checkpoint, so a resumed run continues exactly.

The trained module (`PolicyWithValue`) holds the policy and the value model (a GPT with a scalar head
at every position, initialised from the reward model as InstructGPT does, or from the policy with a
zero head); the reference and the reward model are frozen and live outside it. A PPO checkpoint (kind
"ppo") holds the policy as a plain GPT state dict under "model" (so `sample`, `evaluate` and export
read it) and the value model under "value_model".
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from model.gpt import GPT, GPTConfig
from train.align.functional import (
    entropy,
    gae,
    kl_penalised_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
    whiten,
)
from train.align.common import (
    check_same_tokenizer,
    collate_sequences,
    data_info,
    gpt_from_payload,
    load_policy_checkpoint,
    open_tokenizer,
)
from train.checkpoint import load_checkpoint, load_model_state
from train.errors import TrainConfigError, TrainError
from train.evaluate import autocast_context
from train.objective import LoopInfo, Objective
from train.align.preference import load_prompt_ids
from train.align.reward import RewardModel, RewardScorer, join_reward_state
from train.tune.templates import PromptTemplate, template_from_checkpoint

log = logging.getLogger(__name__)

#: A reward function: (prompt ids, response ids) of N sequences -> rewards (N,). The reward model is one.
RewardFn = Callable[[list[list[int]], list[list[int]]], torch.Tensor]

VALUE_INITS = ("reward", "policy")


@dataclass(frozen=True)
class PPOConfig:
    kl_coef: float = 0.05
    """Weight of the per-token KL penalty −kl_coef (log π − log π_ref) in the reward."""
    clip: float = 0.2
    """Clip range of the probability ratio in the policy loss."""
    value_clip: float = 0.2
    """Clip range of the value change in the value loss."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """λ of GAE."""
    epochs: int = 4
    """Passes over each rollout."""
    rollout_prompts: int = 16
    """Prompts sampled per iteration (per rank)."""
    minibatch: int = 4
    """Sequences per optimizer step (per rank); micro-batch × gradient accumulation."""
    max_new_tokens: int = 64
    """Longest response; prompts longer than the context minus this are skipped."""
    temperature: float = 0.7
    """Sampling temperature of the rollouts."""
    top_k: int | None = None
    """Sample among the k most likely tokens (None = all, the common recipe)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    no_eot_penalty: float = 1.0
    """Subtracted from the score of a response that did not end with end-of-text (0 = none)."""
    value_init: str = "reward"
    """Initialise the value model from the reward model (InstructGPT) or from the policy (zero head)."""
    val_prompts: int = 16
    """Held-out prompts answered at each evaluation."""
    use_cache: bool = True
    """Generate with the KV cache (off only to measure what it saves)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "rollout_prompts", "minibatch", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("kl_coef", "clip", "value_clip", "vf_coef", "no_eot_penalty", "val_prompts"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"--{name.replace('_', '-')}", f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise TrainConfigError("--gamma/--lam", f"must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.temperature <= 0:
            raise TrainConfigError("--temperature", f"rollouts sample: must be > 0, got {self.temperature}")
        if self.value_init not in VALUE_INITS:
            raise TrainConfigError("--value-init", f"must be one of {VALUE_INITS}, got {self.value_init!r}")
        if (self.rollout_prompts * self.epochs) % self.minibatch:
            raise TrainConfigError("--minibatch", f"must divide --rollout-prompts x --epochs = "
                                   f"{self.rollout_prompts * self.epochs}, got {self.minibatch}")

    @property
    def steps_per_iteration(self) -> int:
        return self.rollout_prompts * self.epochs // self.minibatch


class PolicyWithValue(nn.Module):
    """The trained module: one forward gives the policy's logits and the value model's estimates."""

    def __init__(self, policy_config: GPTConfig, value_config: GPTConfig):
        super().__init__()
        self.policy = GPT(policy_config)
        self.value = RewardModel(value_config)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx, targets (B, T) -> logits (B, T, V), values (B, T)."""
        logits, _ = self.policy(idx, targets)
        return logits, self.value.values(idx)


def _unwrap(model: nn.Module) -> PolicyWithValue:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def generate_responses(policy: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                       top_k: int | None, generator: torch.Generator, eot_id: int, device: torch.device,
                       bf16: bool = False, use_cache: bool = True) -> list[list[int]]:
    """One sampled response per prompt, ending at (and including) the first end-of-text.

    The model has no padding mask, so prompts are batched only with prompts of the same length; each
    batch draws its own seed from `generator`, which carries the sampling state from call to call."""
    was_training = policy.training
    policy.eval()
    responses: list[list[int] | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for length, rows in sorted(by_length.items()):
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())
        idx = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
        room = min(max_new_tokens, policy.config.max_seq_len - length)
        with autocast_context(device, bf16):
            out = policy.generate(idx, room, temperature=temperature, top_k=top_k, seed=seed, eot_id=eot_id,
                                  use_cache=use_cache)
        for row, i in enumerate(rows):
            new = out[row, length:].tolist()
            responses[i] = new[:new.index(eot_id) + 1] if eot_id in new else new
    policy.train(was_training)
    return [r if r else [eot_id] for r in responses]


class RolloutLoader:
    """Samples a rollout from the current policy, then yields its micro-batches for `epochs` shuffled passes."""

    def __init__(self, objective: PPOObjective, model: nn.Module):
        self.obj = objective
        self.model = model
        info = objective.info
        self.micro = info.micro_batch_size
        self.rank = info.ctx.rank
        self.seed = info.seed
        self.iteration = 0
        self.prompt_position = 0
        self.generator = torch.Generator(device=info.device)
        self.generator.manual_seed(info.seed * 1000 + info.ctx.rank)
        self.rollout: dict[str, torch.Tensor] | None = None
        self.order: torch.Tensor | None = None
        self.cursor = 0
        self.stats: dict[str, float] = {}
        self._train_time = 0.0
        self._train_tokens = 0
        self._returned_at: float | None = None
        self._last_tokens = 0

    # ---- prompts --------------------------------------------------------------------------------

    def _next_prompts(self, n: int) -> list[list[int]]:
        prompts = self.obj.train_prompts
        out = []
        for _ in range(n):
            epoch, i = divmod(self.prompt_position, len(prompts))
            perm = np.random.default_rng([self.seed, self.rank, epoch]).permutation(len(prompts))
            out.append(prompts[int(perm[i])])
            self.prompt_position += 1
        return out

    # ---- one rollout ----------------------------------------------------------------------------

    @torch.no_grad()
    def _sample_rollout(self) -> None:
        obj, cfg, device = self.obj, self.obj.cfg, self.obj.info.device
        module = _unwrap(self.model)
        prompts = self._next_prompts(cfg.rollout_prompts)

        t0 = time.perf_counter()
        responses = generate_responses(module.policy, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                       self.generator, obj.eot_id, device, obj.info.bf16, cfg.use_cache)
        t1 = time.perf_counter()
        scores = obj.score(prompts, responses).to(device).float()  # (N,)
        ended = torch.tensor([r[-1] == obj.eot_id for r in responses], device=device)
        scores_penalised = scores - cfg.no_eot_penalty * (~ended).float()
        t2 = time.perf_counter()

        batch = collate_sequences(prompts, responses, obj.eot_id)
        idx, targets = batch.idx.to(device), batch.targets.to(device)
        mask = (targets >= 0).float()
        was_training = module.training
        module.eval()
        with autocast_context(device, obj.info.bf16):
            logits, values = module(idx, targets)
            ref_logits, _ = obj.reference(idx, targets)
        module.train(was_training)
        logprobs = token_logprobs(logits, targets)
        ref_logprobs = token_logprobs(ref_logits, targets)
        values = values.float() * mask
        rewards, kl = kl_penalised_rewards(logprobs, ref_logprobs, scores_penalised, mask, cfg.kl_coef)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask)
        t3 = time.perf_counter()

        self.rollout = {"idx": batch.idx, "targets": batch.targets, "logprobs": logprobs.cpu(),
                        "values": values.cpu(), "advantages": advantages.cpu(), "returns": returns.cpu()}
        n = len(prompts)
        self.order = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(
            self.seed * 7919 + self.iteration * 31 + e + self.rank * 100003)) for e in range(cfg.epochs)])
        self.cursor = 0
        self.iteration += 1
        gen_tokens = sum(len(r) for r in responses)
        kl_seq = kl.sum(-1)
        self.stats = {
            "score": scores.mean().item(), "reward": scores_penalised.mean().item(),
            "kl": kl_seq.mean().item(), "objective": (scores_penalised - cfg.kl_coef * kl_seq).mean().item(),
            "response_len": gen_tokens / n, "no_eot_share": (~ended).float().mean().item(),
            "gen_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9), "gen_s": t1 - t0, "score_s": t2 - t1,
            "prepare_s": t3 - t2, "iteration": float(self.iteration),
            "train_tokens_per_s": self._train_tokens / self._train_time if self._train_time > 0 else 0.0,
        }
        self._train_time, self._train_tokens = 0.0, 0
        self.obj.last_samples = [(prompts[i], responses[i], scores[i].item()) for i in range(min(2, n))]

    # ---- the loader protocol --------------------------------------------------------------------

    def next_batch(self) -> dict[str, Any]:
        now = time.perf_counter()
        if self._returned_at is not None:  # the loop trained on the previous micro-batch meanwhile
            self._train_time += now - self._returned_at
            self._train_tokens += self._last_tokens
        if self.rollout is None or self.cursor >= len(self.order):
            self._sample_rollout()
        rows = self.order[self.cursor:self.cursor + self.micro]
        self.cursor += self.micro
        mask = self.rollout["targets"][rows] >= 0
        width = int(self.rollout["idx"].size(1) if not mask.any() else mask.nonzero()[:, 1].max().item() + 2)
        batch = {k: v[rows][:, :width] for k, v in self.rollout.items()}
        batch["stats"] = dict(self.stats)
        self._last_tokens = int(batch["idx"].numel())
        self._returned_at = time.perf_counter()
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "prompt_position": self.prompt_position,
                "generator": self.generator.get_state(), "rollout": self.rollout, "order": self.order,
                "cursor": self.cursor, "stats": dict(self.stats), "num_prompts": len(self.obj.train_prompts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_prompts") != len(self.obj.train_prompts):
            raise TrainError(f"the checkpoint's run sampled from {state.get('num_prompts')} prompts, this run has "
                             f"{len(self.obj.train_prompts)}; resume with the same prompts file and options")
        self.iteration = int(state["iteration"])
        self.prompt_position = int(state["prompt_position"])
        self.generator.set_state(state["generator"])
        self.rollout, self.order, self.cursor = state["rollout"], state["order"], int(state["cursor"])
        self.stats = dict(state["stats"])

    def close(self) -> None:
        pass


class PPOObjective(Objective):
    kind = "ppo"
    evaluate_at_start = True

    def __init__(self, policy_checkpoint: str | Path, cfg: PPOConfig = PPOConfig(),
                 reward_checkpoint: str | Path | None = None, prompts_path: str | Path | None = None,
                 tokenizer_path: str | Path | None = None, val_fraction: float = 0.1,
                 reward_fn: RewardFn | None = None, prompt_ids: tuple[list[list[int]], list[list[int]]] | None = None,
                 template: PromptTemplate | None = None):
        if (reward_checkpoint is None) == (reward_fn is None):
            raise TrainConfigError("--reward-model", "give a reward model checkpoint (or, in code, a reward_fn)")
        if reward_fn is not None and cfg.value_init == "reward":
            raise TrainConfigError("--value-init", "without a reward model the value model starts from the policy: "
                                   "use value_init='policy'")
        if (prompts_path is None) == (prompt_ids is None):
            raise TrainConfigError("--prompts", "give a prompts file")
        self.policy_checkpoint = policy_checkpoint
        self.cfg = cfg
        self.reward_checkpoint = reward_checkpoint
        self.prompts_path = prompts_path
        self.tokenizer_path = tokenizer_path
        self.val_fraction = val_fraction
        self.reward_fn = reward_fn
        self.prompt_ids = prompt_ids
        self.template_override = template
        self.tokenizer = None
        self.last_samples: list[tuple[list[int], list[int], float]] = []

    # ---- setup ----------------------------------------------------------------------------------

    def setup(self, info: LoopInfo) -> None:
        super().setup(info)
        self.payload, self.policy_path = load_policy_checkpoint(self.policy_checkpoint)
        self.data = data_info(self.payload, self.policy_path)
        self.eot_id = self.data["eot_id"]
        self.template = self.template_override or template_from_checkpoint(self.payload)
        self.rm_payload = None
        if self.reward_checkpoint is not None:
            self.scorer = RewardScorer(self.reward_checkpoint, info.device, info.bf16, "--reward-model")
            check_same_tokenizer(self.payload, self.policy_path, self.scorer.payload, self.scorer.path)
            self.reward_fn = self.scorer.score
            if self.cfg.value_init == "reward":
                self.rm_payload = load_checkpoint(self.scorer.path)
                if self.rm_payload["model_config"]["max_seq_len"] < self.payload["model_config"]["max_seq_len"]:
                    raise TrainConfigError("--value-init", "the reward model's context is shorter than the "
                                           "policy's: start the value model from the policy (--value-init policy)")
        context = self.payload["model_config"]["max_seq_len"]
        if self.cfg.max_new_tokens >= context:
            raise TrainConfigError("--max-new-tokens", f"must be below the model's context of {context} tokens")
        if self.tokenizer_path is not None:
            self.tokenizer = open_tokenizer(self.tokenizer_path, self.payload)
        if self.prompt_ids is not None:
            self.train_prompts, self.val_prompts = self.prompt_ids
        else:
            if self.tokenizer is None:
                raise TrainConfigError("--tokenizer", "reading a prompts file needs the tokenizer")
            self.train_prompts, self.val_prompts, stats = load_prompt_ids(
                self.prompts_path, self.tokenizer, self.template, self.eot_id, context - self.cfg.max_new_tokens,
                self.val_fraction)
            if info.ctx.is_main:
                log.info("prompts %s: %s; %d train, %d validation", self.prompts_path, stats.summary(),
                         len(self.train_prompts), len(self.val_prompts))
        self.val_prompts = self.val_prompts[:self.cfg.val_prompts]
        self.reference = gpt_from_payload(self.payload, info.device)

    def score(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        return self.reward_fn(prompts, responses)

    def vocab_size(self) -> int:
        return self.data["vocab_size"]

    def data_info(self) -> dict[str, Any]:
        return {**self.data, "prompts": str(self.prompts_path)}

    def model_config(self, preset_config: GPTConfig) -> GPTConfig:
        return GPTConfig.from_dict(self.payload["model_config"])

    def seq_len(self, config: GPTConfig) -> int:
        return config.max_seq_len

    def micro_steps(self, global_batch_tokens: int, seq_len: int) -> int:
        if self.cfg.minibatch % self.info.micro_batch_size:
            raise TrainConfigError("--micro-batch", f"must divide --minibatch {self.cfg.minibatch}, got "
                                   f"{self.info.micro_batch_size}")
        return self.cfg.minibatch // self.info.micro_batch_size

    def build_model(self, config: GPTConfig) -> nn.Module:
        value_config = GPTConfig.from_dict(self.rm_payload["model_config"]) if self.rm_payload else config
        return PolicyWithValue(config, value_config)

    def init_weights(self, model: PolicyWithValue) -> None:
        load_model_state(model.policy, self.payload["model"])
        if self.rm_payload is not None:
            load_model_state(model.value, join_reward_state(self.rm_payload["model"], self.rm_payload["reward_head"]))
        else:
            load_model_state(model.value.gpt, self.payload["model"])
            nn.init.zeros_(model.value.score.weight)
            nn.init.zeros_(model.value.score.bias)

    def make_loader(self, model, seq_len: int) -> RolloutLoader:
        if self.sharded:
            raise TrainConfigError("--parallelism", "PPO samples from the whole policy on each rank: use ddp")
        self.payload = {k: v for k, v in self.payload.items() if k not in ("model", "optimizer")}
        self.rm_payload = None
        self.model = model
        return RolloutLoader(self, model)

    def checkpoint_model_state(self, state):
        return {"model": {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")},
                "value_model": {k[len("value."):]: v for k, v in state.items() if k.startswith("value.")}}

    def resume_model_state(self, payload):
        return {**{f"policy.{k}": v for k, v in payload["model"].items()},
                **{f"value.{k}": v for k, v in payload["value_model"].items()}}

    def check_resume(self, payload, path) -> None:
        saved = payload.get("ppo", {}).get("config")
        if saved is not None and saved != asdict(self.cfg):
            diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {v!r}" for k, v in asdict(self.cfg).items()
                     if saved.get(k) != v]
            raise TrainConfigError("PPO options", f"{path} was made with other settings ({'; '.join(diffs)}); "
                                   f"resume with the same options or start a new --run")

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"template": self.template.to_dict(), "init_checkpoint": str(self.policy_path),
                "reward_checkpoint": str(self.reward_checkpoint) if self.reward_checkpoint else None,
                "ppo": {"config": asdict(self.cfg)}}

    # ---- the step -------------------------------------------------------------------------------

    def loss(self, model, batch):
        device, cfg = self.info.device, self.cfg
        idx, targets = batch["idx"].to(device), batch["targets"].to(device)
        mask = (targets >= 0).float()
        logits, values = model(idx, targets)
        logprobs = token_logprobs(logits, targets)
        pg_loss, clip_frac, approx_kl = ppo_policy_loss(logprobs, batch["logprobs"].to(device),
                                                        batch["advantages"].to(device), mask, cfg.clip)
        vf_loss, vf_clip_frac = ppo_value_loss(values.float(), batch["values"].to(device),
                                               batch["returns"].to(device), mask, cfg.value_clip)
        with torch.no_grad():
            ent = masked_mean(entropy(logits), mask)
        extras = {"policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), "clip_frac": clip_frac,
                  "value_clip_frac": vf_clip_frac, "approx_kl": approx_kl, "entropy": ent}
        extras.update({k: torch.tensor(v, device=device) for k, v in batch["stats"].items()})
        return pg_loss + cfg.vf_coef * vf_loss, extras

    def batch_tokens(self, batch) -> int:
        return int(batch["idx"].numel())

    # ---- evaluation and samples -----------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Answer the held-out prompts (fixed seed): mean score, KL to the reference, length.

        val_loss is the negated objective, −(score − kl_coef · KL): lower is better, like every val_loss."""
        module = _unwrap(model)
        info, cfg = self.info, self.cfg
        prompts = self.val_prompts[info.ctx.rank::info.ctx.world_size] or self.train_prompts[:1]
        generator = torch.Generator(device=info.device)
        generator.manual_seed(info.seed + 17)
        responses = generate_responses(module.policy, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                       generator, self.eot_id, info.device, info.bf16, cfg.use_cache)
        scores = self.score(prompts, responses).float().cpu()
        ended = torch.tensor([r[-1] == self.eot_id for r in responses])
        scores = scores - cfg.no_eot_penalty * (~ended).float()
        kl = sequence_kl(module.policy, self.reference, prompts, responses, self.eot_id, info.device, info.bf16)
        sums = {"score": scores.sum().item(), "kl": kl.sum().item(), "len": float(sum(len(r) for r in responses)),
                "no_eot": (~ended).sum().item(), "n": float(len(prompts))}
        keys = list(sums)
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=info.device)
        from train.distributed import all_reduce_sum
        all_reduce_sum(t, info.ctx)
        s = dict(zip(keys, t.tolist()))
        n = max(s["n"], 1)
        return {"val_loss": -(s["score"] - cfg.kl_coef * s["kl"]) / n, "val_reward": s["score"] / n,
                "val_kl": s["kl"] / n, "val_response_len": s["len"] / n, "val_no_eot_share": s["no_eot"] / n}

    def _decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i != self.eot_id]
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))

    def sample(self, model, step: int) -> str | None:
        if not self.last_samples:
            return None
        parts = []
        for prompt, response, score in self.last_samples:
            parts.append(f"[score {score:.3f}] ...{self._decode(prompt)[-60:]!r} -> {self._decode(response)!r}")
        return "\n".join(parts)


@torch.no_grad()
def sequence_kl(policy: GPT, reference: GPT, prompts: list[list[int]], responses: list[list[int]], eot_id: int,
                device: torch.device, bf16: bool = False, batch_size: int = 8) -> torch.Tensor:
    """Sum over response tokens of log π − log π_ref, per sequence (N,): the KL estimate PPO pays."""
    out = []
    was_training = policy.training
    policy.eval()
    for start in range(0, len(prompts), batch_size):
        batch = collate_sequences(prompts[start:start + batch_size], responses[start:start + batch_size], eot_id)
        idx, targets = batch.idx.to(device), batch.targets.to(device)
        with autocast_context(device, bf16):
            lp = token_logprobs(policy(idx, targets)[0], targets)
            ref = token_logprobs(reference(idx, targets)[0], targets)
        out.append((lp - ref).sum(-1).cpu())
    policy.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)
