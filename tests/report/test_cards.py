"""Cards in the Hugging Face format, parsed back with huggingface_hub: the dataset card `make corpus` writes
(DATA/corpus/README.md) and the model card `crawlgpt export` writes beside the weights, whose model-index
holds the benchmark results of the exported checkpoint under lm-evaluation-harness's names."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from lm_fixtures import tiny_config, train_tiny_tokenizer, write_tiny_checkpoint
from report.dataset_card import size_category, write_dataset_card, yaml_block
from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.pii import run_pii
from corpus_fixtures import finished_stage

hub = pytest.importorskip("huggingface_hub")
yaml = pytest.importorskip("yaml")


def test_yaml_block_reads_back_as_the_same_structure():
    value = {"a": "x: y # z", "list": ["é", "'q'", "\"dq\""], "n": 3, "f": 0.25, "t": True, "none": None,
             "nested": [{"k": [1, 2], "m": {"deep": "v"}}, "s"], "empty": []}
    assert yaml.safe_load(yaml_block(value)) == value


@pytest.mark.parametrize("n, name", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (123_456, "100K<n<1M")])
def test_size_category(n, name):
    assert size_category(n) == name


@pytest.fixture()
def data(tmp_path):
    finished_stage(tmp_path, "corpus", {"a": [Document(f"a-{i}", f"Doc {i} mail x{i}@mail.org") for i in range(1200)]})
    run_pii(tmp_path)
    return tmp_path


def test_the_dataset_card_parses_and_describes_the_corpus(data):
    path = write_dataset_card(data)
    assert path == data / "corpus" / "README.md"
    card = hub.DatasetCard.load(path)
    meta = card.data.to_dict()
    assert meta["size_categories"] == ["1K<n<10K"]
    assert meta["configs"][0]["data_files"][0]["path"] == "redacted/*.parquet"
    assert "e-mail addresses (1,200)" in card.text and "load_dataset(\"parquet\"" in card.text
    assert "| pii | 1,200 | 1,200 | none |" in card.text


def test_a_dataset_card_needs_a_finished_stage(tmp_path):
    with pytest.raises(InputError, match="make corpus"):
        write_dataset_card(tmp_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    tok = train_tiny_tokenizer(root / "tok" / "tokenizer.json")
    data = root / "data"
    ckpt = write_tiny_checkpoint(data / "runs" / "r", tok, tiny_config(tie=True), step=7)
    return data, tok, ckpt


def _export(data, tok, out):
    from cli import main

    result = CliRunner().invoke(main, ["export", "--data", str(data), "--run", "r", "--out", str(out),
                                       "--tokenizer", str(tok), "--overwrite"])
    assert result.exit_code == 0, result.output
    return hub.ModelCard.load(out / "README.md")


def test_the_model_card_holds_the_checkpoints_benchmarks_under_lm_eval_names(checkpoint, tmp_path):
    data, tok, ckpt = checkpoint
    run = data / "runs" / "r"
    records = [{"kind": "train", "step": 7, "loss": 5.0, "tokens_seen": 7168},
               {"kind": "benchmark", "step": 3, "piqa_acc": 0.9},  # an earlier checkpoint's: not reported
               {"kind": "benchmark", "step": 7, "piqa_acc": 0.55, "piqa_acc_norm": 0.53, "lambada_acc": 0.01,
                "lambada_perplexity": 812.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    card = _export(data, tok, tmp_path / "hf")
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == {("piqa", "acc"): 0.55, ("piqa", "acc_norm"): 0.53, ("lambada_openai", "acc"): 0.01,
                   ("lambada_openai", "perplexity"): 812.5}
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "7,168 tokens" in card.text and "step 7" in card.text and "| piqa | ? | acc | 0.55 | 0.5 |" in card.text
    assert "Not recorded (no DATA folder" in card.text


def test_a_benchmark_json_older_than_the_checkpoint_is_not_reported(checkpoint, tmp_path):
    data, tok, ckpt = checkpoint
    run = data / "runs" / "r"
    (run / "metrics.jsonl").write_text("")
    bench = run / "benchmark.json"
    bench.write_text(json.dumps({"model": str(run), "results": [{"task": "piqa", "items": 9, "acc": 0.6}]}))
    old = time.time() - 3600
    os.utime(bench, (old, old))
    card = _export(data, tok, tmp_path / "old")
    assert card.data.eval_results is None and "No benchmark results" in card.text
    os.utime(bench, None)  # benchmarked after the checkpoint was written: reported
    card = _export(data, tok, tmp_path / "new")
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("piqa", 0.6)]


def test_the_model_card_names_the_hardware_a_checkpoint_records(checkpoint, tmp_path):
    from train.checkpoint import load_checkpoint, save_checkpoint

    data, tok, ckpt = checkpoint
    payload = load_checkpoint(ckpt)
    payload["hardware"] = {"device": "NVIDIA H200", "device_type": "cuda", "world_size": 8}
    save_checkpoint(ckpt, payload)
    card = _export(data, tok, tmp_path / "hw")
    assert "| hardware | 8 x NVIDIA H200 (cuda) |" in card.text

