"""PPO on the one loop: it raises a synthetic reward with a finite KL, resumes exactly (mid-iteration,
sampling RNG included), writes a plain-GPT policy, and refuses mismatched models."""

from __future__ import annotations

import math

import pytest
import torch

from align_fixtures import (
    make_config,
    val_records,
    write_byte_tokenizer,
    write_pairs,
    write_policy_checkpoint,
    write_reward_checkpoint,
)
from train import TrainConfigError, VocabMismatchError, train
from train.align.common import CheckpointKindError, gpt_from_payload
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.metrics import read_metrics
from train.align.ppo import PPOConfig, PPOObjective, generate_responses

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOW_TOKENS = 32  # the synthetic reward counts response tokens with ids below this (10% of the vocabulary)


def count_low_tokens(prompts, responses) -> torch.Tensor:
    return torch.tensor([float(sum(t < LOW_TOKENS for t in r)) for r in responses])


def synthetic_prompts(n: int = 40, length: int = 8) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (length,), generator=g).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return write_policy_checkpoint(tmp_path_factory.mktemp("ppo") / "sft.pt", None, max_seq_len=64)


def synthetic_objective(policy, **changes) -> PPOObjective:
    cfg = PPOConfig(**{**dict(rollout_prompts=16, minibatch=8, epochs=2, max_new_tokens=16, value_init="policy",
                              no_eot_penalty=0.0, val_prompts=8), **changes})
    prompts = synthetic_prompts()
    return PPOObjective(policy, cfg, reward_fn=count_low_tokens, prompt_ids=(prompts[:32], prompts[32:]))


def test_ppo_raises_a_synthetic_reward_with_a_finite_kl(policy, tmp_path):
    objective = synthetic_objective(policy)
    steps = 20 * objective.cfg.steps_per_iteration
    train(make_config(tmp_path / "run", steps, lr=1e-3, micro=8, eval_every=steps), objective=objective)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    per_iteration = {int(r["iteration"]): r for r in records}
    first = sum(per_iteration[i]["score"] for i in (1, 2, 3)) / 3
    last = sum(per_iteration[i]["score"] for i in (18, 19, 20)) / 3
    assert last > 2 * first, (first, last)
    assert all(math.isfinite(r["kl"]) and r["kl"] < 20 for r in records)
    before, after = val_records(tmp_path / "run")
    assert after["val_reward"] > before["val_reward"] and math.isfinite(after["val_kl"])
    for key in ("entropy", "clip_frac", "value_loss", "approx_kl", "response_len", "gen_tokens_per_s",
                "train_tokens_per_s", "policy_loss"):
        assert key in records[-1]


def test_resume_mid_iteration_equals_the_uninterrupted_run(policy, tmp_path):
    # 4 steps per iteration: stopping after 3 leaves a rollout half used, which the checkpoint must hold.
    straight = train(make_config(tmp_path / "a", 6, lr=1e-3, micro=8), objective=synthetic_objective(policy))
    train(make_config(tmp_path / "b", 3, lr=1e-3, micro=8), objective=synthetic_objective(policy))
    resumed = train(make_config(tmp_path / "b", 6, lr=1e-3, micro=8, resume=True), objective=synthetic_objective(policy))
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for part in ("model", "value_model"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert torch.equal(a["loader"]["generator"], b["loader"]["generator"])


def test_kv_cache_and_full_recompute_sample_the_same_responses(policy):
    model = gpt_from_payload(load_checkpoint(policy), torch.device("cpu"))
    prompts = synthetic_prompts(6, 8) + synthetic_prompts(2, 5)
    out = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(3)
        out.append(generate_responses(model, prompts, 12, 0.7, None, g, 256, torch.device("cpu"), use_cache=use_cache))
    assert out[0] == out[1] and all(len(r) == 12 for r in out[0])


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_text")
    tok = write_byte_tokenizer(root / "tokenizer.json")
    return {"tok": tok, "policy": write_policy_checkpoint(root / "sft.pt", tok),
            "reward": write_reward_checkpoint(root / "rm.pt", tok), "pairs": write_pairs(root / "pairs.jsonl", 20, "chat")}


def text_objective(files, policy=None, reward=None, **changes) -> PPOObjective:
    cfg = PPOConfig(**{**dict(rollout_prompts=4, minibatch=4, epochs=1, max_new_tokens=8, val_prompts=2), **changes})
    return PPOObjective(policy or files["policy"], cfg, reward_checkpoint=reward or files["reward"],
                        prompts_path=files["pairs"], tokenizer_path=files["tok"], val_fraction=0.25)


def test_ppo_with_a_reward_model_writes_a_plain_gpt_policy(text_files, tmp_path):
    result = train(make_config(tmp_path / "run", 2, lr=1e-4, sample_every=2), objective=text_objective(text_files))
    payload = load_checkpoint(result.checkpoint)
    assert payload["kind"] == "ppo" and payload["template"]["name"] == "alpaca"
    assert payload["ppo"]["config"]["kl_coef"] == 0.05 and "value_model" in payload
    model_from_checkpoint(payload)  # sample, evaluate and export read the policy like any GPT
    rm = load_checkpoint(text_files["reward"])
    # before training the value head was the reward model's: it moved, but from there (same shape)
    assert payload["value_model"]["score.weight"].shape == rm["reward_head"]["weight"].shape
    samples = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "sample"]
    assert samples and "### Response" in samples[-1]["text"]


