"""Shard statistics: known answers on hand-made shards, decoding, copied folders, JSON and PNG output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.errors import InputError
from pipeline.shard_stats import compute_stats, format_report, shard_stats
from formats.token_shards import write_token_shards
from formats.token_shards import split_of
from pipeline.tokenizer_train import TokenizerConfig, train_tokenizer
from test_tokenizer import make_corpus, synthetic_docs

EOT = 9


@pytest.fixture
def known(tmp_path):
    """Two train files and one val file with hand-countable contents."""
    train = [np.array([1, 2, EOT]), np.array([1, EOT]), np.array([3, 1, 1, 1, EOT])]  # lengths 3, 2, 5
    val = [np.array([4, 4, 4, 4, 4, 4, 4, EOT])]  # length 8
    # 12-byte files: the first train file closes after the first document.
    write_token_shards(tmp_path, {"train": train, "val": val}, vocab_size=10, eot_id=EOT, tokenizer_hash="t",
                       max_shard_bytes=6)
    return tmp_path


def test_known_counts_lengths_and_eot_share(known):
    report, lengths = compute_stats(known)
    total = report["total"]
    assert (total["files"], total["documents"], total["tokens"]) == (3, 4, 18)
    assert total["by_split"] == {"train": {"documents": 3, "tokens": 10}, "val": {"documents": 1, "tokens": 8}}
    t = total["tokens_per_document"]
    assert t["mean"] == 4.5 and t["median"] == 4.0 and t["max"] == 8
    assert t["p99"] == pytest.approx(np.percentile([3, 2, 5, 8], 99), abs=0.1)
    assert total["eot_share"] == pytest.approx(4 / 18, abs=1e-6)
    per = {s["path"]: s for s in report["shards"]}
    assert per["train/train-00000.arrow"]["documents"] == 1 and per["train/train-00000.arrow"]["tokens"] == 3
    assert per["val/val-00000.arrow"]["eot_share"] == pytest.approx(1 / 8, abs=1e-6)
    assert sorted(np.concatenate(list(lengths.values())).tolist()) == [2, 3, 5, 8]


def test_top_tokens_are_counted_exactly_and_ids_shown_without_tokenizer(known):
    report, _ = compute_stats(known)
    top = [(t["id"], t["count"]) for t in report["top_tokens"]]
    assert top[:3] == [(4, 7), (1, 5), (EOT, 4)]
    assert report["tokenizer"] is None and "no tokenizer" in report["tokenizer_note"]
    assert report["sample"]["ids"] == [1, 2, EOT] and report["sample"]["text"] is None
    text = format_report(report)
    assert "1 2 9" in text and "total" in text


def test_folder_without_manifest_is_read_by_glob(known, tmp_path_factory):
    copy = tmp_path_factory.mktemp("copy") / "shards"
    shutil.copytree(known, copy)
    (copy / "manifest.json").unlink()
    report, _ = compute_stats(copy)
    assert report["total"]["documents"] == 4 and report["total"]["tokens"] == 18


def test_empty_folder_names_make_shards(tmp_path):
    with pytest.raises(InputError, match="make shards"):
        compute_stats(tmp_path)


@pytest.fixture(scope="module")
def stage_shards(tmp_path_factory):
    from pipeline.tokenize_stage import ShardsConfig, make_shards

    root = tmp_path_factory.mktemp("stats")
    make_corpus(root, {"a": synthetic_docs(60, 7, "a")})
    train_tokenizer(root / "corpus", root / "tokenizer", TokenizerConfig(vocab_size=384))
    make_shards(root / "corpus", root / "tokenizer" / "tokenizer.json", root / "shards", ShardsConfig(val_fraction=0.2))
    return root


def test_copied_folder_decodes_with_its_own_tokenizer_copy(stage_shards, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(stage_shards / "shards", copy)
    report = shard_stats(copy, histogram=tmp_path / "h.png")
    first_train = next(d for d in synthetic_docs(60, 7, "a") if split_of(d.id, 0.2) == "train")
    assert report["tokenizer"] == str(copy / "tokenizer.json")
    assert report["sample"]["text"] == (first_train.text + "<|endoftext|>")[:600]
    assert all(t["text"] is not None for t in report["top_tokens"])
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_tokenizer_with_another_hash_is_not_used(stage_shards, tmp_path):
    other = tmp_path / "other"
    make_corpus(other, {"z": synthetic_docs(40, 9, "z")})
    train_tokenizer(other / "corpus", other / "tok", TokenizerConfig(vocab_size=448))
    copy = tmp_path / "copy"
    shutil.copytree(stage_shards / "shards", copy)
    (copy / "tokenizer.json").unlink()
    report, _ = compute_stats(copy, tokenizer=other / "tok" / "tokenizer.json")
    # the manifest's source tokenizer (still in place) is found instead of the wrong explicit one
    assert report["tokenizer"] == str(stage_shards / "tokenizer" / "tokenizer.json")
    assert "hash differs" not in report["tokenizer_note"]
    shutil.move(stage_shards / "tokenizer", tmp_path / "moved")
    try:
        report, _ = compute_stats(copy, tokenizer=other / "tok" / "tokenizer.json")
        assert report["tokenizer"] is None and "hash differs" in report["tokenizer_note"]
        assert report["sample"]["text"] is None
    finally:
        shutil.move(tmp_path / "moved", stage_shards / "tokenizer")


def test_cli_stats_json_and_text(stage_shards, tmp_path):
    from cli import main

    runner = CliRunner()
    png = tmp_path / "lengths.png"
    r = runner.invoke(main, ["stats", str(stage_shards / "shards"), "--json", "--histogram", str(png)])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["total"]["documents"] == 60 and report["histogram"] == str(png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(main, ["stats", str(stage_shards / "shards"), "--no-histogram", "--top", "5"])
    assert r.exit_code == 0, r.output
    assert "most frequent tokens" in r.output and "sample document" in r.output
    r = runner.invoke(main, ["stats", str(tmp_path)])
    assert r.exit_code != 0 and "make shards" in r.output


def test_a_shard_whose_bytes_were_altered_is_refused_unless_the_check_is_skipped(known):
    from pipeline.shard_stats import StatsConfig

    path = known / "val" / "val-00000.arrow"
    data = path.read_bytes()
    run = b"\x04\x00" * 7  # the seven 4s of the val document, as uint16
    assert data.count(run) == 1
    path.write_bytes(data.replace(run, b"\x05\x00" + run[2:]))  # same size, one token changed
    with pytest.raises(InputError, match=r"val-00000.arrow does not match its size and sha256.*--no-verify-shards"):
        compute_stats(known)
    report, _ = compute_stats(known, config=StatsConfig(verify_checksums=False))
    assert report["total"]["tokens"] == 18
    from cli.tokens import stats_cmd

    result = CliRunner().invoke(stats_cmd, [str(known), "--no-histogram"])
    assert result.exit_code == 1 and "sha256" in result.output
    assert CliRunner().invoke(stats_cmd, [str(known), "--no-histogram", "--no-verify-shards"]).exit_code == 0
