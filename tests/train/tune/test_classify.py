"""Classification fine-tuning on CPU with a tiny model: readers, the stratified hash split, metrics
with known answers, the classifier head on the one loop, exact resume, and clear bad-input messages."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from finetune_base import FIXTURES, finetune_data  # noqa: F401 (a fixture)
from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
from train.checkpoint import latest_checkpoint, load_checkpoint
from train.tune.classify_data import ClassifyDataError, read_labelled, split_indices, split_of
from train.tune.classify_report import class_report, format_report

pytest.importorskip("tokenizers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(finetune_data) -> Path:
    return finetune_data


def configs(data: Path, run: str, steps: int = 8, **changes):
    from train.tune.classify import ClassifyConfig

    tconfig = TrainConfig(
        run_dir=str(data / "runs" / run), max_steps=steps, preset="tiny", global_batch_tokens=2 * 8 * 32,
        device="cpu", seed=0,
        data=DataConfig(shards_dir="", seq_len=32, micro_batch_size=8, prefetch_batches=0),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=1),
        eval=EvalConfig(every_steps=4, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False))
    config = ClassifyConfig(base_checkpoint=str(data / "runs" / "base"), data_path=str(FIXTURES / "classes.tsv"),
                            tokenizer_path=str(data / "tokenizer" / "tokenizer.json"), val_share=0.15,
                            test_share=0.25, **changes)
    return tconfig, config


# --------------------------------------------------------------------------------------------------
# Reading and splitting


def test_tsv_csv_and_jsonl_are_read_with_configurable_columns(tmp_path):
    tsv = read_labelled(FIXTURES / "classes.tsv")
    assert len(tsv.texts) == 120 and set(tsv.labels) == {"color", "word"}
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('kind,body\nspam,"win, now"\nham,hello\n')
    got = read_labelled(csv_path, text_column="body", label_column="kind")
    assert got.texts == ["win, now", "hello"] and got.labels == ["spam", "ham"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"t": "a b", "y": 1}\n{"t": "c", "y": 0}\n{"t": "", "y": 1}\n{"t": "d"}\n')
    got = read_labelled(jsonl, text_column="t", label_column="y")
    assert got.labels == ["1", "0"] and got.skipped == {"missing_text": 1, "missing_label": 1}


def test_bad_labelled_files_are_clear_messages(tmp_path):
    one = tmp_path / "one.tsv"
    one.write_text("label\ttext\nham\thello\nham\tbye\n")
    with pytest.raises(ClassifyDataError, match=r"has 1 class\(es\) \(ham\).*at least two"):
        read_labelled(one)
    with pytest.raises(ClassifyDataError, match=r"no column 'body' \(columns: label, text\); pass --text-column"):
        read_labelled(one, text_column="body")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n[1]\n')
    with pytest.raises(ClassifyDataError, match=r"bad\.jsonl:2: is a JSON list"):
        read_labelled(bad)
    txt = tmp_path / "x.txt"
    txt.write_text("label\ttext\n")
    with pytest.raises(ClassifyDataError, match="cannot tell the format of .*x.txt.*--format tsv, csv or jsonl"):
        read_labelled(txt)


def test_the_split_is_by_hash_stratified_and_stable():
    data = read_labelled(FIXTURES / "classes.tsv")
    splits = split_indices(data, 0.15, 0.25)
    assert sorted(i for idx in splits.values() for i in idx) == list(range(len(data.texts)))
    for name, idx in splits.items():  # each split holds both classes
        assert {data.labels[i] for i in idx} == {"color", "word"}
    assert split_of("same text", 0.15, 0.25) == split_of("same text", 0.15, 0.25)


def test_metrics_have_known_answers():
    rep = class_report([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0], ["ham", "spam"])
    assert rep.confusion == [[2, 1], [1, 2]] and rep.accuracy == pytest.approx(4 / 6)
    assert rep.precision == pytest.approx([2 / 3, 2 / 3]) and rep.recall == pytest.approx([2 / 3, 2 / 3])
    perfect = class_report([0, 1, 1], [0, 1, 1], ["a", "b"])
    assert perfect.f1 == [1.0, 1.0]
    assert "confusion (rows: true, columns: predicted)" in format_report(rep, "t")


def test_sms_spam_is_read_with_its_imbalance(shared_data):
    path = shared_data / "classify" / "sms-spam.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = read_labelled(path)
    assert data.class_counts() == {"ham": 4827, "spam": 747}


# --------------------------------------------------------------------------------------------------
# Training


def test_classification_learns_and_reports_on_the_test_split_beside_fasttext(data):
    from train.tune.classify import classify_texts, run_classify

    tconfig, config = configs(data, "cls", steps=20)
    result = run_classify(tconfig, config)
    run = data / "runs" / "cls"
    assert result.report.accuracy > 0.8
    assert result.baseline is not None and result.baseline.accuracy > 0.8
    report = json.loads((run / "classify-report.json").read_text())
    assert set(report["test"]["per_class"]) == {"color", "word"} and (run / "confusion.png").is_file()
    payload = load_checkpoint(latest_checkpoint(run))
    assert payload["kind"] == "classify" and payload["classes"] == ["color", "word"]
    labels = classify_texts(run, ["red blue green", "cat dog tree"], data / "tokenizer" / "tokenizer.json")
    assert [label for label, _ in labels] == ["color", "word"] and all(0.5 < p <= 1 for _, p in labels)


def test_training_only_the_last_blocks_leaves_the_others_unchanged(data):
    from train import train
    from train.tune.classify import ClassifyObjective

    tconfig, config = configs(data, "cls-last", steps=2, train_blocks=1)
    train(tconfig, objective=ClassifyObjective(config))
    tuned = load_checkpoint(latest_checkpoint(data / "runs" / "cls-last"))["model"]
    base = load_checkpoint(latest_checkpoint(data / "runs" / "base"))["model"]
    assert torch.equal(tuned["gpt.blocks.0.attn.wq.weight"], base["blocks.0.attn.wq.weight"])
    assert torch.equal(tuned["gpt.tok_emb.weight"], base["tok_emb.weight"])
    assert not torch.equal(tuned["gpt.blocks.1.attn.wq.weight"], base["blocks.1.attn.wq.weight"])


def test_resumed_classification_reaches_bitwise_the_same_weights(data):
    from train import train
    from train.tune.classify import ClassifyObjective

    full_cfg, config = configs(data, "cls-full", steps=6)
    train(full_cfg, objective=ClassifyObjective(config))

    def stop(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    split_cfg, _ = configs(data, "cls-split", steps=6)
    assert train(split_cfg, on_step=stop, objective=ClassifyObjective(config)).interrupted
    train(split_cfg.replace(resume=True), objective=ClassifyObjective(config))
    a = load_checkpoint(latest_checkpoint(data / "runs" / "cls-full"))["model"]
    b = load_checkpoint(latest_checkpoint(data / "runs" / "cls-split"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_base_checkpoint_is_not_a_classifier_and_a_classifier_is_not_a_base(data):
    from train.tune.classify import ClassifyObjective, classify_texts
    from train.errors import CheckpointKindError

    with pytest.raises(CheckpointKindError, match="not a classifier; train one with `crawlgpt classify-train"):
        classify_texts(data / "runs" / "base", ["x"], data / "tokenizer" / "tokenizer.json")
    run = data / "runs" / "cls"
    if latest_checkpoint(run) is None:
        pytest.skip("needs the classifier of the previous test")
    _, config = configs(data, "cls-on-cls")
    with pytest.raises(CheckpointKindError, match="it is a classifier"):
        ClassifyObjective(type(config)(**{**config.__dict__, "base_checkpoint": str(run)})).prepare()
