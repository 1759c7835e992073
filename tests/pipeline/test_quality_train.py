"""The fastText quality classifier: training on reference vs crawl separates good text from junk on
unseen documents, training is reproducible and resumable, and the filter applies any fastText model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import zstandard

from pipeline.documents import Document
from pipeline.download import run_download
from pipeline.errors import InputError, StageConfigChanged
from pipeline.filters.classifier import QualityClassifierFilter, normalize_text, pareto_draw
from formats.manifest import sha256_file
from pipeline.quality_train import (
    QualityTrainConfig,
    evaluate,
    model_manifest,
    roc_auc,
    train_fasttext,
    train_quality_model,
)
from pipeline.readers import Unreadable, read_file


def read_reference(shared_data: Path) -> list[str]:
    path = shared_data / "reference" / "reference-dev.jsonl.zst"
    if not path.exists():
        pytest.skip(f"{path} not found")
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    return [json.loads(line)["text"] for line in io.TextIOWrapper(raw, encoding="utf-8")]


@pytest.fixture(scope="module")
def reference_texts(shared_data) -> list[str]:
    return read_reference(shared_data)


@pytest.fixture(scope="module")
def crawl_file(shared_data) -> Path:
    path = shared_data / "crawl-dev" / "crawl-00005.warc.wet.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def make_data(tmp_path: Path, crawl_file: Path, reference_texts: list[str], n_ref: int = 300) -> tuple[Path, Path]:
    data = tmp_path / "data"
    run_download(str(crawl_file), 1, data)
    ref = tmp_path / "reference.jsonl"
    ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in reference_texts[:n_ref]), encoding="utf-8")
    return data, ref


def labelled_crawl(shared_data: Path, name: str, kind: str) -> list[str]:
    labels = {}
    with open(shared_data / "crawl-dev" / "labels.jsonl", encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            labels[o["uri"]] = o
    texts = []
    for item in read_file(shared_data / "crawl-dev" / name):
        if isinstance(item, Unreadable):
            continue
        lab = labels[item.url]
        if (kind == "junk" and lab["kind"] == "junk") or (kind == "good_en" and lab["lang"] == "en"):
            texts.append(item.text)
    return texts


def pairwise_auc(pos: list[float], neg: list[float]) -> float:
    """AUC by definition: the share of (positive, negative) pairs ranked right, ties counting 1/2."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_classifier_trained_on_reference_vs_crawl_separates_unseen_reference_from_junk(
    tmp_path, shared_data, crawl_file, reference_texts
):
    data, ref = make_data(tmp_path, crawl_file, reference_texts)
    manifest = train_quality_model(data, QualityTrainConfig(reference=(str(ref),), holdout=0.2, seed=1))
    model = Path(data) / "quality" / "model.bin"
    f = QualityClassifierFilter(model, threshold=manifest["threshold"], normalization="lower-punct")

    unseen_reference = [f.score(t) for t in reference_texts[300:450]]
    junk = [f.score(t) for t in labelled_crawl(shared_data, "crawl-00004.warc.wet.gz", "junk")]
    assert len(junk) >= 100
    assert pairwise_auc(unseen_reference, junk) > 0.9
    # the manifest's own held-out figures are computed and self-consistent
    m = manifest["metrics"]
    assert 0.5 < m["roc_auc"] <= 1.0 and m["recall"] >= m["target_recall"]
    assert manifest["counts"] == {"train_positive": 240, "train_negative": 240, "holdout_positive": 60, "holdout_negative": 60}
    assert manifest["model"]["sha256"] == sha256_file(model)
    assert manifest["reference"][0]["sha256"] == sha256_file(ref)
    assert manifest["reference"][0]["docs"] == 300
    assert model_manifest(model)["threshold"] == manifest["threshold"]


def test_training_is_reproducible_for_a_seed(tmp_path, crawl_file, reference_texts):
    shas = []
    for run in ("a", "b"):
        data, ref = make_data(tmp_path / run, crawl_file, reference_texts, n_ref=150)
        train_quality_model(data, QualityTrainConfig(reference=(str(ref),), seed=7))
        shas.append(sha256_file(data / "quality" / "model.bin"))
    assert shas[0] == shas[1]


def test_rerun_skips_changed_config_is_refused_and_new_reference_retrains(tmp_path, crawl_file, reference_texts):
    data, ref = make_data(tmp_path, crawl_file, reference_texts, n_ref=150)
    config = QualityTrainConfig(reference=(str(ref),))
    first = train_quality_model(data, config)
    model = data / "quality" / "model.bin"
    mtime = model.stat().st_mtime_ns

    assert train_quality_model(data, config) == first
    assert model.stat().st_mtime_ns == mtime  # not retrained

    with pytest.raises(StageConfigChanged, match="negatives_per_positive"):
        train_quality_model(data, QualityTrainConfig(reference=(str(ref),), negatives_per_positive=2.0))
    assert model.exists() and (data / "quality" / "manifest.json").exists()

    ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in reference_texts[150:300]), encoding="utf-8")
    third = train_quality_model(data, config)
    assert third["reference"][0]["sha256"] != first["reference"][0]["sha256"]

    forced = train_quality_model(data, QualityTrainConfig(reference=(str(ref),), negatives_per_positive=2.0), force=True)
    assert forced["counts"]["train_negative"] > forced["counts"]["train_positive"]


