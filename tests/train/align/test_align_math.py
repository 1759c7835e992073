"""The arithmetic of alignment against values worked out by hand (see each test's comments)."""

from __future__ import annotations

import math

import pytest
import torch

from train.align.functional import (
    bradley_terry_loss,
    dpo_loss,
    gae,
    kl_penalised_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logprobs,
    whiten,
)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_gae_matches_the_hand_computed_recursion():
    # gamma 0.9, lambda 0.8. Row 0: t=2: delta = 2 - 0.2 = 1.8; t=1: delta = 0 + 0.9*0.2 - 1 = -0.82,
    # A = -0.82 + 0.72*1.8 = 0.476; t=0: delta = 1 + 0.9*1 - 0.5 = 1.4, A = 1.4 + 0.72*0.476 = 1.74272.
    # Row 1 has its response at positions 1-2 only (the 9s are prompt and must be ignored):
    # t=2: A = 3 - 0.5 = 2.5; t=1: delta = 1 + 0.45 - 0.5 = 0.95, A = 0.95 + 0.72*2.5 = 2.75.
    rewards = torch.tensor([[1.0, 0.0, 2.0], [9.0, 1.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 0.2], [9.0, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert close(adv, [[1.74272, 0.476, 1.8], [0.0, 2.75, 2.5]])
    assert close(ret, [[2.24272, 1.476, 2.0], [0.0, 3.25, 3.0]])


def test_gae_with_lambda_one_and_no_values_is_the_reward_to_go():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    assert close(adv, [[0.9, 0.8, 1.0, 0.0]])


def test_clipped_policy_loss_takes_the_pessimistic_term():
    # ratios 1.5, 0.5, 1.1 with advantages 1, 1, -1 and clip 0.2:
    # max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, max(1.1, 1.1) = 1.1 -> mean -0.2.
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    loss, clip_frac, approx_kl = ppo_policy_loss(new, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -1.0]]),
                                                 torch.ones(1, 3), clip=0.2)
    assert close(loss, -0.2)
    assert close(clip_frac, 1 / 3)
    assert close(approx_kl, 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3)


def test_clipped_value_loss_takes_the_larger_error():
    # values 1.0, 0.0 from old 0.5, 0.5, clip 0.2 -> clipped 0.7, 0.3; returns 2.0, 0.0:
    # max(1, 1.69) = 1.69, max(0, 0.09) = 0.09 -> 0.5 * mean = 0.445; both tokens clipped.
    loss, clip_frac = ppo_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]),
                                     torch.tensor([[2.0, 0.0]]), torch.ones(1, 2), clip=0.2)
    assert close(loss, 0.445)
    assert close(clip_frac, 1.0)


def test_padding_does_not_count_in_the_losses():
    mask = torch.tensor([[1.0, 0.0]])
    loss, _, _ = ppo_policy_loss(torch.tensor([[0.0, 5.0]]), torch.zeros(1, 2), torch.tensor([[2.0, 100.0]]), mask, 0.2)
    assert close(loss, -2.0)


def test_kl_penalty_on_every_token_and_the_score_on_the_last():
    # kl = [0.5, 0, 0] (the third token is padding); rewards = -0.1 * kl, plus the score 2 on token 1.
    rewards, kl = kl_penalised_rewards(torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -2.0, -2.0]]),
                                       torch.tensor([2.0]), torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.1)
    assert close(kl, [[0.5, 0.0, 0.0]])
    assert close(rewards, [[-0.05, 2.0, 0.0]])
    # A response after a prompt (mask 0 first): the score lands on its last token.
    rewards, _ = kl_penalised_rewards(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([1.0]),
                                      torch.tensor([[0.0, 1.0, 1.0]]), kl_coef=0.1)
    assert close(rewards, [[0.0, 0.0, 1.0]])


def test_whitening_gives_zero_mean_unit_variance_over_the_mask():
    out = whiten(torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]))
    assert close(out, [[-1.161895, -0.387298, 0.387298, 1.161895, 0.0]])


def test_dpo_loss_is_the_formula_on_given_log_probabilities():
    # pair 1: beta 0.1, rewards 0.1 and -0.1 -> -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598139
    loss, chosen, rejected = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                                      torch.tensor([-11.0]), beta=0.1)
    assert close(loss, 0.598139)
    assert close(chosen, [0.1]) and close(rejected, [-0.1])
    # pair 2 (beta 0.5): rewards 0 and 0.5 -> log(1 + e^0.5) = 0.974077; the batch loss is the mean
    loss, _, _ = dpo_loss(torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0]), torch.tensor([-11.0, -5.0]),
                          torch.tensor([-11.0, -5.0]), beta=0.5)
    assert close(loss, (math.log1p(math.exp(-1.0)) + 0.974077) / 2)


def test_dpo_loss_of_an_untrained_policy_is_log_two():
    lp = torch.tensor([-3.0, -7.0])
    loss, chosen, rejected = dpo_loss(lp, lp + 1, lp, lp + 1, beta=0.1)
    assert close(loss, math.log(2))
    assert not (chosen > rejected).any()


def test_bradley_terry_loss_accuracy_margin_and_centring():
    # margins 1 and -1: (log(1 + e^-1) + log(1 + e)) / 2 = 0.813262; centring 0.01 * mean(3^2, 1^2) = 0.05
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, acc, margin = bradley_terry_loss(rc, rr)
    assert close(loss, 0.813262) and close(acc, 0.5) and close(margin, 0.0)
    loss, _, _ = bradley_terry_loss(rc, rr, center_coef=0.01)
    assert close(loss, 0.863262)


def test_sequence_logprobs_sum_and_mean_over_targeted_tokens():
    logits = torch.zeros(1, 3, 4)  # uniform: log p = -log 4 everywhere
    targets = torch.tensor([[-1, 2, 3]])
    assert close(sequence_logprobs(logits, targets), [-2 * math.log(4)])
    assert close(sequence_logprobs(logits, targets, average=True), [-math.log(4)])


@pytest.mark.parametrize("clip", [0.1, 0.2])
def test_policy_gradient_is_zero_once_the_ratio_leaves_the_clip_range(clip):
    new = torch.tensor([[math.log(1 + 2 * clip)]], requires_grad=True)
    loss, _, _ = ppo_policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip)
    loss.backward()
    assert new.grad.abs().item() == 0.0
