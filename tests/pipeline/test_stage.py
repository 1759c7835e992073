"""The stage contract: receipts, resume, config-change refusal, accounting, atomic outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.documents import Document, DocumentWriter, read_documents, write_documents
from pipeline.errors import AccountingError, InputError, StageConfigChanged
from formats.manifest import atomic_path, output_record, sha256_file
from pipeline.stage import ShardStats, ShardTask, run_stage, stage_documents


@dataclass(frozen=True)
class KeepLongConfig:
    min_chars: int = 5
    sleep_s: float = 0.0


def keep_long(task: ShardTask, stage_dir: Path, config: KeepLongConfig) -> ShardStats:
    """A toy stage: keep documents with at least `min_chars` characters."""
    stats = ShardStats()
    kept_path = stage_dir / f"{task.name}.parquet"
    rej_path = stage_dir / "rejected" / f"{task.name}.parquet"
    with DocumentWriter(kept_path) as kept, DocumentWriter(rej_path, rejected=True) as rejected:
        for doc in read_documents(task.inputs[0]):
            time.sleep(config.sleep_s)
            stats.docs_in += 1
            if len(doc.text) >= config.min_chars:
                kept.write(doc)
                stats.kept += 1
            else:
                rejected.write(doc, reason="too_short", score=len(doc.text))
                stats.dropped["too_short"] += 1
    stats.outputs = [
        output_record(kept_path, kept.rows, stage_dir),
        output_record(rej_path, rejected.rows, stage_dir),
    ]
    return stats


def lose_one(task: ShardTask, stage_dir: Path, config: KeepLongConfig) -> ShardStats:
    stats = keep_long(task, stage_dir, config)
    stats.kept -= 1  # a buggy stage that forgets a document
    return stats


def make_inputs(tmp_path: Path, n_shards: int = 3, docs_per_shard: int = 10) -> list[ShardTask]:
    tasks = []
    for s in range(n_shards):
        path = tmp_path / "in" / f"s{s}.parquet"
        if path.exists():  # reuse: rewriting would change the inputs' fingerprints
            tasks.append(ShardTask(name=f"s{s}", inputs=(str(path),)))
            continue
        write_documents(path, (Document(id=f"{s}-{i}", text="x" * i, url=f"http://e/{s}/{i}") for i in range(docs_per_shard)))
        tasks.append(ShardTask(name=f"s{s}", inputs=(str(path),)))
    return tasks


def output_hashes(stage_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(stage_dir)): sha256_file(p) for p in sorted(stage_dir.rglob("*.parquet"))}


def test_stage_accounts_for_every_document_and_writes_manifest(tmp_path):
    tasks = make_inputs(tmp_path)
    m = run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    assert m["totals"]["docs_in"] == 30
    assert m["totals"]["kept"] == 15 and m["totals"]["dropped"] == {"too_short": 15}
    kept = [d.id for p in stage_documents(tmp_path / "out") for d in read_documents(p)]
    assert sorted(kept) == sorted(f"{s}-{i}" for s in range(3) for i in range(5, 10))
    rejected = list(read_documents(tmp_path / "out" / "rejected" / "s0.parquet"))
    assert len(rejected) == 5
    for shard in m["shards"]:
        for out in shard["outputs"]:
            assert sha256_file(tmp_path / "out" / out["path"]) == out["sha256"]


def test_rerun_skips_finished_shards(tmp_path):
    tasks = make_inputs(tmp_path)
    run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.parquet")}
    run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.parquet")}
    assert before == after


def test_unfinished_shard_is_redone_and_matches_uninterrupted_run(tmp_path):
    tasks = make_inputs(tmp_path)
    run_stage("toy", tmp_path / "ref", KeepLongConfig(), tasks, keep_long)
    run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    # Simulate a kill after s1's output was renamed into place but before its receipt was written.
    (tmp_path / "out" / "_receipts" / "s1.json").unlink()
    (tmp_path / "out" / "manifest.json").unlink()
    m = run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    assert output_hashes(tmp_path / "out") == output_hashes(tmp_path / "ref")
    assert m["totals"]["docs_in"] == 30


def test_changed_config_is_refused_without_force(tmp_path):
    tasks = make_inputs(tmp_path)
    run_stage("toy", tmp_path / "out", KeepLongConfig(min_chars=5), tasks, keep_long)
    with pytest.raises(StageConfigChanged, match=r"min_chars: 5 -> 7.*--force"):
        run_stage("toy", tmp_path / "out", KeepLongConfig(min_chars=7), tasks, keep_long)
    m = run_stage("toy", tmp_path / "out", KeepLongConfig(min_chars=7), tasks, keep_long, force=True)
    assert m["totals"]["kept"] == 9


def test_changed_input_redoes_only_that_shard(tmp_path):
    tasks = make_inputs(tmp_path)
    run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    s0_mtime = (tmp_path / "out" / "s0.parquet").stat().st_mtime_ns
    write_documents(tasks[2].inputs[0], [Document(id="new", text="hello world")])
    m = run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    assert (tmp_path / "out" / "s0.parquet").stat().st_mtime_ns == s0_mtime
    assert m["totals"]["docs_in"] == 21


def test_removed_input_removes_its_stale_output(tmp_path):
    tasks = make_inputs(tmp_path)
    run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    m = run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks[:2], keep_long)
    assert not (tmp_path / "out" / "s2.parquet").exists()
    assert [s["shard"] for s in m["shards"]] == ["s0", "s1"]


def test_results_do_not_depend_on_worker_count(tmp_path):
    tasks = make_inputs(tmp_path)
    run_stage("toy", tmp_path / "one", KeepLongConfig(), tasks, keep_long, workers=1)
    run_stage("toy", tmp_path / "two", KeepLongConfig(), tasks, keep_long, workers=2)
    assert output_hashes(tmp_path / "one") == output_hashes(tmp_path / "two")


def test_accounting_error_is_raised_for_a_stage_that_loses_documents(tmp_path):
    tasks = make_inputs(tmp_path, n_shards=1)
    with pytest.raises(AccountingError, match="10 documents in but 9 accounted"):
        run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, lose_one)


def test_stage_documents_names_the_make_target_when_unfinished(tmp_path):
    with pytest.raises(InputError, match="make corpus"):
        stage_documents(tmp_path / "nothing", "corpus")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_document_round_trip_keeps_unicode_and_meta(tmp_path):
    docs = [Document(id="a", text="naïve 日本語 🙂\n\ttab", url="http://x", source="f", meta={"lang": "en", "n": 1})]
    write_documents(tmp_path / "d.parquet", docs)
    assert list(read_documents(tmp_path / "d.parquet")) == docs


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_stage import KeepLongConfig, keep_long, make_inputs
    from pipeline.stage import run_stage
    tmp = Path({tmp!r})
    tasks = make_inputs(Path({inputs!r}))
    run_stage("toy", tmp / "out", KeepLongConfig(sleep_s={sleep}), tasks, keep_long, workers=2)
    """
)


