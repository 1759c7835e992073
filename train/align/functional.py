"""The arithmetic of alignment, as pure functions of tensors: each is checked against hand-computed values.

- Bradley–Terry reward loss (InstructGPT): −log σ(r_chosen − r_rejected), plus an optional centring term
  c · (r_chosen + r_rejected)² that keeps the rewards near zero (their offset is otherwise free).
- DPO loss (Rafailov et al. 2023): −log σ(β · ((log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)))).
- PPO (Schulman et al. 2017, as in InstructGPT and TRL's former PPOTrainer): GAE advantages, whitening,
  the clipped policy objective and the clipped value loss, entropy, approximate KL.

Masks are 1.0 on response tokens and 0.0 elsewhere; means over masked tensors are token means over the
whole batch (TRL's convention), so a long response weighs more than a short one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the masked entries (the mean is added back when shift_mean is False)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position: logits (B, T, V), targets (B, T) with -1 = none -> (B, T), 0 where none."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked * (targets >= 0)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) over each row's targeted positions of log p(target): (B,)."""
    per_token = token_logprobs(logits, targets)  # (B, T)
    total = per_token.sum(-1)
    if average:
        return total / (targets >= 0).sum(-1).clamp(min=1)
    return total


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax at each position: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------------------------
# Reward model and DPO


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       center_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, accuracy, mean margin) of pairwise rewards (B,) each. Ties count as wrong."""
    margin = r_chosen - r_rejected
    loss = -F.logsigmoid(margin).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss, (margin > 0).float().mean(), margin.mean()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, implicit rewards of chosen (B,), of rejected (B,)) from sequence log-probabilities (B,) each.

    The implicit reward of a response is β (log π(y) − log π_ref(y))."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


# ------------------------------------------------------------------------------------------------
# PPO


def kl_penalised_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −kl_coef · (log π − log π_ref), plus each row's score on its last response token.

    logprobs, ref_logprobs, mask (B, L), where a row's response tokens are one run of 1s in mask;
    scores (B,). Returns (rewards (B, L), per-token KL (B, L))."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    positions = torch.arange(mask.size(1), device=mask.device)
    last = (mask * positions).argmax(-1)  # (B,) each row's last response token (left aligned or not)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.size(0)), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (B, L) each; the value after the last token is 0.

    delta_t = r_t + γ V_{t+1} − V_t, A_t = delta_t + γλ A_{t+1}; returns = A + V. A row's response is
    one run of 1s in mask (after the prompt's 0s, before the padding's); everything outside it gets 0."""
    rewards, values = rewards * mask, values * mask
    L = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(L)):
        next_value = values[:, t + 1] if t + 1 < L else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clipped surrogate loss, clip fraction, approximate KL ½(log π − log π_old)²), token means."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
    return loss, clip_frac.detach(), approx_kl.detach()


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(clipped value loss ½ max((V − R)², (V_clipped − R)²), clip fraction), token means."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask).detach()
