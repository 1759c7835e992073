"""Fine-tuning under torchrun: `crawlgpt sft` (DDP and FSDP2) and `crawlgpt classify-train` (DDP) with 2
gloo processes run the same objectives as one process and write one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune_base import FIXTURES, make_base
from train.checkpoint import latest_checkpoint, load_checkpoint

REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]
pytest.importorskip("tokenizers")


def torchrun_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # (--run is not passed: torchrun's own parser takes it for an abbreviation of its --run-path)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "cli", *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_sft_and_classification_run_with_two_ddp_processes(tmp_path):
    data = tmp_path / "data"
    make_base(data)
    proc = torchrun_cli(tmp_path, "sft", "--data", data, "--checkpoint", data / "runs" / "base", "--instructions", FIXTURES / "alpaca.json",
                        "--steps", "3", "--batch-rows", "8", "--micro-batch", "2", "--device", "cpu",
                        "--responses", "1", "--max-new-tokens", "4")
    assert proc.stdout.count("response loss after") == 1  # only rank 0 reports
    payload = load_checkpoint(latest_checkpoint(data / "runs" / "default-sft"))
    assert payload["kind"] == "sft" and payload["step"] == 3
    assert payload["train_config"]["global_batch_tokens"] == 8 * 128
    summary = json.loads((data / "runs" / "default-sft" / "sft-summary.json").read_text())
    assert summary["steps"] == 3
    torchrun_cli(tmp_path, "sft", "--data", data, "--checkpoint", data / "runs" / "base", "--instructions",
                 FIXTURES / "alpaca.json", "--out-run", "fsdp-sft", "--parallelism", "fsdp", "--steps", "2",
                 "--batch-rows", "8", "--micro-batch", "2", "--device", "cpu", "--responses", "1",
                 "--max-new-tokens", "4", "--eval-every", "1")
    assert load_checkpoint(latest_checkpoint(data / "runs" / "fsdp-sft"))["step"] == 2
    torchrun_cli(tmp_path, "classify-train", "--data", data, "--checkpoint", data / "runs" / "base", "--labelled", FIXTURES / "classes.tsv",
                 "--steps", "3", "--batch-size", "8", "--micro-batch", "4", "--seq-len", "32", "--device", "cpu",
                 "--no-baseline", "--train-blocks", "1")
    assert load_checkpoint(latest_checkpoint(data / "runs" / "default-classify"))["kind"] == "classify"