@pytest.mark.slow
def test_killing_a_stage_at_any_moment_then_rerunning_equals_an_uninterrupted_run(tmp_path):
    tests_dir = str(Path(__file__).resolve().parents[1])
    ref = tmp_path / "ref"
    script = KILL_SCRIPT.format(tests=tests_dir, tmp=str(ref), inputs=str(tmp_path), sleep=0.05)
    subprocess.run([sys.executable, "-c", script], check=True)
    for kill_after_s in (1.0, 1.6, 2.2):
        run_dir = tmp_path / f"kill{kill_after_s}"
        script = KILL_SCRIPT.format(tests=tests_dir, tmp=str(run_dir), inputs=str(tmp_path), sleep=0.05)
        proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
        time.sleep(kill_after_s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run([sys.executable, "-c", script], check=True)
        assert output_hashes(run_dir / "out") == output_hashes(ref / "out")
        manifest = json.loads((run_dir / "out" / "manifest.json").read_text())
        assert manifest["totals"]["docs_in"] == 30
        assert not list((run_dir / "out").rglob("*.tmp"))


def test_manifest_hash_ignores_timings_so_a_no_op_rerun_does_not_invalidate_downstream(tmp_path):
    from formats.manifest import manifest_hash

    tasks = make_inputs(tmp_path)
    run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    first = manifest_hash(tmp_path / "out")
    m = run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    assert "elapsed_s" in m
    assert manifest_hash(tmp_path / "out") == first
    write_documents(tasks[0].inputs[0], [Document(id="changed", text="different content")])
    run_stage("toy", tmp_path / "out", KeepLongConfig(), tasks, keep_long)
    assert manifest_hash(tmp_path / "out") != first


def test_a_stale_receipt_listing_a_path_outside_the_stage_deletes_nothing_there(tmp_path):
    tasks = make_inputs(tmp_path)
    out = tmp_path / "out"
    run_stage("toy", out, KeepLongConfig(), tasks, keep_long)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    receipt_path = out / "_receipts" / "s2.json"
    receipt = json.loads(receipt_path.read_text())
    receipt["outputs"][0]["path"] = "../victim.txt"
    receipt_path.write_text(json.dumps(receipt))
    run_stage("toy", out, KeepLongConfig(), tasks[:2], keep_long)  # s2 is stale now: its outputs are removed
    assert victim.read_text() == "keep me"


def test_a_manifest_listing_a_path_outside_its_folder_is_refused(tmp_path):
    tasks = make_inputs(tmp_path)
    out = tmp_path / "out"
    run_stage("toy", out, KeepLongConfig(), tasks, keep_long)
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][0]["outputs"][0]["path"] = "../in/s0.parquet"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match=r"manifest.json lists '../in/s0.parquet'.*not a file inside"):
        stage_documents(out)
def test_an_object_store_uri_is_refused_with_what_to_do(tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="object stores are not supported yet.*Mount the bucket"):
        run_stage("toy", "s3://bucket/data/out", KeepLongConfig(), make_inputs(tmp_path), keep_long)


def test_asking_for_ray_without_ray_installed_says_how_to_install_it(monkeypatch):
    import sys

    from pipeline.errors import ConfigError
    from pipeline.stage import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as without the extra
    monkeypatch.delitem(sys.modules, "pipeline.ray_executor", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'crawlgpt\[ray\]'"):
        make_executor("ray")
    with pytest.raises(ConfigError, match="choose one of local, ray"):
        make_executor("spark")
