"""DPO on the one loop: the implicit reward learns the preference, reference modes agree, resume is exact,
and the wrong checkpoint or tokenizer is refused with a clear message."""

from __future__ import annotations

import logging

import pytest
import torch

from align_fixtures import make_config, val_records, write_byte_tokenizer, write_pairs, write_policy_checkpoint
from train import VocabMismatchError, train
from train.align.common import CheckpointKindError
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.align.dpo import DPOObjective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tok = write_byte_tokenizer(root / "tokenizer.json")
    return {"tok": tok, "policy": write_policy_checkpoint(root / "sft.pt", tok),
            "pairs": write_pairs(root / "pairs.json", 40)}


def objective(files, **kw):
    return DPOObjective(files["policy"], files["pairs"], files["tok"], val_fraction=0.25, batch_pairs=8, **kw)


def test_dpo_raises_the_validation_accuracy_of_the_implicit_reward(files, tmp_path):
    result = train(make_config(tmp_path / "run", 12, eval_every=12), objective=objective(files))
    before, after = val_records(tmp_path / "run")
    assert before["step"] == 0 and before["val_reward_accuracy"] == 0.0  # policy == reference: every margin 0
    assert abs(before["val_loss"] - 0.6931) < 1e-3
    assert after["val_reward_accuracy"] >= 0.9 and after["val_reward_margin"] > 0
    assert after["val_loss"] < before["val_loss"]
    payload = load_checkpoint(result.checkpoint)
    assert payload["kind"] == "dpo" and payload["template"]["name"] == "alpaca"
    model_from_checkpoint(payload)  # a plain GPT: sample, evaluate and export read it


def test_precomputed_and_online_reference_give_the_same_training(files, tmp_path):
    a = train(make_config(tmp_path / "a", 2), objective=objective(files, reference="precompute"))
    b = train(make_config(tmp_path / "b", 2), objective=objective(files, reference="online"))
    assert a.train_losses[0][1] == pytest.approx(b.train_losses[0][1], abs=1e-5)
    wa, wb = load_checkpoint(a.checkpoint)["model"], load_checkpoint(b.checkpoint)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_averaged_log_probabilities_are_an_option(files, tmp_path):
    a = train(make_config(tmp_path / "a", 1), objective=objective(files))
    b = train(make_config(tmp_path / "b", 1), objective=objective(files, average_logprobs=True))
    assert a.train_losses[0][1] == pytest.approx(b.train_losses[0][1], abs=1e-6)  # both log 2 at the start
    assert load_checkpoint(b.checkpoint)["dpo"]["average_logprobs"] is True


def test_resumed_dpo_run_equals_the_uninterrupted_run(files, tmp_path):
    straight = train(make_config(tmp_path / "a", 4), objective=objective(files))
    train(make_config(tmp_path / "b", 2), objective=objective(files))
    resumed = train(make_config(tmp_path / "b", 4, resume=True), objective=objective(files))
    wa, wb = load_checkpoint(straight.checkpoint)["model"], load_checkpoint(resumed.checkpoint)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_reward_model_given_as_the_policy_is_refused(files, tmp_path):
    rm = write_policy_checkpoint(tmp_path / "rm.pt", files["tok"], kind="reward")
    obj = DPOObjective(rm, files["pairs"], files["tok"])
    with pytest.raises(CheckpointKindError, match="is a reward model.*not a policy"):
        train(make_config(tmp_path / "run", 1), objective=obj)


def test_a_tokenizer_other_than_the_policys_is_refused(files, tmp_path):
    other = write_policy_checkpoint(tmp_path / "other.pt", None)  # trained on another tokenizer
    with pytest.raises(VocabMismatchError, match="not the one the model was trained with"):
        train(make_config(tmp_path / "run", 1), objective=DPOObjective(other, files["pairs"], files["tok"]))


def test_a_pretrained_policy_works_with_a_warning(files, tmp_path, caplog):
    pre = write_policy_checkpoint(tmp_path / "pre.pt", files["tok"], kind="pretrain")
    with caplog.at_level(logging.WARNING):
        train(make_config(tmp_path / "run", 1), objective=DPOObjective(pre, files["pairs"], files["tok"]))
    assert "is a pretrained model, not an instruction-tuned one" in caplog.text


DDP_RUNNER = """
import json, os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
from align_fixtures import make_config
from train import train
from train.align.dpo import DPOObjective
files = json.load(open(sys.argv[1]))
result = train(make_config(sys.argv[2], 3, micro=2),
               objective=DPOObjective(files["policy"], files["pairs"], files["tok"], val_fraction=0.25, batch_pairs=4))
if int(os.environ["RANK"]) == 0:
    json.dump(result.train_losses, open(os.path.join(sys.argv[2], "losses.json"), "w"))
"""


@pytest.mark.slow
def test_dpo_under_ddp_follows_the_single_process_run(files, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tests = Path(__file__).resolve().parents[2]
    single = train(make_config(tmp_path / "one", 3, micro=2),
                   objective=DPOObjective(files["policy"], files["pairs"], files["tok"], val_fraction=0.25, batch_pairs=4))
    (tmp_path / "files.json").write_text(json.dumps({k: str(v) for k, v in files.items()}))
    (tmp_path / "runner.py").write_text(DDP_RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "runner.py"), str(tmp_path / "files.json"), str(tmp_path / "two"), str(tests)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    # 2 ranks x 2 pairs and 1 rank x 2 micro-batches of 2 pairs see the same 4 pairs per step
    assert [round(v, 4) for _, v in two] == pytest.approx([round(v, 4) for _, v in single.train_losses], abs=2e-4)