def test_too_little_reference_text_is_an_input_error(tmp_path, crawl_file, reference_texts):
    data, ref = make_data(tmp_path, crawl_file, reference_texts, n_ref=5)
    with pytest.raises(InputError, match="at least 20"):
        train_quality_model(data, QualityTrainConfig(reference=(str(ref),)))
    with pytest.raises(InputError, match="does not exist"):
        train_quality_model(data, QualityTrainConfig(reference=(str(tmp_path / "nope.jsonl"),)))


# --- metrics -----------------------------------------------------------------------------------------


def test_roc_auc_known_answers():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1, 0.2], [0.9, 0.8]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5
    assert roc_auc([0.35, 0.8], [0.1, 0.4]) == 0.75  # the scikit-learn documentation's example
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 200).round(1), rng.normal(0, 1, 300).round(1)  # many ties
    assert roc_auc(pos, neg) == pytest.approx(pairwise_auc(list(pos), list(neg)))


def test_threshold_keeps_the_target_share_of_positives():
    pos = np.arange(100) / 100
    m = evaluate(pos, np.array([0.0, 0.5, 0.99]), target_recall=0.98)
    assert m["threshold"] == 0.02 and m["recall"] == 0.98
    assert m["precision"] == pytest.approx(98 / 100)  # 0.5 and 0.99 are false positives
    assert m["recall_at_0.5"] == 0.5


# --- applying a model ----------------------------------------------------------------------------------


def train_tiny(tmp_path: Path, labels=("__label__good", "__label__bad")) -> Path:
    good = ["the river town grew slowly and the people worked in the mills"] * 20
    bad = ["buy cheap pills casino bonus free download crack keygen"] * 20
    examples = [(labels[0], t) for t in good] + [(labels[1], t) for t in bad]
    model = train_fasttext(examples, tmp_path, QualityTrainConfig(reference=("-",), epoch=20, min_count=1))
    out = tmp_path / "plug.bin"
    model.save_model(str(out))
    return out


def test_training_is_reproducible_even_in_a_busy_process(tmp_path):
    # fastText leaves most start weights uninitialised with one thread; ours are seeded, so the same
    # data gives the same model however much memory this process has used and freed before
    import os

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = train_tiny(tmp_path / "a")
    junk = [bytearray(os.urandom(1 << 16)) for _ in range(200)]  # leave non-zero freed memory behind
    del junk
    second = train_tiny(tmp_path / "b")
    assert sha256_file(first) == sha256_file(second)


def test_any_fasttext_model_plugs_in_with_its_label(tmp_path):
    model = train_tiny(tmp_path)
    with pytest.raises(InputError, match=r"__label__good.*--quality-label"):
        QualityClassifierFilter(model)  # default label __label__hq is not in this model
    f = QualityClassifierFilter(model, threshold=0.5, label="__label__good", normalization="none")
    good = f.decide(Document(id="1", text="The river town grew slowly\nand the people worked in the mills"))
    bad = f.decide(Document(id="2", text="buy cheap pills casino bonus"))
    assert good.keep and good.annotations["quality_score"] > 0.5
    assert (bad.keep, bad.reason) == (False, "quality_classifier_low") and bad.score < 0.5
    assert model_manifest(model) is None  # a plug-in model has no manifest


def test_a_quality_model_that_is_not_fasttext_is_refused(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_text("this is not a model")
    with pytest.raises(InputError, match="--quality-model.*not a fastText model"):
        QualityClassifierFilter(bad)


def test_pareto_draws_are_fixed_by_id_and_follow_the_lomax_law():
    assert pareto_draw("doc-1", 9, 0) == pareto_draw("doc-1", 9, 0)
    assert pareto_draw("doc-1", 9, 0) != pareto_draw("doc-1", 9, 1)
    draws = np.array([pareto_draw(f"doc-{i}", 9.0, 0) for i in range(20_000)])
    assert draws.mean() == pytest.approx(1 / 8, rel=0.05)  # Lomax(9) mean 1/(alpha-1)
    assert (draws > 0.5).mean() == pytest.approx(1.5 ** -9, abs=0.005)  # P(X > x) = (1 + x)^-alpha


def test_pareto_mode_keeps_each_document_with_gpt3s_probability(tmp_path):
    model = train_tiny(tmp_path)
    f = QualityClassifierFilter(model, label="__label__good", normalization="none", pareto_alpha=9.0)
    for text in ("the river town grew slowly", "buy cheap pills casino bonus"):
        score = f.score(text)
        kept = np.mean([f.decide(Document(id=str(i), text=text)).keep for i in range(4000)])
        # keep when Lomax(9) > 1 - score: probability (1 + 1 - score)^-9
        assert kept == pytest.approx((2.0 - score) ** -9.0, abs=0.03)


def test_normalisation_splits_punctuation_and_lowercases():
    assert normalize_text("Hello,  World!\nNew line.") == "hello , world ! new line ."
    assert normalize_text("A\nB", "none") == "A B"
