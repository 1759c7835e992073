"""The reward model's verdict: guessing when its validation accuracy is within noise of chance (a 95 %
Wilson interval containing 0.5) or its margin is tiny; stored in its checkpoints; PPO warns on it."""

from __future__ import annotations

import logging

import pytest

from align_fixtures import make_config, val_records, write_byte_tokenizer, write_pairs, write_policy_checkpoint
from align_fixtures import write_reward_checkpoint
from train import train
from train.checkpoint import load_checkpoint, save_checkpoint
from train.align.ppo import PPOConfig, PPOObjective
from train.align.reward import RewardObjective
from train.align.reward_verdict import judge_reward_model, wilson_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_wilson_interval_has_its_known_values():
    assert wilson_interval(61, 100) == pytest.approx((0.51203, 0.69983), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 0) == (0.0, 1.0)


def test_the_wilson_interval_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((7, 9), (45, 50), (500, 1000), (1, 3)):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


@pytest.mark.parametrize("accuracy, margin, pairs, guessing, why", [
    (0.61, 0.007, 100, True, "margin is tiny"),          # the reward model: sure of nothing
    (0.61, 0.5, 100, False, "better than chance"),       # interval 0.512-0.700: above chance
    (0.60, 1.0, 20, True, "within noise of chance"),     # 12 of 20: interval 0.387-0.781
    (0.49, 0.3, 500, True, "within noise of chance"),    # the other formats
    (1.0, 2.0, 0, True, "no validation pair"),
])
def test_the_verdict(accuracy, margin, pairs, guessing, why):
    verdict = judge_reward_model(accuracy, margin, pairs)
    assert verdict.guessing is guessing and why in verdict.reason and "\n" not in verdict.reason


def test_reward_train_stores_the_verdict_and_ppo_warns_on_a_guessing_reward_model(tmp_path, caplog):
    tok = write_byte_tokenizer(tmp_path / "tokenizer.json")
    policy = write_policy_checkpoint(tmp_path / "sft.pt", tok)
    pairs = write_pairs(tmp_path / "pairs.json", 40)
    objective = RewardObjective(policy, pairs, tok, val_fraction=0.25, batch_pairs=8)
    result = train(make_config(tmp_path / "run", 1, lr=1e-6), objective=objective)  # barely trained
    verdict = load_checkpoint(result.checkpoint)["reward_verdict"]
    last = val_records(tmp_path / "run")[-1]
    assert verdict["pairs"] == last["val_pairs"] > 0 and verdict["accuracy"] == last["val_accuracy"]
    assert verdict["guessing"] and last["val_guessing"] == 1

    rm = write_reward_checkpoint(tmp_path / "rm.pt", tok)
    payload = load_checkpoint(rm)
    payload["reward_verdict"] = verdict
    save_checkpoint(rm, payload)
    ppo = PPOObjective(policy, PPOConfig(rollout_prompts=4, minibatch=4, epochs=1, max_new_tokens=8, val_prompts=2),
                       reward_checkpoint=rm, prompts_path=pairs, tokenizer_path=tok, val_fraction=0.25)
    with caplog.at_level(logging.WARNING, logger="train.align.ppo"):
        train(make_config(tmp_path / "ppo", 1), objective=ppo)
    assert any("the reward model is guessing" in r.getMessage() and str(rm) in r.getMessage() for r in caplog.records)
