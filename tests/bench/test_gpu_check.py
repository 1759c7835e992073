"""The GPU check (bench/gpu_check.py) stays runnable: its dry run on the CPU as a bare GPU machine would
run it, its pytest stand-in, and its resume comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402

MINI_TESTS = '''
import pytest

calls = []

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    calls.append("shared")
    return tmp_path_factory.mktemp("data")

@pytest.fixture()
def resource():
    calls.append("open")
    yield 42
    calls.append("close")

@pytest.mark.parametrize("a, b", [(1, 2), (3, 4)])
def test_parametrized(a, b, shared, resource):
    assert b == a + 1 and shared.is_dir() and resource == 42

def test_module_fixture_made_once_and_generators_closed(shared):
    assert calls.count("shared") == 1 and calls.count("open") == calls.count("close") == 2

def test_raises_and_approx(tmp_path):
    with pytest.raises(ValueError, match="bad v"):
        raise ValueError("bad value")
    assert 0.1 + 0.2 == pytest.approx(0.3) and tmp_path.is_dir()

@pytest.mark.skipif(True, reason="never here")
def test_skipped():
    raise AssertionError

def test_failing():
    assert 1 == 2
'''


def test_the_pytest_stand_in_runs_fixtures_parametrize_skips_and_reports_failures(tmp_path):
    (tmp_path / "test_sample.py").write_text(MINI_TESTS)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "mini_pytest.py"), "--force-mini",
                           str(tmp_path / "test_sample.py")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "4 passed, 1 failed, 1 skipped" in proc.stdout
    assert "FAILED  test_sample.py::test_failing" in proc.stdout
    assert "test_parametrized[1-2]" in proc.stdout and "test_parametrized[3-4]" in proc.stdout


def test_the_resume_comparison_separates_noise_before_from_differences_after_the_resume():
    def records(losses: dict[int, float], val: dict[int, float]) -> list[dict]:
        return ([{"kind": "train", "step": s, "loss": v} for s, v in losses.items()]
                + [{"kind": "val", "step": s, "val_loss": v} for s, v in val.items()])

    reference = records({10: 5.0, 20: 4.0, 30: 3.0, 40: 2.5}, {20: 4.1, 40: 2.6})
    resumed = records({10: 5.01, 20: 4.0, 30: 3.2, 40: 2.47}, {20: 4.1, 40: 2.61})
    c = gpu_check.compare_runs(reference, resumed, resume_step=22, log_every=10)
    assert c["max_train_loss_diff_before"] == pytest.approx(0.01)
    # step 30's interval (21-30) starts before the resume at 22: only step 40 is compared after it
    assert c["compared_steps_after_resume"] == 1
    assert c["max_train_loss_diff_after"] == pytest.approx(0.03)
    assert c["final_step"] == 40 and c["final_val_loss_diff"] == pytest.approx(0.01)


@pytest.mark.slow
def test_the_dry_run_passes_on_a_cpu_with_only_torch_numpy_and_pyarrow(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "CRAWLGPT_BLOCK_IMPORTS")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--bare", "--out", str(tmp_path / "out"),
         "--work", str(tmp_path / "work"), "--stages", "env,tests,bench,pretrain"],
        capture_output=True, text=True, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    stages = summary["stages"]
    assert summary["ok"] and summary["bare"] and not stages["env"]["packages"]["click"]
    assert stages["tests"]["runner"] == "bench/mini_pytest.py" and " 0 failed" in stages["tests"]["summary"]
    assert stages["bench"]["case"]["tokens_per_s"] > 0 and stages["bench"]["case"]["mfu"] > 0
    pretrain = stages["pretrain"]
    assert "no click" in pretrain["via"] and "one epoch" in pretrain["planned"]
    assert pretrain["sigterm"]["exit_status"] == 128 + 15
    assert pretrain["comparison"]["compared_steps_after_resume"] >= 3
    assert pretrain["comparison"]["max_train_loss_diff_after"] == 0.0  # a CPU run resumes bit for bit
    for name in ("summary.md", "tests.log", "bench_headline.json", "pretrain/reference-metrics.jsonl",
                 "pretrain/resumed-metrics.jsonl", "pretrain/resumed.log"):
        assert (tmp_path / "out" / name).is_file(), name
    assert not (tmp_path / "work" / "data").exists()  # shards and checkpoints do not outlive the check
