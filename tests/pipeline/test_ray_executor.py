"""The Ray executor on a two-node cluster on this machine: the same bytes as the local executor, for the
whole pipeline and for a stage begun on one executor and finished on the other; a worker killed in
the middle of a task is retried; a driver killed in the middle is resumed; Ray stays optional."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster_stages import DieOnce
from formats.manifest import read_json, sha256_file, without_timings
from pipeline.stage import RECEIPTS_DIR, LocalExecutor, make_executor, run_stage
from test_stage import KeepLongConfig, keep_long, make_inputs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("ray_cluster")

#: The stage folders `make corpus tokenizer shards` writes, in order.
STAGES = ("raw", "quality", "filtered", "dedup/signatures", "dedup/partitions", "dedup/clusters", "corpus",
          "tokenizer", "shards")


def ray_executor():
    return make_executor("ray")


def data_files(root: Path) -> dict[str, str]:
    """sha256 of every output file under `root` (receipts and manifests compared apart)."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and RECEIPTS_DIR not in p.parts
    }


def manifests(root: Path) -> dict[str, dict]:
    """Every stage manifest without timings, with the DATA folder's own path written as DATA, and
    without config hashes and upstream fingerprints (the filter config holds the quality model's path,
    so they differ between two DATA folders; the configs themselves are compared)."""
    return {stage: manifest_of(root, stage) for stage in STAGES}


def manifest_of(root: Path, stage: str) -> dict:
    text = (root / stage / "manifest.json").read_text().replace(str(root.resolve()), "DATA")
    m = without_timings(json.loads(text.replace(str(root), "DATA")))
    return {k: v for k, v in m.items() if k not in ("config_hash", "upstream")}


