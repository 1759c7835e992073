"""`pretrain --benchmark`: the loop scores the benchmarks at every evaluation step into metrics.jsonl and the
plot; a tokenizer other than the shards' and an unknown task are refused before training starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lm_fixtures import TOKENIZER_VOCAB, train_tiny_tokenizer
from train import (CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, TrainConfigError,
                   VocabMismatchError, train)
from train.evaluate import tokenizer_hash
from train.metrics import read_metrics
from train.synthetic import write_synthetic_shards

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    tok = train_tiny_tokenizer(root / "tokenizer" / "tokenizer.json")
    out = write_synthetic_shards(root / "shards", vocab_size=TOKENIZER_VOCAB, train_docs=60, val_docs=20,
                                 tokenizer_hash=tokenizer_hash(tok))
    shutil.copyfile(tok, out / "tokenizer.json")  # as `crawlgpt shards` leaves it
    return out


def config(run_dir: Path, shards: Path, **eval_changes) -> TrainConfig:
    return TrainConfig(
        run_dir=str(run_dir), max_steps=4, preset="tiny", global_batch_tokens=4 * 32,
        data=DataConfig(shards_dir=str(shards), seq_len=32, micro_batch_size=4, prefetch_batches=0),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=1),
        eval=EvalConfig(every_steps=2, max_tokens=256, sample_every_steps=0, benchmarks=("piqa", "lambada"),
                        benchmark_limit=2, benchmark_dir=str(FIXTURES), **eval_changes),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=1),
        log=LogConfig(every_steps=1, tensorboard=False, plot=True),
    )


def test_benchmarks_are_scored_at_every_evaluation_step(tmp_path, shards):
    train(config(tmp_path / "run", shards))
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "benchmark"]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["piqa_acc"] in (0.0, 0.5, 1.0) and 0 <= r["piqa_acc_norm"] <= 1
        assert r["lambada_perplexity"] > 1 and 0 <= r["lambada_acc"] <= 1
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_a_tokenizer_other_than_the_shards_is_refused(tmp_path, shards):
    other = train_tiny_tokenizer(tmp_path / "other.json")
    other.write_text(other.read_text().replace("<|reserved_3|>", "<|reserved_x|>"))
    with pytest.raises(VocabMismatchError, match="is not the one the shards"):
        train(config(tmp_path / "run", shards, tokenizer_path=str(other)))


def test_an_unknown_benchmark_is_a_config_error(tmp_path, shards):
    with pytest.raises(TrainConfigError, match="--benchmark.*unknown benchmark"):
        train(config(tmp_path / "run", shards).replace(eval=EvalConfig(benchmarks=("mmlu",))))


def test_pretrain_command_takes_benchmark_options(tmp_path, shards):
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, [
        "pretrain", "--data", str(tmp_path), "--shards", str(shards), "--run", "bench", "--preset", "tiny",
        "--steps", "2", "--seq-len", "32", "--micro-batch", "4", "--device", "cpu", "--eval-every", "2",
        "--sample-every", "0", "--no-tensorboard", "--benchmark", "piqa", "--benchmark-limit", "3",
        "--eval-dir", str(FIXTURES)])
    assert result.exit_code == 0, result.output
    records = [r for r in read_metrics(tmp_path / "runs" / "bench" / "metrics.jsonl") if r["kind"] == "benchmark"]
    assert [r["step"] for r in records] == [2] and "piqa_acc_norm" in records[0]
    bad = CliRunner().invoke(main, ["pretrain", "--data", str(tmp_path), "--shards", str(shards), "--run", "bad",
                                    "--preset", "tiny", "--steps", "2", "--seq-len", "32", "--device", "cpu",
                                    "--benchmark", "mmlu", "--eval-dir", str(FIXTURES)])
    assert bad.exit_code != 0 and "unknown benchmark" in bad.output
