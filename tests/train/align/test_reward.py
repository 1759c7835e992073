"""The reward model: Bradley–Terry training lifts validation pair accuracy; its checkpoint scores texts
and pair files; a policy given as a reward model is refused."""

from __future__ import annotations

import pytest
import torch

from align_fixtures import make_config, val_records, write_byte_tokenizer, write_pairs, write_policy_checkpoint
from train import train
from train.align.common import CheckpointKindError
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.align.reward import RewardObjective, evaluate_reward_pairs, reward_model_from_checkpoint, score_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    tok = write_byte_tokenizer(root / "tokenizer.json")
    policy = write_policy_checkpoint(root / "sft.pt", tok)
    pairs = write_pairs(root / "pairs.json", 40)
    objective = RewardObjective(policy, pairs, tok, val_fraction=0.25, batch_pairs=8, center_coef=0.01)
    result = train(make_config(root / "run", 15, eval_every=15), objective=objective)
    return {"root": root, "tok": tok, "policy": policy, "pairs": pairs, "result": result}


def test_training_lifts_validation_accuracy_and_margin(trained):
    before, after = val_records(trained["root"] / "run")
    assert before["step"] == 0 and after["step"] == 15
    assert after["val_accuracy"] == 1.0 and after["val_accuracy"] > before["val_accuracy"]
    assert after["val_margin"] > before["val_margin"] and after["val_loss"] < before["val_loss"]


def test_checkpoint_holds_a_plain_trunk_and_the_head(trained):
    payload = load_checkpoint(trained["result"].checkpoint)
    assert payload["kind"] == "reward" and set(payload["reward_head"]) == {"weight", "bias"}
    model_from_checkpoint(payload)  # the trunk alone is a plain GPT state dict
    rm = reward_model_from_checkpoint(payload)
    assert torch.equal(rm.score.weight, payload["reward_head"]["weight"])


def test_reward_eval_on_the_validation_split_matches_the_training_figures(trained):
    after = val_records(trained["root"] / "run")[-1]
    ev = evaluate_reward_pairs(trained["root"] / "run", trained["pairs"], trained["tok"], torch.device("cpu"),
                               split="val", val_fraction=0.25)
    assert ev.pairs == after["val_pairs"]
    assert ev.accuracy == pytest.approx(after["val_accuracy"]) and ev.margin == pytest.approx(after["val_margin"], abs=1e-4)


def test_score_texts_prefers_the_polite_answer(trained):
    scores = score_texts(trained["root"] / "run", [("What is 3 plus 3?", "", "Thank you! It is 6."),
                                                   ("What is 3 plus 3?", "", "Ugh. 6, obviously.")],
                         trained["tok"], torch.device("cpu"))
    assert scores[0] > scores[1]


def test_a_policy_given_as_the_reward_model_is_refused(trained):
    with pytest.raises(CheckpointKindError, match="is a sft checkpoint, not a reward model"):
        evaluate_reward_pairs(trained["policy"], trained["pairs"], trained["tok"], torch.device("cpu"))


def test_a_reward_model_given_as_the_initial_policy_is_refused(trained, tmp_path):
    objective = RewardObjective(trained["result"].checkpoint, trained["pairs"], trained["tok"])
    with pytest.raises(CheckpointKindError, match="is a reward model"):
        train(make_config(tmp_path / "run", 1), objective=objective)


def test_resumed_reward_run_equals_the_uninterrupted_run(trained, tmp_path):
    def objective():
        return RewardObjective(trained["policy"], trained["pairs"], trained["tok"], val_fraction=0.25, batch_pairs=8)

    straight = train(make_config(tmp_path / "a", 4), objective=objective())
    train(make_config(tmp_path / "b", 2), objective=objective())
    resumed = train(make_config(tmp_path / "b", 4, resume=True), objective=objective())
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["reward_head"]["weight"], b["reward_head"]["weight"])
