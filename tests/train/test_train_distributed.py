"""Data parallelism on CPU: torchrun with 2 gloo processes (DDP, and FSDP2) follows the same loss
curve as one process with the same global batch, and their checkpoints resume anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
from train.checkpoint import latest_checkpoint, load_checkpoint
from train.synthetic import write_synthetic_shards

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

RUNNER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from train import TrainConfig, train
    result = train(TrainConfig.from_dict(json.load(open(sys.argv[1]))))
    if int(os.environ["RANK"]) == 0:
        json.dump({"train": result.train_losses, "val": result.val_losses}, open(sys.argv[2], "w"))
""")


def config_for(run_dir: Path, shards: Path, parallelism: str = "ddp", **changes) -> TrainConfig:
    """Global batch: 8 windows of 32 tokens; 4 per micro-batch, so 2 ranks x 1 or 1 rank x 2 micro-steps."""
    return TrainConfig(
        run_dir=str(run_dir), max_steps=6, preset="tiny", global_batch_tokens=8 * 32, parallelism=parallelism,
        data=DataConfig(shards_dir=str(shards), seq_len=32, micro_batch_size=4, prefetch_batches=2),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2),
        eval=EvalConfig(every_steps=3, max_tokens=1024, sample_every_steps=3, sample_tokens=8),
        checkpoint=CheckpointConfig(every_steps=3),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
    ).replace(**changes)


def torchrun(config: TrainConfig, tmp_path: Path, name: str) -> dict:
    config_path, out_path, runner = tmp_path / f"{name}.json", tmp_path / f"{name}.out.json", tmp_path / "runner.py"
    config_path.write_text(json.dumps(config.to_dict()))
    runner.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(runner),
         str(config_path), str(out_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out_path.read_text())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("data") / "shards", vocab_size=256, train_docs=200,
                                  val_docs=30)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, shards) -> dict:
    run = tmp_path_factory.mktemp("single") / "run"
    result = train(config_for(run, shards))
    return {"train": result.train_losses, "val": result.val_losses, "run": run}


def assert_same_curve(got: dict, want: dict) -> None:
    steps = [s for s, _ in want["train"]]
    assert [s for s, _ in got["train"]] == steps
    for (_, a), (_, b) in zip(got["train"], want["train"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    for (_, a), (_, b) in zip(got["val"], want["val"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    assert want["train"][-1][1] < want["train"][0][1]  # it did learn something


def test_ddp_on_two_processes_follows_the_single_process_loss_curve(tmp_path, shards, single_process):
    got = torchrun(config_for(tmp_path / "run", shards, "ddp"), tmp_path, "ddp")
    assert_same_curve(got, single_process)


def test_fsdp2_on_two_processes_follows_the_single_process_loss_curve(tmp_path, shards, single_process):
    got = torchrun(config_for(tmp_path / "run", shards, "fsdp"), tmp_path, "fsdp")
    assert_same_curve(got, single_process)
    # the sharded run's checkpoint is a full, ordinary one: identical to the single process's within float noise
    a = load_checkpoint(latest_checkpoint(tmp_path / "run"))["model"]
    b = load_checkpoint(latest_checkpoint(single_process["run"]))["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_a_single_process_checkpoint_resumes_under_fsdp2_on_two_processes(tmp_path, shards, single_process):
    run = tmp_path / "run"
    train(config_for(run, shards, max_steps=3))
    got = torchrun(config_for(run, shards, "fsdp", resume=True), tmp_path, "resume")
    want = [(s, loss) for s, loss in single_process["train"] if s > 3]
    assert [s for s, _ in got["train"]] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got["train"], want):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
