"""A classifier or a reward model is not a language model: `export`, `benchmark`, `evaluate` and
`sample` refuse it with one line (a reward model used to export silently without its head), and a
Hugging Face folder whose tokenizer outgrows the model's vocabulary is refused before scoring."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from align_fixtures import write_byte_tokenizer, write_policy_checkpoint, write_reward_checkpoint
from cli import main
from train.errors import CheckpointKindError
from train.evaluate import load_for_inference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    tok = write_byte_tokenizer(root / "tokenizer.json")
    return {"tokenizer": tok,
            "reward": write_reward_checkpoint(root / "reward.pt", tok),
            "classify": write_policy_checkpoint(root / "classify.pt", tok, kind="classify"),
            "sft": write_policy_checkpoint(root / "sft.pt", tok, kind="sft")}


@pytest.mark.parametrize("kind, hint", [("reward", "reward-score"), ("classify", "crawlgpt classify")])
def test_a_head_checkpoint_is_not_loaded_as_a_language_model(files, kind, hint):
    with pytest.raises(CheckpointKindError, match=f"is a '{kind}' checkpoint, not a language model.*{hint}"):
        load_for_inference(files[kind], torch.device("cpu"))


@pytest.mark.parametrize("kind", ["reward", "classify"])
@pytest.mark.parametrize("command", [["export", "--out", "{tmp}/hf"], ["benchmark", "--tasks", "piqa", "--limit", "1"],
                                     ["sample", "--max-new-tokens", "2"]])
def test_export_benchmark_and_sample_refuse_a_head_checkpoint_in_one_line(files, tmp_path, kind, command):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    result = CliRunner().invoke(main, [*args, "--checkpoint", str(files[kind]), "--tokenizer", str(files["tokenizer"])])
    assert result.exit_code == 1, result.output
    assert "not a language model" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "hf").exists()


def test_a_hf_folder_whose_tokenizer_has_more_ids_than_the_model_is_refused(files, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(files["sft"]), "--tokenizer",
                                       str(files["tokenizer"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    tokenizer.add_tokens([f"extra{i}" for i in range(200)])  # 257 + 200 ids for 320 embedding rows
    tokenizer.save_pretrained(out)
    result = CliRunner().invoke(main, ["benchmark", "--model", str(out), "--tasks", "piqa", "--limit", "1"])
    assert result.exit_code == 1 and "embedding rows" in result.output and "IndexError" not in result.output, \
        result.output


def test_benchmark_progress_off_a_terminal_is_lines_per_tenth_not_carriage_returns(files):
    result = CliRunner().invoke(main, ["benchmark", "--checkpoint", str(files["sft"]), "--tokenizer",
                                       str(files["tokenizer"]), "--tasks", "piqa", "--limit", "8", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("piqa: ")]
    assert lines and lines[-1].startswith("piqa: 10/10 tenths, 16 requests"), result.stderr