def test_a_reward_model_as_policy_and_a_policy_as_reward_model_are_refused(text_files, tmp_path):
    with pytest.raises(CheckpointKindError, match="is a reward model.*not a policy"):
        train(make_config(tmp_path / "a", 1), objective=text_objective(text_files, policy=text_files["reward"]))
    with pytest.raises(CheckpointKindError, match="is a sft checkpoint, not a reward model.*--reward-model"):
        train(make_config(tmp_path / "b", 1), objective=text_objective(text_files, reward=text_files["policy"]))


def test_a_reward_model_of_another_tokenizer_is_refused(text_files, tmp_path):
    other = write_reward_checkpoint(tmp_path / "rm-other.pt", None)
    with pytest.raises(VocabMismatchError, match="use different tokenizers"):
        train(make_config(tmp_path / "run", 1), objective=text_objective(text_files, reward=other))


def test_prompts_longer_than_the_context_are_skipped_and_none_left_is_an_error(text_files, tmp_path):
    with pytest.raises(TrainConfigError, match="max-new-tokens"):
        train(make_config(tmp_path / "a", 1), objective=text_objective(text_files, max_new_tokens=256))
    from train.align.preference import PreferenceDataError
    with pytest.raises(PreferenceDataError, match="no training prompt fits.*prompt_too_long"):
        train(make_config(tmp_path / "b", 1), objective=text_objective(text_files, max_new_tokens=200))


def test_ppo_options_are_checked():
    with pytest.raises(TrainConfigError, match="--minibatch"):
        PPOConfig(rollout_prompts=6, epochs=1, minibatch=4)
    with pytest.raises(TrainConfigError, match="--value-init"):
        PPOConfig(value_init="random")


def test_the_value_model_starts_as_the_reward_model_or_as_the_policy_with_a_zero_head(text_files):
    from train.distributed import DistContext
    from train.objective import LoopInfo

    info = LoopInfo(ctx=DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")),
                    device=torch.device("cpu"), bf16=False, seed=0, micro_batch_size=4, seq_len=None,
                    prefetch_batches=0, eval_max_tokens=None, verify_checksums=False)
    rm, policy = load_checkpoint(text_files["reward"]), load_checkpoint(text_files["policy"])
    for value_init in ("reward", "policy"):
        objective = text_objective(text_files, value_init=value_init)
        objective.setup(info)
        model = objective.build_model(objective.model_config(None))
        objective.init_weights(model)
        if value_init == "reward":
            assert torch.equal(model.value.score.weight, rm["reward_head"]["weight"])
            assert torch.equal(model.value.gpt.tok_emb.weight, rm["model"]["tok_emb.weight"])
        else:
            assert not model.value.score.weight.any()
            assert torch.equal(model.value.gpt.tok_emb.weight, policy["model"]["tok_emb.weight"])
        assert torch.equal(model.policy.tok_emb.weight, policy["model"]["tok_emb.weight"])
