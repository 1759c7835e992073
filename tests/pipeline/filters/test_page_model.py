"""The page model: a JSON logistic regression over the chain's signals, trained and cross-validated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main as cli
from pipeline.download import run_download
from pipeline.errors import InputError
from pipeline.filter_stage import WEB_RULES, FilterConfig, chain_names, run_filter
from pipeline.filters.page_model import (
    BUNDLED_PAGE_MODEL,
    FEATURES,
    PageModel,
    fit_page_model,
    load_page_model,
    page_features,
    save_page_model,
)
from pipeline.filters.text_stats import TextStats
from pipeline.page_model_train import PageModelTrainConfig, PageSignals, cross_validate

from page_fixtures import PROSE, SHORT


def test_a_saved_model_loads_back_equal(tmp_path):
    model = PageModel(features=("log_words", "lang_score"), mean=(1.0, 0.5), scale=(2.0, 0.1), weights=(0.3, -1.0),
                      bias=0.25, threshold=0.4, info={"note": "x"})
    save_page_model(model, tmp_path / "m.json")
    back = load_page_model(tmp_path / "m.json")
    assert back == model and back.info == {"note": "x"}
    values = {"log_words": 3.0, "lang_score": 0.9}
    z = 0.3 * (3.0 - 1.0) / 2.0 - 1.0 * (0.9 - 0.5) / 0.1 + 0.25  # the logistic model by hand
    assert back.probability(values) == pytest.approx(1 / (1 + math.exp(-z)))


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not a JSON page model"),
        (json.dumps({"weights": [1]}), 'no "format"'),
        (json.dumps({"format": "crawlgpt-page-model", "version": 9}), "version 9"),
        (json.dumps({"format": "crawlgpt-page-model", "version": 1, "features": ["x"], "mean": [0], "scale": [1],
                     "weights": [1], "bias": 0}), r"features \['x'\]"),
        (json.dumps({"format": "crawlgpt-page-model", "version": 1, "features": ["log_words"]}), "lacks or mangles"),
    ],
)
def test_a_bad_model_file_is_refused_with_the_fix(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        load_page_model(path)
    assert "page-model-train" in str(err.value)


def test_the_bundled_model_loads_and_records_its_cross_validated_figures():
    model = load_page_model(BUNDLED_PAGE_MODEL)
    assert "quality_score" not in model.features  # it must not depend on the user's quality model
    cv = model.info["cross_validated"]["all"]["balanced_accuracy"]
    assert len(cv) == 2 and 0.5 < cv[0] <= 1 and cv[1] >= 0


def test_features_are_the_measured_statistics():
    text = "One two three.\nFour five six seven\n# eight"
    f = page_features(TextStats(text), lang_score=0.9)
    assert f["log_words"] == pytest.approx(math.log1p(8))
    assert f["line_punct_ratio"] == pytest.approx(1 / 3)
    assert f["symbol_word_ratio"] == pytest.approx(1 / 8)
    assert f["lang_score"] == 0.9 and "quality_score" not in f
    assert set(page_features(TextStats(text), 0.9, 0.2)) == set(FEATURES)


def separable(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([1, 0] * (n // 2))
    x = np.column_stack([np.where(y == 1, 2.0, -2.0) + rng.normal(0, 0.5, n), rng.normal(0, 1, n)])
    return x, y


def test_fitting_finds_the_informative_feature_and_separates_the_classes():
    x, y = separable()
    model = fit_page_model(x, y, ("log_words", "lang_score"), l2=1.0)
    assert model.weights[0] > 1.0 and abs(model.weights[1]) < model.weights[0] / 3
    assert ((model.probabilities(x) >= 0.5) == (y == 1)).all()


def test_class_weights_make_the_fit_ignore_how_many_of_each_class_there_are():
    x, y = separable()
    more_bad = np.vstack([x, x[y == 0], x[y == 0]]), np.concatenate([y, y[y == 0], y[y == 0]])
    a = fit_page_model(x, y, ("log_words", "lang_score"), l2=1.0)
    b = fit_page_model(*more_bad, ("log_words", "lang_score"), l2=1.0)
    # tripling the bad pages shifts the standardisation, not the balance: the same pages are kept
    assert ((a.probabilities(x) >= 0.5) == (b.probabilities(x) >= 0.5)).all()


def test_cross_validation_of_a_separable_problem_is_perfect_and_of_noise_is_chance():
    x, y = separable()
    signals = PageSignals(("log_words", "lang_score"), x, np.ones(len(y), dtype=bool))
    cv = cross_validate(signals, y, PageModelTrainConfig(repeats=3))
    assert cv["all"]["balanced_accuracy"] == [1.0, 0.0]
    noise = PageSignals(("log_words",), np.random.default_rng(1).normal(size=(200, 1)), np.ones(200, dtype=bool))
    labels = np.array([1, 0] * 100)
    ba = cross_validate(noise, labels, PageModelTrainConfig(repeats=3))["all"]["balanced_accuracy"][0]
    assert 0.35 < ba < 0.65
    # the chain's own drops count: a page the rules drop stays dropped whatever the model says
    rules_drop_all_bad = PageSignals(("log_words",), noise.matrix, labels == 1)
    assert cross_validate(rules_drop_all_bad, labels, PageModelTrainConfig(repeats=2))["all"]["bad_dropped"] == [1.0, 0.0]


def labelled_file(path: Path) -> Path:
    good = [PROSE.replace("river", w) for w in ("harbour", "mill", "market", "valley", "hill", "bay", "lake",
                                                 "forest", "border", "island")]
    bad = [SHORT.replace("day", w) for w in ("week", "night", "evening", "morning", "year", "month", "hour",
                                             "while", "time", "season")]
    rows = [{"text": t, "label": 1} for t in good] + [{"text": t, "label": 0} for t in bad]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_page_model_train_prints_cross_validated_figures_and_the_model_filters(tmp_path, lid_model_path):
    labels = labelled_file(tmp_path / "labels.jsonl")
    out = tmp_path / "model.json"
    result = CliRunner().invoke(cli, [
        "page-model-train", "--data", str(tmp_path / "data"), "--labels", str(labels), "--out", str(out),
        "--lid-model", str(lid_model_path), "--quality-model", "none", "--rules", "", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert "1.000 ± 0.000" in result.output  # long prose vs one-line pages: separable, in every fold
    model = load_page_model(out)
    assert model.info["cross_validated"]["all"]["pages"] == 20 and model.info["labels"]["file"] == "labels.jsonl"

    # the model as the last filter of the stage: the chain names it, the manifest fingerprints it
    raw = tmp_path / "raw"
    raw.mkdir()
    labels.rename(raw / "pages.jsonl")
    data = tmp_path / "data"
    run_download(str(raw), 0, data)
    config = FilterConfig(lid_model=str(lid_model_path), rules=WEB_RULES, page_model=str(out))
    assert chain_names(config) == ["language", "gopher_quality", "gopher_repetition", "page_model"]
    manifest = run_filter(data, config)
    assert manifest["totals"]["kept"] == 10
    assert manifest["totals"]["dropped"] == {"gopher_min_words": 10}  # the rules come first
    assert manifest["upstream"]["page_model"]


def test_the_cli_default_is_the_bundled_model_with_the_gopher_rules(tmp_path, lid_model_path):
    labels = labelled_file(tmp_path / "labels.jsonl")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["evaluate-filter", "--data", str(tmp_path / "data"), "--labels", str(labels),
                                      "--lid-model", str(lid_model_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    chain = json.loads(out.read_text())["chain"]
    assert chain["page_model"] == str(BUNDLED_PAGE_MODEL) and chain["rules"] == list(WEB_RULES)


def test_a_data_folder_filtered_before_page_models_goes_on_with_its_recorded_chain(tmp_path, lid_model_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    labelled_file(raw / "pages.jsonl")
    data = tmp_path / "data"
    run_download(str(raw), 0, data)
    args = ["filter", "--data", str(data), "--workers", "1", "--lid-model", str(lid_model_path)]
    result = CliRunner().invoke(cli, args + ["--page-model", "none", "--quality-model", "none"])
    assert result.exit_code == 0, result.output
    manifest_path = data / "filtered" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["rules"] == ["gopher_quality", "c4", "fineweb", "gopher_repetition"]  # no page model
    for key in ("page_model", "page_threshold"):  # as a run made before page models existed recorded it
        manifest["config"].pop(key)
    manifest_path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "1 already done" in result.output
    assert "page_model" not in json.loads(manifest_path.read_text())["chain"]


def test_page_model_train_measures_the_chain_filter_runs_with_a_page_model(tmp_path, lid_model_path):
    out = tmp_path / "model.json"
    result = CliRunner().invoke(cli, [
        "page-model-train", "--data", str(tmp_path / "data"), "--labels", str(labelled_file(tmp_path / "l.jsonl")),
        "--out", str(out), "--lid-model", str(lid_model_path), "--quality-model", "none", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert load_page_model(out).info["chain"]["rules"] == list(WEB_RULES)


def test_the_english_page_model_is_not_the_default_for_other_languages(tmp_path, lid_model_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["evaluate-filter", "--data", str(tmp_path / "data"), "--labels",
                                      str(labelled_file(tmp_path / "l.jsonl")), "--langs", "en,de",
                                      "--lid-model", str(lid_model_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    chain = json.loads(out.read_text())["chain"]
    assert chain["page_model"] is None and len(chain["rules"]) == 4
