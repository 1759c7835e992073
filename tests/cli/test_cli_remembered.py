"""Options given once are remembered by the stage that recorded them, and progress off a terminal is a
line per shard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from cli.common import StageProgress
from formats.manifest import read_json
from pipeline.stage import Progress
from test_quality_train import read_reference
from test_tokenizer import make_corpus, synthetic_docs

REPO = Path(__file__).resolve().parents[2]


def test_tokenizer_options_given_once_are_taken_from_its_manifest_afterwards(tmp_path):
    make_corpus(tmp_path, {"a": synthetic_docs(120, 3, "a"), "b": synthetic_docs(80, 4, "b")})
    first = CliRunner().invoke(main, ["tokenizer", "--data", str(tmp_path), "--vocab-size", "512",
                                      "--pattern", "gpt2"])
    assert first.exit_code == 0, first.output
    stamp = (tmp_path / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    again = CliRunner().invoke(main, ["tokenizer", "--data", str(tmp_path)])  # as `make shards DATA=...` runs it
    assert again.exit_code == 0, again.output
    assert (tmp_path / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == stamp  # skipped, not refused
    changed = CliRunner().invoke(main, ["tokenizer", "--data", str(tmp_path), "--vocab-size", "576"])
    assert changed.exit_code != 0 and "vocab_size: 512 -> 576" in changed.output


def test_progress_off_a_terminal_is_one_line_per_shard(capsys):
    progress = StageProgress("filter", tty=False)
    for done, docs in ((0, 10), (0, 50), (1, 100), (1, 120), (2, 300)):
        progress(Progress(docs=docs, shards_done=done, shards_total=2, shards_skipped=0, elapsed_s=1.0))
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["filter: 1/2 shards (0 already done), 100 docs, 100 docs/s, 1.0s",
                     "filter: 2/2 shards (0 already done), 300 docs, 300 docs/s, 1.0s"]
    assert "\r" not in "".join(lines)


@pytest.mark.slow
def test_make_corpus_with_reference_then_make_shards_without_it_goes_on(shared_data, tmp_path):
    """The issue's own case: `make corpus REFERENCE=x DATA=d` then `make shards DATA=d`."""
    cli = Path(sys.prefix) / "bin" / "crawlgpt"
    if shutil.which("make") is None or not cli.exists():
        pytest.skip("needs make and the installed crawlgpt command")
    texts = read_reference(shared_data)[:200]
    ref = tmp_path / "my-reference.jsonl"
    ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    data = tmp_path / "d"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("SOURCE", "NUM_FILES", "REFERENCE", "LANGS", "VOCAB_SIZE", "EXECUTOR", "RAY_ADDRESS"):
        env.pop(var, None)
    make = ["make", "-C", str(REPO), f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed", f"DATA={data}",
            "WORKERS=1"]
    crawl = shared_data / "crawl-dev" / "crawl-00005.warc.wet.gz"
    first = subprocess.run(make + ["corpus", f"SOURCE={crawl}", f"REFERENCE={ref}", "LANGS=en,de"],
                           env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run(make + ["shards", "VOCAB_SIZE=1024"], env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert read_json(data / "quality" / "manifest.json")["config"]["reference"] == [str(ref.resolve())]
    filtered = read_json(data / "filtered" / "manifest.json")["config"]
    assert filtered["langs"] == ["en", "de"] and filtered["quality_model"] == "model.bin"  # by name: see BY_CONTENT
    assert read_json(data / "shards" / "manifest.json")["vocab_size"] == 1024


@pytest.mark.slow
def test_make_without_reference_trains_the_classifier_on_the_default_reference(shared_data, tmp_path):
    """Without REFERENCE, make offers its default reference to quality-train (as a path, not a quoted string)."""
    cli = Path(sys.prefix) / "bin" / "crawlgpt"
    if shutil.which("make") is None or not cli.exists():
        pytest.skip("needs make and the installed crawlgpt command")
    ref = tmp_path / "default reference.jsonl"  # a space in the name: quoting must survive it
    ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in read_reference(shared_data)[:200]),
                   encoding="utf-8")
    data = tmp_path / "d"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("SOURCE", "NUM_FILES", "REFERENCE", "LANGS", "VOCAB_SIZE", "EXECUTOR", "RAY_ADDRESS"):
        env.pop(var, None)
    crawl = shared_data / "crawl-dev" / "crawl-00005.warc.wet.gz"
    run = subprocess.run(["make", "-C", str(REPO), f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed",
                          f"DATA={data}", f"SOURCE={crawl}", f"DEFAULT_REFERENCE={ref}", "quality-model"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert read_json(data / "quality" / "manifest.json")["config"]["reference"] == [str(ref.resolve())]
