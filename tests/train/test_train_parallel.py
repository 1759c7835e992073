"""Tensor and pipeline parallelism on CPU: torchrun with 2 gloo processes follows the single-process
loss curve of the same model, data and global batch; sharded (DCP) checkpoints resume under another
layout; activation checkpointing changes no loss; bad layouts fail before any work starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, TrainConfigError, train
from train.checkpoint import is_sharded_checkpoint, latest_checkpoint, load_checkpoint
from train.config import ParallelConfig
from train.distributed import DistContext
from train.parallel import check_model_layout, make_layout, stage_layers
from train.synthetic import write_synthetic_shards

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available"),
              pytest.mark.usefixtures("one_torch_thread")]

RUNNER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from train import TrainConfig, train
    result = train(TrainConfig.from_dict(json.load(open(sys.argv[1]))))
    if int(os.environ["RANK"]) == 0:
        json.dump({"train": result.train_losses, "val": result.val_losses,
                   "checkpoint": str(result.checkpoint)}, open(sys.argv[2], "w"))
""")

#: The tiny preset has 4 query heads and 2 key/value heads (grouped-query attention), 2 blocks, a tied
#: embedding: TP=2 splits both kinds of heads, PP=2 puts one block and one end of the tie on each rank.


def config_for(run_dir: Path, shards: Path, max_steps: int = 8, **parallel) -> TrainConfig:
    """8 steps (the schedule fixed to 8 even when a run stops at 4, so halves resume into the whole).
    Global batch: 8 windows of 32 tokens, 4 per micro-batch: 2 micro-steps on every layout here
    (TP and PP ranks see the same batch; there is one data-parallel replica)."""
    return TrainConfig(
        run_dir=str(run_dir), max_steps=max_steps, preset="tiny", global_batch_tokens=8 * 32,
        data=DataConfig(shards_dir=str(shards), seq_len=32, micro_batch_size=4, prefetch_batches=2),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2, decay_steps=8, grad_clip=0.5),
        eval=EvalConfig(every_steps=4, max_tokens=1024, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=4),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
        parallel=ParallelConfig(**parallel),
    )


def torchrun(config: TrainConfig, tmp_path: Path, name: str, expect_ok: bool = True, nproc: int = 2) -> dict | str:
    config_path, out_path, runner = tmp_path / f"{name}.json", tmp_path / f"{name}.out.json", tmp_path / "runner.py"
    config_path.write_text(json.dumps(config.to_dict()))
    runner.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(runner),
         str(config_path), str(out_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if not expect_ok:
        assert proc.returncode != 0
        return proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out_path.read_text())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("data") / "shards", vocab_size=256, train_docs=200,
                                  val_docs=30)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, shards) -> dict:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("single") / "run"
    result = train(config_for(run, shards))
    return {"train": result.train_losses, "val": result.val_losses, "run": run}


def assert_same_losses(got: list, want: list) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def assert_same_curve(got: dict, want: dict) -> None:
    assert_same_losses(got["train"], want["train"])
    assert_same_losses(got["val"], want["val"])
    assert want["train"][-1][1] < want["train"][0][1]  # it did learn something


def grad_norms(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["grad_norm"] for r in records if r["kind"] == "train"]


# --------------------------------------------------------------------------------------------------
# Tensor parallelism


