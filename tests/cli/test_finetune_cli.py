"""`crawlgpt sft`, `evaluate --instructions`, `sample --instruction`, `chat`, `classify-train` and
`classify` end to end on a tiny tokenizer and base model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from finetune_base import FIXTURES, finetune_data  # noqa: F401 (a fixture)

pytest.importorskip("tokenizers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli() -> click.Group:
    from cli import main

    return main


@pytest.fixture(scope="module")
def data(finetune_data) -> Path:
    return finetune_data


def invoke(cli, *args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


SFT = ["sft", "--run", "base", "--device", "cpu", "--batch-rows", "8", "--micro-batch", "4", "--responses", "2",
       "--max-new-tokens", "8", "--lr", "2e-3"]


@pytest.fixture(scope="module")
def tuned(cli, data) -> Path:
    result = invoke(cli, *SFT, "--data", data, "--instructions", FIXTURES / "alpaca.json", "--epochs", "2")
    assert "response loss after" in result.output
    return data / "runs" / "base-sft"


def test_sft_writes_the_fine_tuned_run_and_a_summary(tuned):
    assert (tuned / "responses.jsonl").is_file() and (tuned / "loss.png").is_file()
    summary = json.loads((tuned / "sft-summary.json").read_text())
    assert summary["after"]["val_response_loss"] < summary["before"]["val_response_loss"]


def test_sft_into_a_finished_run_needs_resume(cli, data, tuned):
    result = CliRunner().invoke(cli, [*SFT, "--data", str(data), "--instructions", str(FIXTURES / "alpaca.json")])
    assert result.exit_code == 1 and "pass --resume" in result.output


def test_sft_on_a_classifier_or_missing_checkpoint_is_a_clear_message(cli, data, tmp_path):
    result = CliRunner().invoke(cli, [*SFT, "--data", str(data), "--checkpoint", str(tmp_path / "none.pt"),
                                      "--instructions", str(FIXTURES / "alpaca.json")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


def test_sft_with_a_malformed_file_names_the_line(cli, data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    result = CliRunner().invoke(cli, [*SFT, "--data", str(data), "--instructions", str(bad)])
    assert result.exit_code == 1 and "bad.jsonl:2" in result.output and 'no "output" field' in result.output


def test_evaluate_instructions_reports_the_response_loss(cli, data, tuned):
    result = invoke(cli, "evaluate", "--data", data, "--checkpoint", tuned, "--instructions",
                    FIXTURES / "alpaca.json", "--device", "cpu")
    assert "response loss" in result.output and "sft, template alpaca" in result.output
    base = invoke(cli, "evaluate", "--data", data, "--run", "base", "--instructions", FIXTURES / "chat.jsonl",
                  "--template", "chat", "--device", "cpu")
    assert "pretrain, template chat" in base.output


def test_sample_instruction_answers_with_the_template(cli, data, tuned):
    args = ["sample", "--data", data, "--checkpoint", tuned, "--instruction", "Repeat the words.",
            "--input", "cat dog", "--max-new-tokens", "6", "--device", "cpu", "--temperature", "0"]
    first = invoke(cli, *args)
    assert first.output == invoke(cli, *args).output
    base = CliRunner().invoke(cli, [*map(str, args[:3]), "--checkpoint", str(data / "runs" / "base"),
                                    *map(str, args[5:])])
    assert base.exit_code == 0 and "not instruction-tuned" in base.output


# --------------------------------------------------------------------------------------------------
# chat


def test_chat_answers_each_piped_line_and_handles_reset_and_exit(cli, data, tuned):
    result = CliRunner().invoke(cli, ["chat", "--data", str(data), "--run", "base", "--device", "cpu",
                                      "--max-new-tokens", "5", "--temperature", "0"],
                                input="Repeat cat dog.\n\n/reset\nRepeat cat dog.\n/exit\nnever answered\n")
    assert result.exit_code == 0, result.output
    answers = result.stdout.splitlines()
    assert len(answers) == 2 and answers[0] == answers[1]  # after /reset the same question, the same answer
    assert "conversation reset" in result.stderr


def test_chat_runs_as_a_script_on_piped_standard_input(data, tuned):
    proc = subprocess.run([sys.executable, "-m", "cli", "chat", "--data", str(data), "--run", "base",
                           "--device", "cpu", "--max-new-tokens", "4", "--seed", "1"],
                          input="Repeat bird.\nRepeat tree.\n", capture_output=True, text=True, cwd=REPO,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_chat_with_a_base_checkpoint_says_to_fine_tune_first(cli, data):
    result = CliRunner().invoke(cli, ["chat", "--data", str(data), "--checkpoint", str(data / "runs" / "base"),
                                      "--device", "cpu"], input="hi\n")
    assert result.exit_code == 1 and "crawlgpt sft" in result.output


# --------------------------------------------------------------------------------------------------
# classification


def test_classify_train_reports_and_classify_labels_each_line(cli, data, tmp_path):
    result = invoke(cli, "classify-train", "--data", data, "--run", "base", "--labelled", FIXTURES / "classes.tsv",
                    "--device", "cpu", "--steps", "12", "--batch-size", "8", "--seq-len", "32", "--lr", "3e-3",
                    "--test-share", "0.25")
    assert "fine-tuned GPT, test split" in result.output and "fastText baseline" in result.output
    run = data / "runs" / "base-classify"
    texts = tmp_path / "texts.txt"
    texts.write_text("red blue\n\ncat dog bird\n")
    out = invoke(cli, "classify", "--data", data, "--checkpoint", run, texts, "--device", "cpu").output
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[2] for r in rows] == ["red blue", "cat dog bird"] and all(r[0] in ("color", "word") for r in rows)
    piped = CliRunner().invoke(cli, ["classify", "--data", str(data), "--checkpoint", str(run), "-",
                                     "--device", "cpu"], input="red blue\n")
    assert piped.exit_code == 0 and piped.output.split("\t")[2].strip() == "red blue"


def test_classify_with_a_base_checkpoint_says_how_to_train_a_classifier(cli, data, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    result = CliRunner().invoke(cli, ["classify", "--data", str(data), "--checkpoint", str(data / "runs" / "base"),
                                      str(texts)])
    assert result.exit_code == 1 and "classify-train" in result.output


def test_classify_train_with_one_class_is_a_clear_message(cli, data, tmp_path):
    one = tmp_path / "one.tsv"
    one.write_text("label\ttext\nham\thello\nham\tbye\n")
    result = CliRunner().invoke(cli, ["classify-train", "--data", str(data), "--run", "base", "--labelled", str(one),
                                      "--device", "cpu"])
    assert result.exit_code == 1 and "at least two" in result.output and "Traceback" not in result.output


def test_every_fine_tuning_option_has_help_text(cli):
    for name in ("sft", "chat", "classify-train", "classify"):
        for param in cli.commands[name].params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"
