"""`crawlgpt pretrain`, `evaluate` and `sample` end to end on a tiny tokenizer, shards and model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from cli import training
from formats.token_shards import write_token_shards

tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the cat dog sat on a mat and ran to house with big small red blue tree under over "
         "river stone bird sang song morning night").split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_text(rng: np.random.Generator, sentences: int) -> str:
    return " ".join(" ".join(rng.choice(WORDS, size=rng.integers(4, 10))).capitalize() + "."
                    for _ in range(sentences))


def train_tokenizer(path: Path, texts: list[str], vocab_size: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA with tokenizer/tokenizer.json and shards/ made with it, like `make shards` leaves them."""
    data = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    docs = [make_text(rng, int(rng.integers(2, 8))) for _ in range(400)]
    tok_path = train_tokenizer(data / "tokenizer" / "tokenizer.json", docs, vocab_size=320)
    tok = tokenizers.Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id("<|endoftext|>")
    encoded = [np.array(tok.encode(d).ids + [eot]) for d in docs]
    write_token_shards(data / "shards", {"train": encoded[:360], "val": encoded[360:]},
                       vocab_size=tok.get_vocab_size(), eot_id=eot,
                       tokenizer_hash=hashlib.sha256(tok_path.read_bytes()).hexdigest())
    (data / "held_out.txt").write_text(make_text(rng, 40), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def cli() -> click.Group:
    @click.group()
    def group() -> None:
        pass

    training.register(group)
    return group


PRETRAIN = ["pretrain", "--preset", "tiny", "--seq-len", "32", "--micro-batch", "4", "--device", "cpu",
            "--no-tensorboard", "--eval-tokens", "512", "--sample-tokens", "8"]


@pytest.fixture(scope="module")
def trained(cli, data) -> Path:
    result = CliRunner().invoke(cli, [*PRETRAIN, "--data", str(data), "--steps", "6", "--run", "cli"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return data / "runs" / "cli"


def test_pretrain_writes_metrics_plot_and_checkpoints_and_prints_a_summary(trained):
    assert (trained / "metrics.jsonl").is_file()
    assert (trained / "loss.png").is_file()
    assert (trained / "checkpoints" / "step-00000006.pt").is_file()
    kinds = {json.loads(line)["kind"] for line in (trained / "metrics.jsonl").read_text().splitlines()}
    assert kinds == {"train", "val", "sample"}


def test_pretrain_samples_are_decoded_text_when_the_tokenizer_exists(trained):
    samples = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "sample"]
    assert samples and all(s["text"].startswith("The") for s in samples)


def test_pretrain_refuses_to_overwrite_a_run_without_resume_and_continues_with_it(cli, data, trained):
    again = CliRunner().invoke(cli, [*PRETRAIN, "--data", str(data), "--steps", "8", "--run", "cli"])
    assert again.exit_code != 0
    assert "--resume" in again.output
    resumed = CliRunner().invoke(cli, [*PRETRAIN, "--data", str(data), "--steps", "8", "--run", "cli", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "8 of 8" in resumed.output
    assert (trained / "checkpoints" / "step-00000008.pt").is_file()


def test_evaluate_prints_loss_and_perplexity_of_the_validation_shards(cli, data, trained):
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--run", "cli", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "nats/token" in result.output


def test_evaluate_scores_a_text_file_with_the_tokenizer(cli, data, trained):
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--run", "cli", "--device", "cpu",
                                      "--text", str(data / "held_out.txt")])
    assert result.exit_code == 0, result.output
    ppl = float(result.output.split("perplexity")[1].split()[0])
    assert 1 < ppl < 320  # better than uniform over the vocabulary


def test_evaluate_with_another_tokenizer_names_the_mismatch(cli, data, trained, tmp_path):
    other = train_tokenizer(tmp_path / "other.json", ["completely different words here"] * 20, vocab_size=300)
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--run", "cli", "--device", "cpu",
                                      "--text", str(data / "held_out.txt"), "--tokenizer", str(other)])
    assert result.exit_code != 0
    assert "not the one the model was trained with" in result.output, result.output


def test_pretrain_with_a_tokenizer_other_than_the_shards_one_names_the_mismatch(cli, data, tmp_path):
    other = train_tokenizer(tmp_path / "other.json", ["completely different words here"] * 20, vocab_size=300)
    result = CliRunner().invoke(cli, [*PRETRAIN, "--data", str(data), "--steps", "2", "--run", "other-tok",
                                      "--tokenizer", str(other)])
    assert result.exit_code != 0
    assert "is not the one the shards" in result.output and "make shards" in result.output


