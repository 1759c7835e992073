"""Two trainings into one run folder: the second stops at once with a one-line error naming the folder,
while the first runs on; once the first has ended the folder is free again."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from align_fixtures import make_config, write_byte_tokenizer, write_pairs, write_policy_checkpoint
from train import RunDirError, train
from train.align.dpo import DPOObjective

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TESTS = Path(__file__).resolve().parents[1]  # tests/, where the shared fixtures live

FIRST = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from align_fixtures import make_config
from train import train
from train.align.dpo import DPOObjective

root = Path({root!r})

def wait(step):
    (root / "ready").touch()
    while not (root / "release").exists():
        time.sleep(0.05)

objective = DPOObjective(root / "sft.pt", root / "pairs.json", root / "tokenizer.json", val_fraction=0.25, batch_pairs=8)
train(make_config(root / "run", 2), objective=objective, on_step=wait)
"""


def test_a_second_training_into_a_busy_run_folder_is_refused(tmp_path):
    tok = write_byte_tokenizer(tmp_path / "tokenizer.json")
    write_policy_checkpoint(tmp_path / "sft.pt", tok)
    write_pairs(tmp_path / "pairs.json", 20)
    first = subprocess.Popen([sys.executable, "-c", FIRST.format(tests=str(TESTS), root=str(tmp_path))])
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert first.poll() is None, "the first training ended early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        objective = DPOObjective(tmp_path / "sft.pt", tmp_path / "pairs.json", tok, val_fraction=0.25, batch_pairs=8)
        with pytest.raises(RunDirError, match=f"{tmp_path / 'run'} is in use by another training "
                                              f"\\(process {first.pid}\\)") as err:
            train(make_config(tmp_path / "run", 2, resume=True), objective=objective)
        assert "\n" not in str(err.value) and "torchrun" in str(err.value)
    finally:
        (tmp_path / "release").touch()
        assert first.wait(timeout=120) == 0
    # the first run ended: the folder is free (resuming its finished run is a no-op that succeeds)
    objective = DPOObjective(tmp_path / "sft.pt", tmp_path / "pairs.json", tok, val_fraction=0.25, batch_pairs=8)
    assert train(make_config(tmp_path / "run", 2, resume=True), objective=objective).final_step == 2


def test_a_run_refused_before_writing_anything_leaves_no_folder_behind(tmp_path):
    from train import TrainConfig, TrainConfigError, train

    run_dir = tmp_path / "runs" / "bad"
    with pytest.raises(TrainConfigError, match="--precision"):
        train(TrainConfig(run_dir=str(run_dir), max_steps=1, precision="bf16", device="cpu"))
    assert not run_dir.exists()
