"""The shards stage: every document packed exactly once, deterministic split, resume, and the CLI."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.documents import Document, read_documents
from pipeline.errors import ConfigError, InputError, StageConfigChanged
from formats.manifest import sha256_file
from formats.token_shards import TokenShardError, TokenShards, split_of
from pipeline.tokenize_stage import ShardsConfig, make_shards
from pipeline.tokenizer_train import TextCodec, TokenizerConfig, train_tokenizer
from corpus_fixtures import make_corpus, synthetic_docs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA with a corpus of three shards (one with empty documents) and a trained tokenizer."""
    root = tmp_path_factory.mktemp("data")
    b = synthetic_docs(150, 4, "b")
    b[3] = Document(id="b-empty-1", text="")
    b[77] = Document(id="b-empty-2", text="")
    make_corpus(root, {"a": synthetic_docs(200, 3, "a"), "b": b, "c": synthetic_docs(120, 5, "c")})
    train_tokenizer(root / "corpus", root / "tokenizer", TokenizerConfig(vocab_size=512))
    return root


def corpus_docs(data: Path) -> list[Document]:
    """Corpus documents in shard-name order, as the shards list them."""
    return [d for p in sorted((data / "corpus").glob("*.parquet")) for d in read_documents(p)]


def shard_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*.arrow"))}


def run(data: Path, out: Path, config: ShardsConfig = ShardsConfig(val_fraction=0.1), **kw) -> dict:
    return make_shards(data / "corpus", data / "tokenizer" / "tokenizer.json", out, config, **kw)


def test_every_document_is_packed_once_with_eot_and_decodes_to_its_text(data, tmp_path):
    m = run(data, tmp_path / "shards")
    docs = corpus_docs(data)
    codec = TextCodec(data / "tokenizer" / "tokenizer.json")
    t = m["totals"]
    assert t["docs_in"] == len(docs) == 470
    assert t["kept"] + t["dropped"]["empty"] == t["docs_in"] and t["dropped"] == {"empty": 2}
    for split in ("train", "val"):
        ds = TokenShards(tmp_path / "shards", split, expect_tokenizer_hash=codec.hash, expect_vocab_size=512)
        expected = [d for d in docs if d.text and split_of(d.id, 0.1) == split]
        assert ds.num_documents == len(expected) > 0
        for i, doc in enumerate(expected):
            toks = ds.document(i)
            assert toks[-1] == ds.eot_id
            assert ds.eot_id not in toks[:-1]
            assert codec.decode(toks[:-1]) == doc.text
    assert t["extra"]["tokens"] == m["split_totals"]["train"]["tokens"] + m["split_totals"]["val"]["tokens"]
    assert t["extra"]["text_bytes"] == sum(len(d.text.encode()) for d in docs)


def test_manifest_describes_every_file_and_the_tokenizer(data, tmp_path):
    out = tmp_path / "shards"
    m = run(data, out)
    codec = TextCodec(data / "tokenizer" / "tokenizer.json")
    assert (m["vocab_size"], m["eot_id"], m["dtype"], m["tokenizer_hash"]) == (512, codec.eot_id, "uint16", codec.hash)
    assert m["upstream"]["tokenizer"] == codec.hash
    listed = {r["path"]: r for recs in m["splits"].values() for r in recs}
    assert set(listed) == set(shard_hashes(out))
    for path, rec in listed.items():
        assert rec["sha256"] == sha256_file(out / path) and rec["bytes"] == (out / path).stat().st_size
    assert sha256_file(out / "tokenizer.json") == codec.hash  # the folder carries its tokenizer


def test_output_does_not_depend_on_the_number_of_workers(data, tmp_path):
    run(data, tmp_path / "one", workers=1)
    run(data, tmp_path / "two", workers=2)
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")


def test_large_corpus_shards_are_cut_at_max_shard_bytes(data, tmp_path):
    config = ShardsConfig(val_fraction=0.1, max_shard_bytes=4096)
    m = run(data, tmp_path / "small", config)
    ref = TokenShards(tmp_path / "small", "train")
    assert len(m["splits"]["train"]) > 6
    for rec in m["splits"]["train"]:
        # a file closes at the first document that takes it past the limit
        assert rec["tokens"] * 2 < 4096 + 2 * 1000
    run(data, tmp_path / "big")
    big = TokenShards(tmp_path / "big", "train")
    np.testing.assert_array_equal(ref.window(0, ref.num_tokens), big.window(0, big.num_tokens))


