"""A damaged sharded (DCP) checkpoint folder is a one-line CheckpointError, never DCP's multi-rank
traceback (its CheckpointException derives from BaseException) nor click's bare "Aborted!"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
from train.checkpoint import DCP_META, latest_checkpoint, load_checkpoint
from train.config import ParallelConfig
from train.errors import CheckpointError
from train.synthetic import write_synthetic_shards

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def dcp_checkpoint(tmp_path_factory) -> Path:
    """A 2-step tiny run in one process whose checkpoint is a DCP folder."""
    root = tmp_path_factory.mktemp("dcp")
    shards = write_synthetic_shards(root / "shards", vocab_size=256, train_docs=60, val_docs=10)
    config = TrainConfig(
        run_dir=str(root / "run"), max_steps=2, preset="tiny", global_batch_tokens=4 * 32,
        data=DataConfig(shards_dir=str(shards), seq_len=32, micro_batch_size=4, prefetch_batches=0),
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
        eval=EvalConfig(every_steps=2, max_tokens=256, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=2),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
        parallel=ParallelConfig(checkpoint_format="dcp"))
    train(config)
    ckpt = latest_checkpoint(root / "run")
    assert ckpt.suffix == ".dcp" and "model" in load_checkpoint(ckpt)
    return ckpt


def _shard(folder: Path) -> Path:
    return next(p for p in folder.iterdir() if p.suffix == ".distcp")


DAMAGE = {
    "shard missing": lambda f: _shard(f).unlink(),
    "shard truncated": lambda f: _shard(f).write_bytes(_shard(f).read_bytes()[:100]),
    "shard garbage": lambda f: _shard(f).write_bytes(b"\x00garbage" * 500),
    "metadata truncated": lambda f: (f / ".metadata").write_bytes((f / ".metadata").read_bytes()[:40]),
    "metadata empty": lambda f: (f / ".metadata").write_bytes(b""),
    "metadata missing": lambda f: (f / ".metadata").unlink(),
    "meta.pt truncated": lambda f: (f / DCP_META).write_bytes((f / DCP_META).read_bytes()[:50]),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_each_damage_of_a_dcp_folder_is_a_one_line_checkpoint_error(tmp_path, dcp_checkpoint, damage):
    folder = tmp_path / dcp_checkpoint.name
    shutil.copytree(dcp_checkpoint, folder)
    DAMAGE[damage](folder)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(folder)
    message = str(caught.value)
    assert str(folder) in message and "delete" in message and "\n" not in message, message
    assert "Traceback" not in message and "weights_only" not in message


def test_sample_on_a_damaged_dcp_folder_prints_one_error_line(tmp_path, dcp_checkpoint):
    folder = tmp_path / dcp_checkpoint.name
    shutil.copytree(dcp_checkpoint, folder)
    (folder / ".metadata").write_bytes(b"")
    result = CliRunner().invoke(main, ["sample", "--checkpoint", str(folder), "--tokenizer", str(tmp_path / "t.json")])
    assert result.exit_code == 1 and "Aborted" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: cannot read") and ".metadata" in lines[0], result.output


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch '{self.marker}'",)


def test_a_malicious_meta_pt_is_refused_without_torchs_weights_only_hint(tmp_path, dcp_checkpoint):
    folder = tmp_path / dcp_checkpoint.name
    shutil.copytree(dcp_checkpoint, folder)
    marker = tmp_path / "code-ran"
    torch.save({"format": 1, "step": 2, "model_config": {}, "x": _RunsCode(marker)}, folder / DCP_META)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(folder)
    message = str(caught.value)
    assert "would run code from the file" in message and "weights_only" not in message.lower()
    assert caught.value.__cause__ is None and caught.value.__suppress_context__ and not marker.exists()


def test_the_log_names_the_preset_of_the_model_built_not_the_one_asked_for():
    from model.gpt import preset_config
    from train.setup import preset_of

    assert preset_of(preset_config("tiny", 320), "small") == "tiny"  # sft of a tiny base under preset auto
    assert preset_of(preset_config("small", 320), "small") == "small"
    assert preset_of(preset_config("tiny", 320, d_model=128), "tiny") == "custom"
