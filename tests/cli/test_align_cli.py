"""`crawlgpt reward-train`, `ppo`, `dpo`, `reward-eval`, `reward-score`, `align-compare` end to end in the
DATA/runs/RUN-<stage> layout, and `crawlgpt sample` reading the aligned policies."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from align_fixtures import write_byte_tokenizer, write_pairs, write_policy_checkpoint
from cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    tok = write_byte_tokenizer(data / "tokenizer" / "tokenizer.json")
    write_policy_checkpoint(data / "runs" / "x-sft" / "checkpoints" / "step-00000010.pt", tok)
    write_pairs(data / "pairs.json", 24)
    return data


def test_reward_then_ppo_then_dpo_then_judge(data):
    common = ["--data", str(data), "--run", "x", "--val-fraction", "0.25"]
    out = run("reward-train", *common, "--pairs", str(data / "pairs.json"), "--steps", "3", "--lr", "1e-3")
    assert out.exit_code == 0, out.output
    assert "pair accuracy" in out.output and (data / "runs" / "x-reward" / "alignment.png").is_file()

    out = run("ppo", *common, "--prompts", str(data / "pairs.json"), "--iterations", "1", "--rollout-prompts", "4",
              "--minibatch", "2", "--epochs", "1", "--max-new-tokens", "8", "--val-prompts", "2", "--micro-batch", "2")
    assert out.exit_code == 0, out.output
    assert "reward-model score" in out.output and "KL to reference" in out.output
    records = [json.loads(line) for line in (data / "runs" / "x-ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [0, 2]

    out = run("dpo", *common, "--pairs", str(data / "pairs.json"), "--steps", "2", "--lr", "1e-3")
    assert out.exit_code == 0, out.output
    assert "implicit reward accuracy" in out.output

    out = run("reward-eval", "--data", str(data), "--run", "x", "--pairs", str(data / "pairs.json"))
    assert out.exit_code == 0 and "accuracy" in out.output and "24 (all)" in out.output

    out = run("reward-score", "--data", str(data), "--run", "x", "--prompt", "What is 1 plus 1?", "--response", "2")
    assert out.exit_code == 0 and '"reward":' in out.output
    answers = data / "answers.jsonl"
    answers.write_text('{"instruction": "Add:", "input": "1 + 1", "response": "2"}\n{"prompt": "Hi", "response": "Hello"}\n')
    out = run("reward-score", "--data", str(data), "--run", "x", "--input", str(answers))
    lines = [json.loads(line) for line in out.output.splitlines() if line.startswith("{")]
    assert out.exit_code == 0 and len(lines) == 2 and all(isinstance(r["reward"], float) for r in lines)
    answers.write_text('{"instruction": "Add:"}\n')
    out = run("reward-score", "--data", str(data), "--run", "x", "--input", str(answers))
    assert out.exit_code == 1 and "answers.jsonl:1: needs `instruction` (or `prompt`) and `response`" in out.output

    out = run("align-compare", "--data", str(data), "--run", "x", "--prompts", str(data / "pairs.json"),
              "--val-fraction", "0.25", "--num-prompts", "2", "--max-new-tokens", "4", "--show", "1")
    assert out.exit_code == 0, out.output
    assert "ppo x-ppo step 2" in out.output and "dpo x-dpo step 2" in out.output and "win rate" in out.output

    for stage in ("ppo", "dpo"):
        out = run("sample", "--data", str(data), "--checkpoint", str(data / "runs" / f"x-{stage}"), "--prompt", "Hi",
                  "--max-new-tokens", "3")
        assert out.exit_code == 0, out.output


def test_wrong_checkpoint_kinds_are_one_line_errors(data, tmp_path):
    pairs = str(data / "pairs.json")
    reward_run = data / "runs" / "x-reward"
    if not reward_run.is_dir():
        pytest.skip("needs the reward run of the test above")
    out = run("dpo", "--data", str(data), "--run", "y", "--policy", str(reward_run), "--pairs", pairs, "--steps", "1")
    assert out.exit_code == 1 and "is a reward model (kind reward), not a policy" in out.output
    assert "Traceback" not in out.output
    out = run("reward-eval", "--data", str(data), "--checkpoint", str(data / "runs" / "x-sft"), "--pairs", pairs)
    assert out.exit_code == 1 and "is a sft checkpoint, not a reward model" in out.output
    shutil.rmtree(data / "runs" / "y-dpo", ignore_errors=True)


@pytest.mark.parametrize("command", ["reward-train", "dpo", "ppo", "reward-eval", "align-compare"])
def test_a_run_name_that_is_not_one_folder_is_refused(data, command):
    out = run(command, "--data", str(data), "--run", "../escape", "--pairs" if command != "ppo" and
              command != "align-compare" else "--prompts", str(data / "pairs.json"))
    assert out.exit_code == 2 and "is not a plain folder name" in out.output
