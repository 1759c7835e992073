"""The parallelism options of `crawlgpt pretrain`, and `evaluate`/`sample` reading a sharded (DCP)
checkpoint folder exactly as they read a single file."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from test_train_cli import PRETRAIN, cli, data  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loss_of(output: str) -> float:
    return float(re.search(r"loss\s+([0-9.]+) nats/token", output).group(1))


def test_evaluate_and_sample_read_a_dcp_checkpoint_like_a_file(cli, data):  # noqa: F811
    runner = CliRunner()
    for fmt in ("file", "dcp"):
        result = runner.invoke(cli, [*PRETRAIN, "--data", str(data), "--steps", "3", "--run", f"fmt-{fmt}",
                                     "--checkpoint-format", fmt, "--activation-checkpointing", "selective"])
        assert result.exit_code == 0, result.output + repr(result.exception)
    ckpts = {fmt: sorted((data / "runs" / f"fmt-{fmt}" / "checkpoints").iterdir())[-1] for fmt in ("file", "dcp")}
    assert ckpts["file"].suffix == ".pt" and ckpts["dcp"].is_dir()
    losses = {}
    for fmt in ("file", "dcp"):
        result = runner.invoke(cli, ["evaluate", "--data", str(data), "--run", f"fmt-{fmt}", "--device", "cpu",
                                     "--max-tokens", "512", "--seq-len", "32", "--batch", "4"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        losses[fmt] = loss_of(result.output)
    assert losses["dcp"] == pytest.approx(losses["file"], abs=1e-4)
    samples = [runner.invoke(cli, ["sample", "--data", str(data), "--checkpoint", str(ckpts[fmt]), "--device", "cpu",
                                   "--max-new-tokens", "8", "--seed", "3"]).output for fmt in ("file", "dcp")]
    assert samples[0] == samples[1] and samples[0].strip()


def test_a_malformed_pp_layers_is_a_clear_error(cli, data):  # noqa: F811
    result = CliRunner().invoke(cli, [*PRETRAIN, "--data", str(data), "--steps", "1", "--run", "bad",
                                      "--pp", "2", "--pp-layers", "1,x"])
    assert result.exit_code != 0
    assert "invalid --pp-layers" in result.output and "Traceback" not in result.output


def test_tp_larger_than_the_world_is_refused_before_training(cli, data):  # noqa: F811
    result = CliRunner().invoke(cli, [*PRETRAIN, "--data", str(data), "--steps", "1", "--run", "bad-tp", "--tp", "2"])
    assert result.exit_code != 0
    assert "does not divide the world size 1" in result.output
    assert not (data / "runs" / "bad-tp" / "checkpoints").exists()