def test_sample_continues_the_prompt_and_the_same_seed_repeats(cli, data, trained):
    args = ["sample", "--data", str(data), "--run", "cli", "--device", "cpu", "--prompt", "The cat",
            "--max-new-tokens", "12", "--seed", "3"]
    first = CliRunner().invoke(cli, args)
    second = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("The cat")
    assert first.output == second.output


def test_a_missing_checkpoint_is_a_clear_message(cli, data):
    result = CliRunner().invoke(cli, ["sample", "--data", str(data), "--run", "nothing-here"])
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_auto_options_pick_the_small_preset_and_a_ten_minute_run_on_cpu():
    r = training.resolve_auto("auto", "cpu", steps=0, tokens=0, batch_tokens=0, micro_batch=0, seq_len=0,
                              lr=None, compile_=None, eval_every=None, eval_tokens=0, log_every=0)
    assert (r.preset, r.steps, r.compile) == ("small", training.CPU_AUTO_STEPS, False)
    assert r.batch_tokens == training.CPU_MICRO_BATCH * 256
    by_tokens = training.resolve_auto("tiny", "cpu", steps=0, tokens=10_000, batch_tokens=1000, micro_batch=0,
                                      seq_len=0, lr=None, compile_=None, eval_every=None, eval_tokens=0, log_every=0)
    assert by_tokens.steps == 10


def test_the_cli_offers_exactly_the_models_presets():
    from model import PRESETS

    assert set(training.PRESET_NAMES) == set(PRESETS) == set(training.PRESET_LR)


def test_every_option_has_help_text(cli):
    for command in cli.commands.values():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{command.name} {param.opts} has no help"


@pytest.mark.parametrize("run", ["../escape", "a/b", "..", ".", "c:x", ""])
def test_a_run_name_that_is_not_one_folder_name_is_refused(cli, tmp_path, run):
    result = CliRunner().invoke(cli, ["sample", "--data", str(tmp_path), "--run", run])
    assert result.exit_code == 2
    assert "not a plain folder name" in result.output and "--run" in result.output


def test_evaluate_on_a_text_file_that_is_not_utf8_names_the_byte_offset(cli, data, trained, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("The café was closed.".encode("latin-1"))
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--run", "cli", "--device", "cpu",
                                      "--text", str(bad)])
    assert result.exit_code == 1  # a message, not a traceback
    assert "not UTF-8 text: byte offset 7 (0xe9)" in result.output and "iconv" in result.output


@pytest.mark.parametrize("args, option", [
    (["pretrain", "--steps", "-5"], "--steps"),
    (["pretrain", "--tokens", "-1"], "--tokens"),
    (["pretrain", "--micro-batch", "-2"], "--micro-batch"),
    (["pretrain", "--keep-last", "0"], "--keep-last"),
    (["sample", "--temperature", "-1"], "--temperature"),
    (["sample", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["sample", "--num-samples", "0"], "--num-samples"),
    (["sample", "--top-p", "0"], "--top-p"),
    (["evaluate", "--batch", "0"], "--batch"),
])
def test_negative_or_zero_values_are_refused_naming_the_option(cli, tmp_path, args, option):
    result = CliRunner().invoke(cli, [*args, "--data", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


def test_sample_text_refuses_a_negative_temperature_before_loading_anything(tmp_path):
    from train.errors import TrainConfigError
    from train.evaluate import sample_text

    with pytest.raises(TrainConfigError, match="--temperature: must be >= 0, got -0.5"):
        sample_text(tmp_path / "none", "The", tmp_path / "tok.json", temperature=-0.5)


def test_run_name_passes_through_torchrun_where_run_does_not(tmp_path):
    """torchrun's own parser takes `--run` for its `--run-path`; `--run-name` reaches our command."""
    import shutil
    import subprocess
    import sys

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    cmd = [str(torchrun if torchrun.exists() else "torchrun"), "--standalone", "--nproc_per_node=1",
           "-m", "cli", "pretrain", "--data", str(tmp_path / "none"), "--device", "cpu"]
    ours = subprocess.run(cmd + ["--run-name", "x"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert "ambiguous option" not in ours.stderr
    assert "shards" in ours.stdout + ours.stderr  # our own error: there are no token shards in DATA
    theirs = subprocess.run(cmd + ["--run", "x"], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert "ambiguous option: --run" in theirs.stderr