def test_rerun_skips_and_changed_config_is_refused_without_force(data, tmp_path):
    out = tmp_path / "shards"
    run(data, out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.arrow")}
    run(data, out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.arrow")} == mtimes
    with pytest.raises(StageConfigChanged, match="val_fraction.*--force"):
        run(data, out, ShardsConfig(val_fraction=0.2))
    m = run(data, out, ShardsConfig(val_fraction=0.2), force=True)
    assert m["config"]["val_fraction"] == 0.2


def test_a_killed_shard_is_redone_and_its_partial_files_removed(data, tmp_path):
    out = tmp_path / "shards"
    clean = run(data, out)
    before = shard_hashes(out)
    # What a kill during shard "b" leaves: no receipt, no manifest, a half-written temporary file and
    # a truncated output from an earlier attempt.
    (out / "_receipts" / "b.json").unlink()
    (out / "manifest.json").unlink()
    (out / "train" / ".b-00000.arrow.x1y2.tmp").write_bytes(b"partial")
    victim = out / "train" / "b-00000.arrow"
    victim.write_bytes(victim.read_bytes()[:100])
    again = run(data, out)
    assert shard_hashes(out) == before
    assert not list(out.rglob("*.tmp"))
    assert again["splits"] == clean["splits"]


def test_kill_and_rerun_equals_an_uninterrupted_run(data, tmp_path):
    # Many small corpus shards, so the run is still going when the first receipt appears.
    root = tmp_path / "d"
    make_corpus(root, {f"s{k:02d}": synthetic_docs(40, 100 + k, f"s{k}") for k in range(40)})
    tokenizer = data / "tokenizer" / "tokenizer.json"
    out = tmp_path / "shards"
    code = textwrap.dedent(f"""
        from pipeline.tokenize_stage import make_shards
        make_shards({str(root / 'corpus')!r}, {str(tokenizer)!r}, {str(out)!r}, workers=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "_receipts").glob("*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    make_shards(root / "corpus", tokenizer, out)
    make_shards(root / "corpus", tokenizer, tmp_path / "clean")
    assert shard_hashes(out) == shard_hashes(tmp_path / "clean")
    assert not list(out.rglob("*.tmp"))


def test_retrained_tokenizer_redoes_shards_and_old_hash_is_refused(data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(data / "corpus", root / "corpus")
    train_tokenizer(root / "corpus", root / "tokenizer", TokenizerConfig(vocab_size=512))
    m1 = make_shards(root / "corpus", root / "tokenizer" / "tokenizer.json", root / "shards")
    train_tokenizer(root / "corpus", root / "tokenizer", TokenizerConfig(vocab_size=576), force=True)
    m2 = make_shards(root / "corpus", root / "tokenizer" / "tokenizer.json", root / "shards")
    assert m2["tokenizer_hash"] != m1["tokenizer_hash"] and m2["vocab_size"] == 576
    with pytest.raises(TokenShardError, match="make shards"):
        TokenShards(root / "shards", "train", expect_tokenizer_hash=m1["tokenizer_hash"])


def test_missing_tokenizer_names_make_tokenizer(data, tmp_path):
    with pytest.raises(InputError, match="make tokenizer"):
        make_shards(data / "corpus", tmp_path / "none.json", tmp_path / "shards")


def test_invalid_config_names_the_option(data, tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        run(data, tmp_path / "s", ShardsConfig(val_fraction=1.5))


def test_cli_tokenizer_shards_stats_end_to_end(data, tmp_path):
    from cli import main

    root = tmp_path / "d"
    shutil.copytree(data / "corpus", root / "corpus")
    runner = CliRunner()
    r = runner.invoke(main, ["tokenizer", "--data", str(root), "--vocab-size", "512"])
    assert r.exit_code == 0, r.output
    assert "bytes per token" in r.output
    r = runner.invoke(main, ["tokenizer", "--data", str(root), "--vocab-size", "1000"])
    assert r.exit_code != 0 and "multiple of 64" in r.output
    r = runner.invoke(main, ["shards", "--data", str(root), "--workers", "1", "--val-fraction", "0.1"])
    assert r.exit_code == 0, r.output
    assert "documents in" in r.output and "train" in r.output
    r = runner.invoke(main, ["shards", "--data", str(root), "--workers", "1", "--val-fraction", "0.3"])
    assert r.exit_code != 0 and "--force" in r.output
    r = runner.invoke(main, ["stats", str(root / "shards"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["total"]["documents"] == 468
    assert (root / "shards" / "doc_lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shards_from_filtered_record_their_source_and_never_replace_the_curated_shards(data, tmp_path):
    from cli import main

    root = tmp_path / "data"
    shutil.copytree(data / "corpus", root / "corpus")
    shutil.copytree(data / "corpus", root / "filtered")  # stands in for DATA/filtered: a finished stage folder
    shutil.copytree(data / "tokenizer", root / "tokenizer")
    runner = CliRunner()
    r = runner.invoke(main, ["shards", "--data", str(root), "--workers", "1"])
    assert r.exit_code == 0, r.output
    curated = shard_hashes(root / "shards")
    r = runner.invoke(main, ["shards", "--data", str(root), "--workers", "1", "--from", "filtered",
                             "--out", str(root / "shards")])
    assert r.exit_code == 1 and "source" in r.output and "Traceback" not in r.output, r.output
    assert shard_hashes(root / "shards") == curated
    r = runner.invoke(main, ["shards", "--data", str(root), "--workers", "1", "--from", "filtered"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((root / "shards-filtered" / "manifest.json").read_text())
    assert manifest["config"]["source"] == "filtered"
    assert json.loads((root / "shards" / "manifest.json").read_text())["config"]["source"] == "corpus"


def test_shards_from_the_redacted_corpus_go_to_the_curated_shards_folder(data, tmp_path):
    from cli import main

    root = tmp_path / "data"
    shutil.copytree(data / "corpus", root / "redacted")  # stands in for DATA/redacted, the pii stage's output
    shutil.copytree(data / "tokenizer", root / "tokenizer")
    r = CliRunner().invoke(main, ["shards", "--data", str(root), "--workers", "1", "--from", "redacted"])
    assert r.exit_code == 0, r.output
    assert json.loads((root / "shards" / "manifest.json").read_text())["config"]["source"] == "corpus"
