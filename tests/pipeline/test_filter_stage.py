"""The filter stage end to end on real crawl files: every document accounted for (kept, dropped by
reason, unreadable), annotations on kept documents, reruns that skip, config changes refused, an
interrupted run that resumes to the same bytes, and bad models that stop the run before any work."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.documents import read_documents
from pipeline.download import run_download
from pipeline.errors import ConfigError, InputError, StageConfigChanged
from pipeline.filter_stage import (
    FilterConfig,
    filter_dir,
    run_filter,
    shard_name,
    with_rule_overrides,
)
from pipeline.filters.c4 import C4Config
from pipeline.filters.gopher import GopherQualityConfig
from formats.manifest import read_json, sha256_file
from pipeline.stage import RECEIPTS_DIR


@pytest.fixture(scope="module")
def crawl_small(shared_data: Path, tmp_path_factory) -> Path:
    """A raw folder with the smallest crawl file and a copy of it cut short (a damaged download)."""
    src = shared_data / "crawl-dev" / "crawl-00005.warc.wet.gz"
    if not src.exists():
        pytest.skip(f"{src} not found")
    folder = tmp_path_factory.mktemp("raw")
    shutil.copy(src, folder / "crawl-00005.warc.wet.gz")
    data = src.read_bytes()
    (folder / "cut-00001.warc.wet.gz").write_bytes(data[: len(data) // 8])
    return folder


def make_data(tmp_path: Path, raw_folder: Path) -> Path:
    data = tmp_path / "data"
    run_download(str(raw_folder), 0, data)
    return data


@pytest.fixture
def config(lid_model_path) -> FilterConfig:
    return FilterConfig(lid_model=str(lid_model_path))


def output_hashes(data: Path) -> dict[str, str]:
    out = filter_dir(data)
    return {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*.parquet"))}


def test_every_document_is_kept_dropped_with_a_reason_or_unreadable(tmp_path, crawl_small, config):
    data = make_data(tmp_path, crawl_small)
    manifest = run_filter(data, config, workers=1)
    out = filter_dir(data)
    t = manifest["totals"]
    assert t["docs_in"] == t["kept"] + sum(t["dropped"].values()) + sum(t["unreadable"].values())
    assert t["kept"] > 0 and t["dropped"]["lang_not_kept"] > 0
    assert t["unreadable"] == {"truncated_gzip": 1}
    assert manifest["chain"] == ["language", "gopher_quality", "c4", "fineweb", "gopher_repetition"]

    for shard in manifest["shards"]:
        name = shard["shard"]
        kept_rows = list(read_documents(out / f"{name}.parquet"))
        rejected = pq.read_table(out / "rejected" / f"{name}.parquet").to_pylist()
        assert shard["docs_in"] == len(kept_rows) + len(rejected)
        assert shard["kept"] == len(kept_rows)
        reasons = Counter(r["reason"] for r in rejected)
        expected = Counter(shard["dropped"]) + Counter({f"unreadable:{k}": v for k, v in shard["unreadable"].items()})
        assert reasons == expected
        for doc in kept_rows:
            assert doc.meta["lang"] == "en" and doc.meta["lang_score"] >= 0.65
        for r in rejected:
            if r["reason"].startswith("lang_"):
                assert json.loads(r["meta"])["lang"]  # rejected rows show what the model saw
        ids = [d.id for d in kept_rows] + [r["id"] for r in rejected]
        assert len(ids) == len(set(ids))

    # the damaged file's readable records are filtered, its cut tail is one unreadable row
    cut = next(s for s in manifest["shards"] if s["shard"] == "cut-00001")
    rows = pq.read_table(out / "rejected" / "cut-00001.parquet").to_pylist()
    bad = [r for r in rows if r["reason"] == "unreadable:truncated_gzip"]
    assert len(bad) == 1 and bad[0]["text"] == "" and bad[0]["id"].startswith("cut-00001.warc.wet.gz@offset")
    assert cut["docs_in"] > 1


def test_dropped_documents_keep_their_text_and_the_failing_value(tmp_path, crawl_small, config):
    data = make_data(tmp_path, crawl_small)
    run_filter(data, config)
    rejected = pq.read_table(filter_dir(data) / "rejected" / "crawl-00005.parquet").to_pylist()
    short = [r for r in rejected if r["reason"] == "gopher_min_words"]
    assert short, "the crawl sample has stubs"
    for r in short:
        assert r["score"] < 50 and len(r["text"].split()) < 80


def test_rerun_skips_every_shard_and_changes_nothing(tmp_path, crawl_small, config, caplog):
    data = make_data(tmp_path, crawl_small)
    run_filter(data, config)
    before = output_hashes(data)
    receipts = {p.name: p.stat().st_mtime_ns for p in (filter_dir(data) / RECEIPTS_DIR).iterdir()}
    caplog.set_level("INFO")
    run_filter(data, config)
    assert "2 of 2 shards already done" in caplog.text
    assert output_hashes(data) == before
    assert {p.name: p.stat().st_mtime_ns for p in (filter_dir(data) / RECEIPTS_DIR).iterdir()} == receipts


def test_a_changed_threshold_is_refused_without_force(tmp_path, crawl_small, config):
    data = make_data(tmp_path, crawl_small)
    first = run_filter(data, config)
    looser = with_rule_overrides(config, {"gopher_quality.min_words": "none"})
    with pytest.raises(StageConfigChanged, match="gopher_quality"):
        run_filter(data, looser)
    second = run_filter(data, looser, force=True)
    assert first["totals"]["dropped"]["gopher_min_words"] > 0
    assert "gopher_min_words" not in second["totals"]["dropped"]
    assert second["totals"]["docs_in"] == first["totals"]["docs_in"]


def test_an_interrupted_run_resumes_to_the_same_outputs(tmp_path, crawl_small, config):
    whole = make_data(tmp_path / "whole", crawl_small)
    run_filter(whole, config, workers=2)
    expected = output_hashes(whole)

    broken = make_data(tmp_path / "broken", crawl_small)
    run_filter(broken, config, workers=2)
    out = filter_dir(broken)
    # a kill mid-shard leaves no receipt, no manifest, maybe one finished output and a temporary file
    (out / "manifest.json").unlink()
    (out / RECEIPTS_DIR / "crawl-00005.json").unlink()
    (out / "rejected" / "crawl-00005.parquet").unlink()
    (out / ".crawl-00005.parquet.abc123.tmp").write_bytes(b"half a shard")
    run_filter(broken, config, workers=2)
    assert output_hashes(broken) == expected
    assert read_json(out / "manifest.json")["totals"] == read_json(filter_dir(whole) / "manifest.json")["totals"]


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_same_outputs(tmp_path, crawl_small, shared_data, lid_model_path):
    import signal
    import subprocess
    import sys
    import time

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("crawl-00004.warc.wet.gz", "crawl-00005.warc.wet.gz"):
        shutil.copy(shared_data / "crawl-dev" / name, raw / name)
    whole = make_data(tmp_path / "whole", raw)
    killed = make_data(tmp_path / "killed", raw)
    cmd = [sys.executable, "-m", "cli", "filter", "--workers", "1", "--lid-model", str(lid_model_path), "--data"]
    subprocess.run(cmd + [str(whole)], check=True, capture_output=True)
    proc = subprocess.Popen(cmd + [str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = filter_dir(killed)
    deadline = time.monotonic() + 120
    while not list(out.glob(".*.tmp")) and time.monotonic() < deadline:  # a shard is being written
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the first shard (2,500 records)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob(".*.tmp")), "the kill should leave a half-written shard behind"
    assert not (filter_dir(killed) / "manifest.json").exists()
    subprocess.run(cmd + [str(killed)], check=True, capture_output=True)
    assert output_hashes(killed) == output_hashes(whole)


def test_a_bad_quality_model_stops_the_run_before_any_work(tmp_path, crawl_small, config):
    data = make_data(tmp_path, crawl_small)
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="--quality-model.*not a fastText model"):
        run_filter(data, FilterConfig(lid_model=config.lid_model, quality_model=str(bad)))
    with pytest.raises(InputError, match="--lid-model.*does not exist"):
        run_filter(data, FilterConfig(lid_model=str(tmp_path / "nope.ftz")))
    assert not filter_dir(data).exists()


def test_a_new_quality_model_redoes_every_shard(tmp_path, crawl_small, config, shared_data):
    from pipeline.quality_train import QualityTrainConfig, train_quality_model

    from pipeline.readers import read_file

    ref = tmp_path / "reference.jsonl"
    docs = read_file(shared_data / "reference" / "reference-dev.jsonl.zst")
    ref.write_text("".join(json.dumps({"text": next(docs).text}) + "\n" for _ in range(400)), encoding="utf-8")
    data = make_data(tmp_path, crawl_small)
    train_quality_model(data, QualityTrainConfig(reference=(str(ref),), seed=1))
    model = data / "quality" / "model.bin"
    with_model = FilterConfig(lid_model=config.lid_model, quality_model=str(model))
    first = run_filter(data, with_model)
    assert first["upstream"]["quality_model"] == sha256_file(model)
    assert first["upstream"]["quality_settings"]["threshold"] == read_json(data / "quality" / "manifest.json")["threshold"]
    kept = list(read_documents(filter_dir(data) / "crawl-00005.parquet"))
    assert kept and all("quality_score" in d.meta for d in kept)
    assert first["chain"][-1] == "quality_classifier"

    receipts = filter_dir(data) / RECEIPTS_DIR
    before = {p.name: read_json(p)["inputs_fingerprint"] for p in receipts.iterdir()}
    train_quality_model(data, QualityTrainConfig(reference=(str(ref),), seed=2), force=True)
    second = run_filter(data, with_model)  # same config: no --force needed, but every shard is redone
    assert second["upstream"]["quality_model"] != first["upstream"]["quality_model"]
    after = {p.name: read_json(p)["inputs_fingerprint"] for p in receipts.iterdir()}
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)
    assert second["totals"]["docs_in"] == first["totals"]["docs_in"]
    # and the new model is the one applied (shards run in this process: no stale cached model)
    rescored = {d.id: d.meta["quality_score"] for d in read_documents(filter_dir(data) / "crawl-00005.parquet")}
    old = {d.id: d.meta["quality_score"] for d in kept}
    assert any(rescored[i] != old[i] for i in rescored.keys() & old.keys())


def test_rule_overrides_are_typed_and_checked(config):
    cfg = with_rule_overrides(config, {"gopher_quality.min_words": "30", "c4.drop_curly_bracket": "false",
                                       "gopher_quality.min_stop_words": "none"})
    assert cfg.gopher_quality == GopherQualityConfig(min_words=30, min_stop_words=None)
    assert cfg.c4 == C4Config(drop_curly_bracket=False)
    rep = with_rule_overrides(config, {"gopher_repetition.max_top_ngram_char_ratios": "2:0.3,3:0.25"})
    assert rep.gopher_repetition.max_top_ngram_char_ratios == ((2, 0.3), (3, 0.25))
    with pytest.raises(ConfigError, match="--set.*no field 'min_wrds'"):
        with_rule_overrides(config, {"gopher_quality.min_wrds": "3"})
    with pytest.raises(ConfigError, match="--set.*cannot parse"):
        with_rule_overrides(config, {"gopher_quality.min_words": "many"})
    with pytest.raises(ConfigError, match="--set"):
        with_rule_overrides(config, {"language.min_score": "0.5"})
    with pytest.raises(ConfigError, match="--lang-threshold"):
        FilterConfig(lid_model="x", min_lang_score=1.5)
    with pytest.raises(ConfigError, match="--rules"):
        FilterConfig(lid_model="x", rules=("gopher",))


def test_shard_names_drop_every_extension():
    assert shard_name("/x/crawl-00000.warc.wet.gz") == "crawl-00000"
    assert shard_name("docs.jsonl.zst") == "docs"


def test_cli_reports_a_bad_model_without_a_traceback(tmp_path, crawl_small, lid_model_path):
    from cli import main

    data = make_data(tmp_path, crawl_small)
    bad = tmp_path / "m.bin"
    bad.write_text("nope")
    result = CliRunner().invoke(main, ["filter", "--data", str(data), "--quality-model", str(bad)])
    assert result.exit_code != 0
    assert "not a fastText model" in result.output and "Traceback" not in result.output
    ok = CliRunner().invoke(main, ["filter", "--data", str(data), "--workers", "1", "--lid-model", str(lid_model_path)])
    assert ok.exit_code == 0, ok.output
    assert "dropped: lang_not_kept" in ok.output


def test_shard_names_stay_unique_when_files_share_a_name():
    from pipeline.filter_stage import shard_names

    paths = [Path("/d/a/x.jsonl"), Path("/d/b/x.jsonl"), Path("/d/a.warc"), Path("/d/a.warc.gz"), Path("/d/y.txt")]
    names = shard_names(paths)
    assert names == ["a_x_jsonl", "b_x_jsonl", "a_warc", "a_warc_gz", "y"]
    assert shard_names(paths) == names  # stable across runs


def test_two_input_files_with_the_same_name_in_different_folders_are_both_filtered(tmp_path, config):
    src = tmp_path / "src"
    for folder, words in (("one", "alpha"), ("two", "beta")):
        (src / folder).mkdir(parents=True)
        text = " ".join(f"The {words} river flows past the old mill and the quiet town." for _ in range(20))
        (src / folder / "docs.jsonl").write_text(json.dumps({"text": text, "id": folder}) + "\n")
        (src / folder / "noid.jsonl").write_text(json.dumps({"text": text}) + "\n")  # id: <file>:<line>
    (src / "docs.txt").write_text("A third file whose shard name is docs as well. " * 20)
    data = make_data(tmp_path, src)
    manifest = run_filter(data, config, workers=1)
    assert sorted(s["shard"] for s in manifest["shards"]) == [
        "docs_txt", "one_docs_jsonl", "one_noid_jsonl", "two_docs_jsonl", "two_noid_jsonl"]
    assert manifest["totals"]["docs_in"] == 5
    ids = [d.id for p in sorted(filter_dir(data).rglob("*.parquet")) for d in read_documents(p)]
    assert len(ids) == 5 and len(set(ids)) == 5  # documents named after their line stay apart


def test_the_same_models_at_another_path_are_the_same_config(tmp_path, crawl_small, lid_model_path):
    data = make_data(tmp_path, crawl_small)
    first = tmp_path / "env1" / "lid.176.ftz"
    first.parent.mkdir()
    shutil.copy(lid_model_path, first)
    run_filter(data, FilterConfig(lid_model=str(first)), workers=1)
    moved = tmp_path / "env2" / "lid.176.ftz"
    moved.parent.mkdir()
    shutil.move(first, moved)  # the environment moved: same bytes, another path
    manifest = run_filter(data, FilterConfig(lid_model=str(moved)), workers=1)  # resumes, no refusal
    assert manifest["config"]["lid_model"] == "lid.176.ftz"
    assert manifest["upstream"]["lid_model"] == sha256_file(moved)  # the model is fingerprinted by content
    assert str(tmp_path) not in json.dumps(manifest["config"])
