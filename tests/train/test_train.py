"""The trainer on CPU with the tiny preset: loader order and state, schedule, metrics, checkpoints,
exact resume, and a clear typed error for each kind of bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from train import (
    CheckpointConfig,
    CheckpointError,
    CheckpointMismatchError,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RunDirError,
    SeqLenError,
    ShardDataError,
    TrainConfig,
    TrainConfigError,
    VocabMismatchError,
    train,
)
from train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from train.data import TokenBatchLoader, open_split
from train.evaluate import evaluate_checkpoint_on_shards
from train.metrics import read_metrics
from train.schedule import learning_rate
from train.synthetic import write_synthetic_shards


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("data") / "shards", vocab_size=256,
                                  train_docs=300, val_docs=40)


def make_config(run_dir: Path, shards: Path, **changes) -> TrainConfig:
    """8 steps of the tiny model on 32-token windows: 2 micro-batches of 4 windows per step."""
    base = TrainConfig(
        run_dir=str(run_dir), max_steps=8, preset="tiny", global_batch_tokens=2 * 4 * 32,
        data=DataConfig(shards_dir=str(shards), seq_len=32, micro_batch_size=4, prefetch_batches=2),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2),
        eval=EvalConfig(every_steps=4, max_tokens=1024, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
    )
    return base.replace(**changes)


# --------------------------------------------------------------------------------------------------
# Loader


def batches(loader: TokenBatchLoader, n: int) -> list[torch.Tensor]:
    return [loader.next_batch()[0].clone() for _ in range(n)]


def test_loader_order_depends_only_on_the_seed_and_position(shards):
    split = open_split(shards, "train")
    a = batches(TokenBatchLoader(split, 32, 4, seed=1), 5)
    b = batches(TokenBatchLoader(split, 32, 4, seed=1, prefetch_batches=3), 5)
    c = batches(TokenBatchLoader(split, 32, 4, seed=2), 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_targets_are_inputs_shifted_by_one_token(shards):
    split = open_split(shards, "train")
    inputs, targets = TokenBatchLoader(split, 32, 4, seed=0).next_batch()
    assert inputs.shape == targets.shape == (4, 32) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_each_rank_reads_a_disjoint_part_of_the_single_process_batch(shards):
    split = open_split(shards, "train")
    single = batches(TokenBatchLoader(split, 32, 4, seed=0), 3)
    rank0 = batches(TokenBatchLoader(split, 32, 2, seed=0, rank=0, world_size=2), 3)
    rank1 = batches(TokenBatchLoader(split, 32, 2, seed=0, rank=1, world_size=2), 3)
    for s, r0, r1 in zip(single, rank0, rank1):
        assert torch.equal(s, torch.cat([r0, r1]))
        assert not any(torch.equal(x, y) for x in r0 for y in r1)


def test_every_window_is_visited_once_per_epoch(shards):
    split = open_split(shards, "train")
    loader = TokenBatchLoader(split, 32, 4, seed=3)
    n = loader.num_windows
    first_epoch = [loader.window_index(s) for s in range(n)]
    second_epoch = [loader.window_index(s) for s in range(n, 2 * n)]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(n))
    assert first_epoch != second_epoch != list(range(n))  # shuffled, and differently each epoch


def test_loader_state_round_trip_continues_with_the_same_batches(shards):
    split = open_split(shards, "train")
    loader = TokenBatchLoader(split, 32, 4, seed=5, prefetch_batches=4)
    batches(loader, 3)
    state = loader.state_dict()
    expected = batches(loader, 4)
    loader.close()
    fresh = TokenBatchLoader(split, 32, 4, seed=5, prefetch_batches=4)
    fresh.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, batches(fresh, 4)))
    fresh.close()


def test_loader_refuses_a_state_saved_with_another_sequence_length(shards):
    split = open_split(shards, "train")
    state = TokenBatchLoader(split, 32, 4, seed=5).state_dict()
    with pytest.raises(ShardDataError, match="seq_len=32"):
        TokenBatchLoader(split, 16, 4, seed=5).load_state_dict(state)


def test_too_little_data_for_one_micro_batch_is_a_clear_error(shards):
    split = open_split(shards, "val")
    with pytest.raises(ShardDataError, match="fewer than one micro-batch"):
        TokenBatchLoader(split, 120, 10_000, seed=0)


# --------------------------------------------------------------------------------------------------
# Schedule


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_the_minimum():
    lrs = [learning_rate(s, 1.0, 0.1, warmup_steps=10, decay_steps=110) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(b < a for a, b in zip(lrs[10:110], lrs[11:110]))
    assert lrs[60] == pytest.approx(0.55)  # halfway down the cosine
    assert lrs[110:] == [0.1] * 20


# --------------------------------------------------------------------------------------------------
# Training, metrics, checkpoints


def test_training_lowers_the_loss_and_writes_metrics_plot_and_checkpoints(tmp_path, shards):
    pytest.importorskip("matplotlib")
    config = make_config(tmp_path / "run", shards, max_steps=24,
                         checkpoint=CheckpointConfig(every_steps=5, keep_last=2),
                         log=LogConfig(every_steps=2, tensorboard=False, plot=True))
    result = train(config)
    assert result.final_step == 24 and not result.interrupted
    assert result.train_losses[-1][1] < result.train_losses[0][1] - 0.5
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(2, 25, 2))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "data_wait_share"} <= set(train_records[0])
    val_records = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val_records] == [4, 8, 12, 16, 20, 24]
    assert val_records[-1]["val_ppl"] == pytest.approx(math.exp(val_records[-1]["val_loss"]))
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    # every 5 steps and at the end, keeping the last two
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000020.pt", "step-00000024.pt"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))


@pytest.mark.slow
def test_compiled_blocks_follow_the_eager_loss_curve(tmp_path, shards):
    eager = train(make_config(tmp_path / "eager", shards, max_steps=3))
    compiled = train(make_config(tmp_path / "compiled", shards, max_steps=3, compile=True))
    for (_, a), (_, b) in zip(eager.train_losses, compiled.train_losses):
        assert a == pytest.approx(b, rel=1e-4)
    assert compiled.val_losses[-1][1] == pytest.approx(eager.val_losses[-1][1], rel=1e-4)


def test_a_checkpoint_holds_everything_needed_to_resume(tmp_path, shards):
    train(make_config(tmp_path / "run", shards, max_steps=3))
    payload = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert payload["step"] == 3
    assert {"model", "optimizer", "loader", "rng", "model_config", "train_config", "data"} <= set(payload)
    assert payload["loader"]["samples_consumed"] == 3 * 2 * 4
    assert {"python", "numpy", "torch"} <= set(payload["rng"])
    assert payload["train_config"]["max_steps"] == 3
    assert payload["data"]["tokenizer_hash"] == "synthetic"


def test_resume_after_sigterm_reaches_bitwise_the_same_weights_as_an_uninterrupted_run(tmp_path, shards):
    full = train(make_config(tmp_path / "full", shards, max_steps=10))

    def stop_at_step_4(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train(make_config(tmp_path / "split", shards, max_steps=10), on_step=stop_at_step_4)
    assert stopped.interrupted and stopped.stop_signal == signal.SIGTERM
    assert stopped.final_step < 10
    assert latest_checkpoint(tmp_path / "split").name == f"step-{stopped.final_step:08d}.pt"

    resumed = train(make_config(tmp_path / "split", shards, max_steps=10, resume=True))
    assert resumed.final_step == 10
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "split"))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][name][key]), (name, key)
    # the resumed run logs exactly the losses the uninterrupted one logged after the stop
    resumed_losses = dict(resumed.train_losses)
    assert all(resumed_losses[s] == loss for s, loss in full.train_losses if s > stopped.final_step)
    # and metrics.jsonl holds each step once
    steps = [r["step"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 11))


def test_a_stop_signal_is_remembered_and_only_a_second_ctrl_c_interrupts_at_once():
    from train.loop import StopSignal

    stop = StopSignal()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # what torchrun sends its workers after a Ctrl-C: ignored
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class Payload:  # any class: weights_only=True refuses to build it when loading
    pass


def test_a_checkpoint_is_loaded_without_unpickling_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "step": 1, "model": {}, "model_config": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint this tool wrote"):
        load_checkpoint(path)


class RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('RAN').write_text('x')",))


def test_an_unsafe_checkpoint_is_refused_without_suggesting_weights_only_false(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "step": 1, "model": {}, "model_config": {}, "x": RunsCode()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not (tmp_path / "RAN").exists()  # its code never ran
    msg = str(err.value)
    assert "not a checkpoint this tool wrote" in msg and "would run code" in msg
    assert "weights_only" not in msg and "likely succeed" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # torch's hint is not chained in


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "step-00000001.pt", {"step": 1, "model": {"w": torch.ones(1000)},
                                                           "model_config": {}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_evaluating_a_checkpoint_gives_the_validation_loss_the_trainer_logged(tmp_path, shards):
    result = train(make_config(tmp_path / "run", shards, max_steps=4))
    ev = evaluate_checkpoint_on_shards(tmp_path / "run", shards, split="val", seq_len=32, batch_size=4,
                                       max_tokens=1024)
    assert ev.loss == pytest.approx(result.val_losses[-1][1], rel=1e-6)
    assert ev.perplexity == pytest.approx(math.exp(ev.loss))
    assert ev.tokens == 32 * 32


# --------------------------------------------------------------------------------------------------
# Bad input: each a typed error whose message says what to fix


def test_missing_shards_folder_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(ShardDataError, match="make shards"):
        train(make_config(tmp_path / "run", tmp_path / "nowhere"))


def test_a_missing_shard_file_is_named(tmp_path, shards):
    broken = tmp_path / "shards"
    shutil.copytree(shards, broken)
    victim = sorted((broken / "train").glob("*.arrow"))[0]
    victim.unlink()
    with pytest.raises(ShardDataError, match=f"{victim.name}.*missing"):
        train(make_config(tmp_path / "run", broken))


def test_a_corrupt_shard_file_is_named(tmp_path, shards):
    broken = tmp_path / "shards"
    shutil.copytree(shards, broken)
    victim = sorted((broken / "train").glob("*.arrow"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardDataError, match=f"{victim.name}.*corrupt"):
        train(make_config(tmp_path / "run", broken))


def test_resuming_on_shards_from_another_tokenizer_is_a_vocab_mismatch(tmp_path, shards):
    train(make_config(tmp_path / "run", shards, max_steps=2))
    other = write_synthetic_shards(tmp_path / "other", vocab_size=320, tokenizer_hash="another")
    with pytest.raises(VocabMismatchError, match="vocab 256.*vocab 320"):
        train(make_config(tmp_path / "run", other, max_steps=4, resume=True))


def test_evaluating_on_shards_from_another_tokenizer_is_a_vocab_mismatch(tmp_path, shards):
    train(make_config(tmp_path / "run", shards, max_steps=2))
    other = write_synthetic_shards(tmp_path / "other", vocab_size=256, tokenizer_hash="another")
    with pytest.raises(VocabMismatchError, match="model's tokenizer"):
        evaluate_checkpoint_on_shards(tmp_path / "run", other, seq_len=32, batch_size=4)


def test_resuming_with_a_different_model_config_names_the_differing_fields(tmp_path, shards):
    train(make_config(tmp_path / "run", shards, max_steps=2))
    with pytest.raises(CheckpointMismatchError, match="n_layer: checkpoint 2, this run 3"):
        train(make_config(tmp_path / "run", shards, max_steps=4, resume=True, model_overrides={"n_layer": 3}))


def test_a_sequence_length_beyond_the_model_context_is_refused(tmp_path, shards):
    config = make_config(tmp_path / "run", shards)
    with pytest.raises(SeqLenError, match="--seq-len 256 .*128 tokens"):
        train(config.replace(data=DataConfig(shards_dir=str(shards), seq_len=256, micro_batch_size=4)))
    train(config.replace(max_steps=1))
    with pytest.raises(SeqLenError, match="--seq-len 128 or less"):
        evaluate_checkpoint_on_shards(tmp_path / "run", shards, seq_len=512)


def test_a_run_folder_with_checkpoints_needs_resume_or_a_new_name(tmp_path, shards):
    train(make_config(tmp_path / "run", shards, max_steps=1))
    with pytest.raises(RunDirError, match="--resume"):
        train(make_config(tmp_path / "run", shards, max_steps=2))


def test_invalid_options_are_named():
    with pytest.raises(TrainConfigError, match="--steps"):
        TrainConfig(run_dir="x", max_steps=0)
    with pytest.raises(TrainConfigError, match="--min-lr"):
        OptimConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(TrainConfigError, match="--precision"):
        train(TrainConfig(run_dir="x", max_steps=1, precision="bf16", device="cpu"))


def test_configs_round_trip_through_plain_dicts(tmp_path, shards):
    config = make_config(tmp_path, shards, model_overrides={"n_layer": 3})
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
