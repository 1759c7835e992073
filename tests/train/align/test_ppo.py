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
from train.align.ppo import sequence_kl

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


# ---- the distribution PPO samples from ------------------------------------------------------------


def test_the_log_probability_of_a_token_at_a_temperature_is_that_of_the_scaled_softmax():
    from train.align.functional import token_logprobs

    logits = torch.tensor([[[2.0, 1.0, 0.0]]])  # (B=1, T=1, V=3)
    target = torch.tensor([[1]])
    # at T = 0.5 the logits are 4, 2, 0: log p(1) = 2 - log(e^4 + e^2 + 1) = 2 - log(62.9872) = -2.14286
    assert token_logprobs(logits, target, temperature=0.5).item() == pytest.approx(-2.14286, abs=1e-4)
    # at T = 1: 1 - log(e^2 + e + 1) = 1 - log(11.1073) = -1.40761
    assert token_logprobs(logits, target).item() == pytest.approx(-1.40761, abs=1e-4)


@pytest.fixture(scope="module")
def peaked_policy(tmp_path_factory):
    """A policy whose next-token distributions are far from uniform, so temperature 0.7 differs from 1."""
    path = write_policy_checkpoint(tmp_path_factory.mktemp("ppo_peaked") / "sft.pt", None, max_seq_len=64)
    payload = load_checkpoint(path)
    for name in ("tok_emb.weight", "head.weight"):  # tied: the same weights under both names
        payload["model"][name] = payload["model"][name] * 5  # sharper logits: entropy 2.9 nats at T = 1, 0.6 at 0.7
    from train.checkpoint import save_checkpoint
    save_checkpoint(path, payload)
    return path


def exact_kl_along(policy, reference, ids: list[int], prompt_len: int, temperature: float) -> float:
    """Sum over the answer's positions of KL(π_T ‖ π_ref,T) of the next-token distributions (whole vocabulary)."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(policy(idx, idx)[0][0, prompt_len - 1:-1].float() / temperature, -1)
        logq = torch.log_softmax(reference(idx, idx)[0][0, prompt_len - 1:-1].float() / temperature, -1)
    return (logp.exp() * (logp - logq)).sum().item()


def exact_kl_per_token(policy: torch.nn.Module, reference: torch.nn.Module, prompts, temperature: float) -> float:
    """KL(π_T ‖ π_ref,T) summed over the whole vocabulary, averaged over the positions of the policy's
    own sampled answers: the true divergence, independent of the estimate PPO logs."""
    g = torch.Generator().manual_seed(5)
    responses = generate_responses(policy, prompts, 16, temperature, None, g, 256, torch.device("cpu"))
    total = sum(exact_kl_along(policy, reference, p + r, len(p), temperature) for p, r in zip(prompts, responses))
    return total / sum(len(r) for r in responses)


def test_ppo_with_a_constant_reward_stays_at_the_reference_at_temperature_0_7(peaked_policy, tmp_path):
    """Nothing to gain, so the policy must stay near where it started, and the KL PPO logs must be a KL.
    With log-probabilities taken at temperature 1 under samples drawn at 0.7, GAE's position-dependent
    advantages pushed the policy whatever the reward, and the logged "KL" fell to -1.07."""
    prompts = synthetic_prompts()
    objective = PPOObjective(peaked_policy, PPOConfig(rollout_prompts=16, minibatch=8, epochs=2, max_new_tokens=16,
                                                      value_init="policy", no_eot_penalty=0.0, val_prompts=8,
                                                      temperature=0.7),
                             reward_fn=lambda prompts, responses: torch.ones(len(responses)),
                             prompt_ids=(prompts[:32], prompts[32:]))
    result = train(make_config(tmp_path / "run", 8 * objective.cfg.steps_per_iteration, lr=1e-3, micro=8),
                   objective=objective)
    trained = model_from_checkpoint(load_checkpoint(result.checkpoint)).eval()
    reference = gpt_from_payload(load_checkpoint(peaked_policy), torch.device("cpu"))
    kl = exact_kl_per_token(trained, reference, [p[:8] for p in prompts[32:]], 0.7)
    assert kl < 0.05, kl
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert min(r["kl"] for r in records) > -0.3, [r["kl"] for r in records]  # a KL: not below 0 beyond noise


def test_the_kl_ppo_pays_estimates_the_kl_of_the_distributions_it_samples_at_temperature_0_7(peaked_policy, tmp_path):
    """Summed over a sampled answer, log π − log π_ref has the expectation of the exact per-position KL
    of the two temperature-0.7 distributions along it; at temperature 1 it estimated something else."""
    policy = gpt_from_payload(load_checkpoint(peaked_policy), torch.device("cpu"))
    other = write_policy_checkpoint(tmp_path / "other.pt", None, seed=3, max_seq_len=64)
    payload = load_checkpoint(other)
    for name in ("tok_emb.weight", "head.weight"):
        payload["model"][name] = payload["model"][name] * 5
    reference = model_from_checkpoint(payload).eval()
    prompts = [p[:8] for p in synthetic_prompts(64, 8)]
    g = torch.Generator().manual_seed(11)
    responses = generate_responses(policy, prompts, 16, 0.7, None, g, 256, torch.device("cpu"))
    estimate = sequence_kl(policy, reference, prompts, responses, 256, torch.device("cpu"), temperature=0.7)
    exact = torch.tensor([exact_kl_along(policy, reference, p + r, len(p), 0.7) for p, r in zip(prompts, responses)])
    assert exact.mean().item() > 0.5  # the two models differ: a KL worth estimating
    assert estimate.mean().item() == pytest.approx(exact.mean().item(), rel=0.15)


def test_top_k_is_refused_in_ppo_with_the_reason():
    with pytest.raises(TrainConfigError, match="--top-k.*reference"):
        PPOConfig(top_k=40)