@pytest.fixture(scope="module")
def small_crawl(shared_data: Path, tmp_path_factory) -> Path:
    """Two WET shards: the smallest dev crawl file and the first quarter of another (cut mid-record)."""
    folder = tmp_path_factory.mktemp("crawl")
    shutil.copy(shared_data / "crawl-dev" / "crawl-00005.warc.wet.gz", folder)
    data = (shared_data / "crawl-dev" / "crawl-00004.warc.wet.gz").read_bytes()
    (folder / "crawl-00004.warc.wet.gz").write_bytes(data[: len(data) // 4])
    return folder


def make_all(data: Path, crawl: Path, reference: Path, executor: str) -> None:
    """The commands `make corpus tokenizer shards` runs, with EXECUTOR=<executor>."""
    ex = ["--executor", executor]
    steps = [
        ["download", "--source", str(crawl), "--data", str(data)],
        ["quality-train", "--data", str(data), "--reference", str(reference)],
        ["filter", "--data", str(data), "--workers", "2", "--quality-model", str(data / "quality" / "model.bin")],
        ["dedup", "--data", str(data), "--workers", "2"],
        ["tokenizer", "--data", str(data), "--vocab-size", "1024"],
        ["shards", "--data", str(data), "--workers", "2"],
    ]
    from cli import main

    for args in steps:
        result = CliRunner().invoke(main, args + ex)
        assert result.exit_code == 0, f"{args[0]} ({executor}): {result.output}"


@pytest.fixture(scope="module")
def two_runs(small_crawl, shared_data, tmp_path_factory) -> tuple[Path, Path]:
    local = tmp_path_factory.mktemp("local") / "data"
    on_ray = tmp_path_factory.mktemp("ray") / "data"
    reference = shared_data / "reference" / "reference-dev.jsonl.zst"
    make_all(local, small_crawl, reference, "local")
    make_all(on_ray, small_crawl, reference, "ray")
    return local, on_ray


@pytest.mark.slow
def test_corpus_tokenizer_and_shards_on_ray_are_byte_identical_to_local(two_runs):
    local, on_ray = two_runs
    files = data_files(local)
    assert any(p.startswith("shards/train/") for p in files) and "tokenizer/tokenizer.json" in files
    assert data_files(on_ray) == files
    assert manifests(on_ray) == manifests(local)


@pytest.mark.slow
def test_a_stage_begun_locally_is_finished_on_ray_and_the_reverse(two_runs, tmp_path):
    from pipeline.tokenize_stage import make_shards

    local, _ = two_runs
    for first, then in ((LocalExecutor(2), ray_executor()), (ray_executor(), LocalExecutor(2))):
        data = tmp_path / first.name
        shutil.copytree(local, data)
        shutil.rmtree(data / "shards")
        tok = data / "tokenizer" / "tokenizer.json"
        make_shards(data / "corpus", tok, data / "shards", executor=first)
        # keep one shard of the first executor's run, as if it had been killed after that one
        kept, *redo = sorted((data / "shards" / RECEIPTS_DIR).glob("*.json"))
        for receipt in redo:
            for out in read_json(receipt)["outputs"]:
                (data / "shards" / out["path"]).unlink()
            receipt.unlink()
        (data / "shards" / "manifest.json").unlink()
        stamp = kept.stat().st_mtime_ns
        make_shards(data / "corpus", tok, data / "shards", executor=then)
        assert kept.stat().st_mtime_ns == stamp  # the other executor did not redo it: the executor is no config
        assert len(list((data / "shards" / RECEIPTS_DIR).glob("*.json"))) == len(redo) + 1
        assert data_files(data / "shards") == data_files(local / "shards")
        assert manifest_of(data, "shards") == manifest_of(local, "shards")


def test_a_worker_killed_mid_task_is_retried_and_the_output_is_identical(tmp_path):
    tasks = make_inputs(tmp_path, n_shards=3)
    reference = run_stage("toy", tmp_path / "local", KeepLongConfig(), tasks, keep_long)
    markers = tmp_path / "markers"
    markers.mkdir()
    m = run_stage("toy", tmp_path / "ray", KeepLongConfig(), tasks, DieOnce(keep_long, str(markers)),
                  executor=ray_executor())
    assert sorted(p.name for p in markers.iterdir()) == ["s0.died", "s1.died", "s2.died"]  # every task died once
    assert data_files(tmp_path / "ray") == data_files(tmp_path / "local")
    assert without_timings(m) == without_timings(reference)
    assert not list((tmp_path / "ray").glob(".*.tmp"))  # the killed attempts' partial files are gone


def test_a_driver_killed_mid_stage_resumes_to_identical_output(ray_cluster, tmp_path):
    tasks = make_inputs(tmp_path, n_shards=4)
    reference = run_stage("toy", tmp_path / "local", KeepLongConfig(sleep_s=0.05), tasks, keep_long)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        import ray
        ray.init(address={ray_cluster.address!r}, log_to_driver=False)
        from pipeline.stage import make_executor, run_stage
        from test_stage import KeepLongConfig, keep_long, make_inputs
        from pathlib import Path
        tasks = make_inputs(Path({str(tmp_path)!r}), n_shards=4)
        run_stage("toy", Path({str(tmp_path / "ray")!r}), KeepLongConfig(sleep_s=0.05), tasks, keep_long,
                  executor=make_executor("ray"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    receipts = tmp_path / "ray" / RECEIPTS_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(receipts.glob("*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "ray" / "manifest.json").exists()
    m = run_stage("toy", tmp_path / "ray", KeepLongConfig(sleep_s=0.05), tasks, keep_long, executor=ray_executor())
    assert data_files(tmp_path / "ray") == data_files(tmp_path / "local")
    assert without_timings(m) == without_timings(reference)


def test_a_stage_error_on_a_worker_reaches_the_driver_as_itself(tmp_path):
    from pipeline.errors import AccountingError
    from test_stage import lose_one

    tasks = make_inputs(tmp_path, n_shards=2)
    with pytest.raises(AccountingError, match="accounted for"):
        run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, lose_one, executor=ray_executor())


def test_the_default_path_never_imports_ray(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        import cli
        from pathlib import Path
        from pipeline.stage import run_stage
        from test_stage import KeepLongConfig, keep_long, make_inputs
        run_stage("toy", Path({str(tmp_path / "out")!r}), KeepLongConfig(), make_inputs(Path({str(tmp_path)!r})), keep_long)
        assert "ray" not in sys.modules, "ray was imported"
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