def test_tensor_parallel_with_grouped_query_attention_follows_the_single_process_curve(tmp_path, shards,
                                                                                       single_process):
    got = torchrun(config_for(tmp_path / "run", shards, tp=2), tmp_path, "tp")
    assert_same_curve(got, single_process)
    assert grad_norms(tmp_path / "run") == pytest.approx(grad_norms(single_process["run"]), rel=1e-5)
    # its checkpoint is a DCP folder that reads back, in one process, as the single process's weights
    ckpt = latest_checkpoint(tmp_path / "run")
    assert is_sharded_checkpoint(ckpt)
    a = load_checkpoint(ckpt)["model"]
    b = load_checkpoint(latest_checkpoint(single_process["run"]))["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5)


def test_sequence_parallel_follows_the_single_process_curve(tmp_path, shards, single_process):
    got = torchrun(config_for(tmp_path / "run", shards, tp=2, sequence_parallel=True), tmp_path, "sp")
    assert_same_curve(got, single_process)
    # the norms' gradients, partial sums over sequence shards, are summed before the global norm
    assert grad_norms(tmp_path / "run") == pytest.approx(grad_norms(single_process["run"]), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Activation checkpointing


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_losses_in_one_process(tmp_path, shards, single_process, recompute):
    result = train(config_for(tmp_path / "run", shards, activation_checkpointing=recompute))
    assert_same_losses(result.train_losses, single_process["train"])
    assert_same_losses(result.val_losses, single_process["val"])


def test_full_recomputes_the_matmuls_and_selective_keeps_them():
    from torch.utils.checkpoint import CheckpointPolicy
    from torch.utils.flop_counter import FlopCounterMode

    from model.gpt import GPT, preset_config
    from train.parallel.tensor import _selective_policy, apply_activation_checkpointing

    def step_flops(mode: str) -> int:
        model = GPT(preset_config("tiny", 256))
        apply_activation_checkpointing(model, mode)
        idx = torch.randint(0, 256, (2, 32))
        with FlopCounterMode(display=False) as counter:
            model(idx, idx)[1].backward()
        return counter.get_total_flops()

    none, selective, full = step_flops("none"), step_flops("selective"), step_flops("full")
    assert selective == none < full  # full runs each block's forward again in the backward pass
    policy = _selective_policy()
    assert policy(None, torch.ops.aten.mm.default) == CheckpointPolicy.MUST_SAVE
    assert policy(None, torch.ops.aten.silu.default) == CheckpointPolicy.PREFER_RECOMPUTE


# --------------------------------------------------------------------------------------------------
# Pipeline parallelism


@pytest.mark.parametrize("schedule, recompute", [("gpipe", "full"), ("1f1b", "selective")])
def test_pipeline_parallel_follows_the_single_process_curve(tmp_path, shards, single_process, schedule, recompute):
    """With activation checkpointing on (the single process has it off): it changes no loss either."""
    run = tmp_path / "run"
    got = torchrun(config_for(run, shards, pp=2, pp_schedule=schedule, microbatches=2,
                              activation_checkpointing=recompute), tmp_path, schedule)
    assert_same_curve(got, single_process)
    assert grad_norms(run) == pytest.approx(grad_norms(single_process["run"]), rel=1e-5)
    # each stage wrote its blocks and its end of the tied embedding: one process reads the whole model
    a = load_checkpoint(latest_checkpoint(run))["model"]
    b = load_checkpoint(latest_checkpoint(single_process["run"]))["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5)
    # and resumes from its step-4 checkpoint exactly where the uninterrupted run was
    resumed = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints" / "step-00000004.dcp", resumed / "checkpoints" / "step-00000004.dcp")
    result = train(config_for(resumed, shards).replace(resume=True))
    assert_same_losses(result.train_losses, [(s, loss) for s, loss in single_process["train"] if s > 4])


def test_a_single_process_checkpoint_resumes_under_pipeline_parallelism(tmp_path, shards, single_process):
    run = tmp_path / "run"
    train(config_for(run, shards, max_steps=4))
    got = torchrun(config_for(run, shards, pp=2).replace(resume=True), tmp_path, "pp-second-half")
    assert_same_losses(got["train"], [(s, loss) for s, loss in single_process["train"] if s > 4])


# --------------------------------------------------------------------------------------------------
# 2-D and 3-D layouts (4 and 8 processes on 2 cores: slow)


@pytest.mark.slow
@pytest.mark.parametrize("nproc, parallelism, parallel", [
    (4, "fsdp", dict(tp=2)),
    (4, "ddp", dict(tp=2)),
    (4, "ddp", dict(pp=2, microbatches=2)),
    (4, "fsdp", dict(pp=2, microbatches=2, pp_schedule="gpipe")),
    (4, "ddp", dict(tp=2, pp=2, microbatches=2)),
    (4, "fsdp", dict(tp=2, sequence_parallel=True)),
    (8, "fsdp", dict(tp=2, pp=2, microbatches=2)),
], ids=["tp2-fsdp2", "tp2-ddp2", "pp2-ddp2", "pp2-fsdp2", "tp2-pp2", "tp2-sp-fsdp2", "tp2-pp2-fsdp2"])
def test_multi_dimensional_layouts_follow_the_single_process_curve(tmp_path, shards, single_process, nproc,
                                                                   parallelism, parallel):
    config = config_for(tmp_path / "run", shards, **parallel).replace(parallelism=parallelism)
    got = torchrun(config, tmp_path, "nd", nproc=nproc)
    assert_same_curve(got, single_process)
    # the clipped global norm spans every shard (FSDP2 shards TP weights with _StridedShard) and stage
    assert grad_norms(tmp_path / "run") == pytest.approx(grad_norms(single_process["run"]), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Checkpoints across layouts


def test_a_tensor_parallel_checkpoint_resumes_in_one_process(tmp_path, shards, single_process):
    """The first half also recomputes activations (selective) under TP: no loss changes."""
    run = tmp_path / "run"
    torchrun(config_for(run, shards, max_steps=4, tp=2, activation_checkpointing="selective"), tmp_path,
             "tp-first-half")
    assert is_sharded_checkpoint(latest_checkpoint(run))
    result = train(config_for(run, shards).replace(resume=True))
    want = [(s, loss) for s, loss in single_process["train"] if s > 4]
    assert_same_losses(result.train_losses, want)


def test_a_single_process_checkpoint_resumes_under_tensor_parallelism(tmp_path, shards, single_process):
    run = tmp_path / "run"
    train(config_for(run, shards, max_steps=4))
    assert latest_checkpoint(run).suffix == ".pt"
    got = torchrun(config_for(run, shards, tp=2).replace(resume=True), tmp_path, "tp-second-half")
    want = [(s, loss) for s, loss in single_process["train"] if s > 4]
    assert_same_losses(got["train"], want)


# --------------------------------------------------------------------------------------------------
# Bad layouts


def one_process() -> DistContext:
    return DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def test_a_tp_that_does_not_divide_the_world_size_is_refused():
    with pytest.raises(TrainConfigError, match="does not divide the world size 1"):
        make_layout(ParallelConfig(tp=2), one_process(), "ddp", "pretrain")


def test_sequence_parallel_without_tensor_parallelism_or_with_pipelining_is_refused():
    with pytest.raises(TrainConfigError, match="needs --tp > 1"):
        make_layout(ParallelConfig(sequence_parallel=True), one_process(), "ddp", "pretrain")
    with pytest.raises(TrainConfigError, match="not implemented with --pp"):
        make_layout(ParallelConfig(tp=2, pp=2, sequence_parallel=True), one_process(), "ddp", "pretrain")


def test_tp_and_pp_are_refused_for_other_kinds_of_training():
    with pytest.raises(TrainConfigError, match="pretraining only"):
        make_layout(ParallelConfig(pp=2), one_process(), "ddp", "sft")
    with pytest.raises(TrainConfigError, match="for pretraining runs only"):
        make_layout(ParallelConfig(checkpoint_format="dcp"), one_process(), "ddp", "sft")


@pytest.mark.parametrize("parallel, message", [
    (dict(tp=3), "does not divide the model's 4 attention heads"),
    (dict(tp=4), "does not divide the model's 2 key/value heads"),
    (dict(pp=3), "3 stages for a model of 2 blocks"),
    (dict(pp=2, pp_layers=(1, 2)), "sums to 3"),
    (dict(pp=2, microbatches=3), "do not divide --micro-batch 4"),
])
def test_a_model_the_layout_cannot_split_is_refused(parallel, message):
    from model.gpt import preset_config
    from train.parallel import Layout

    layout = Layout(config=ParallelConfig(**parallel), world=one_process(), dp=1)
    with pytest.raises(TrainConfigError, match=message):
        check_model_layout(layout, preset_config("tiny", 256), micro_batch_size=4)


def test_a_bad_layout_fails_under_torchrun_before_any_work(tmp_path, shards):
    config = config_for(tmp_path / "run", shards, tp=2).replace(model_overrides={"n_head": 2, "n_kv_head": 1})
    out = torchrun(config, tmp_path, "bad", expect_ok=False)
    assert "does not divide the model's 1 key/value heads" in out
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_blocks_split_evenly_across_stages_unless_given():
    assert [len(r) for r in stage_layers(22, 4)] == [6, 6, 5, 5]
    assert [(r.start, r.stop) for r in stage_layers(6, 2, (2, 4))] == [(0, 2), (2, 6)]
