"""evaluate-filter: the filter chain against labelled pages, with figures worked out by hand."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main as cli
from pipeline.errors import InputError
from pipeline.filter_eval import KEPT, evaluate_labelled, plot_score_distributions, read_labelled_pages
from pipeline.filter_stage import RULES, FilterConfig
from pipeline.filters.page_model import PageModel, save_page_model
from page_fixtures import PROSE, SHORT

# Ordinary prose that passes every rule: six different sentences, one per line, ~130 words.
LOREM = PROSE + "Lorem ipsum dolor sit amet, this line was left by the designer of the page.\n"

# good: kept, kept, dropped (too short); bad: dropped (too short), dropped (lorem ipsum)
PAGES = [
    {"text": PROSE, "label": 1, "unanimous": True},
    {"text": PROSE.replace("river", "harbour"), "label": 1, "unanimous": False},
    {"text": SHORT, "label": 1, "unanimous": False},
    {"text": SHORT.replace("good", "fine"), "label": 0, "unanimous": True},
    {"text": LOREM, "label": 0, "unanimous": True},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def labels(tmp_path) -> Path:
    return write_jsonl(tmp_path / "labels.jsonl", PAGES)


@pytest.fixture()
def rules_only(lid_model_path) -> FilterConfig:
    return FilterConfig(lid_model=str(lid_model_path), rules=RULES)


def test_figures_match_the_hand_count(labels, rules_only):
    report = evaluate_labelled(rules_only, read_labelled_pages(labels), ("unanimous",))
    s = report["all"]
    assert (s["good"], s["bad"]) == (3, 2)
    assert s["good_kept"] == pytest.approx(2 / 3) and s["bad_dropped"] == 1.0
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["precision"] == 1.0  # both kept pages are good
    assert s["reasons"] == {KEPT: {"good": 2, "bad": 0}, "gopher_min_words": {"good": 1, "bad": 1},
                            "c4_lorem_ipsum": {"good": 0, "bad": 1}}
    assert s["roc_auc"] == {}  # no scorer in a rules-only chain
    unanimous = report["slices"]["unanimous=true"]  # good kept 1/1, bad dropped 2/2
    assert (unanimous["pages"], unanimous["balanced_accuracy"]) == (3, 1.0)
    mixed = report["slices"]["unanimous=false"]  # two good pages, one kept; no bad page
    assert mixed["good_kept"] == 0.5 and math.isnan(mixed["bad_dropped"])


def one_feature_model(path: Path, min_words: int) -> Path:
    """A page model keeping pages of at least `min_words` words: P = sigmoid(log1p(words) - log1p(min))."""
    model = PageModel(features=("log_words",), mean=(0.0,), scale=(1.0,), weights=(1.0,),
                      bias=-math.log1p(min_words), threshold=0.5)
    save_page_model(model, path)
    return path


def test_a_page_model_decides_last_and_its_score_gets_a_roc_auc(tmp_path, labels, lid_model_path):
    # no rules: the page model alone keeps pages of >= 100 words; the 11-word pages go, the long ones stay
    config = FilterConfig(lid_model=str(lid_model_path), rules=(),
                          page_model=str(one_feature_model(tmp_path / "m.json", 100)))
    s = evaluate_labelled(config, read_labelled_pages(labels))["all"]
    assert s["reasons"] == {KEPT: {"good": 2, "bad": 1}, "page_model_low": {"good": 1, "bad": 1}}
    # page scores grow with length: good (long, long, short) vs bad (short, longest): of the 6 good/bad
    # pairs, good wins 2 x 1 against the short bad page, the short good page ties it (1/2), and only
    # nothing beats the lorem page: (2 + 0.5) / 6
    assert s["roc_auc"]["page_score"] == pytest.approx(2.5 / 6)
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_the_score_plot_is_a_png(tmp_path, labels, lid_model_path):
    config = FilterConfig(lid_model=str(lid_model_path), rules=(),
                          page_model=str(one_feature_model(tmp_path / "m.json", 100)))
    report = evaluate_labelled(config, read_labelled_pages(labels))
    out = plot_score_distributions(report, tmp_path / "scores.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([PAGES[0], "{not json"], r"labels\.jsonl:2 is not JSON"),
        ([PAGES[0], [1, 2]], r"labels\.jsonl:2 is a JSON list"),
        ([PAGES[0], {"body": "x", "label": 1}], r"labels\.jsonl:2 has no string field 'text'.*--text-field"),
        ([PAGES[0], {"text": "x", "label": 2}], r"labels\.jsonl:2: 'label' is 2; expected 1 \(good\) or 0 \(bad\)"),
        ([PAGES[0], {"text": "x", "label": True}], r"'label' is True"),
        ([PAGES[0], PAGES[1]], r"every page .* is labelled good \(1\)"),
        ([], r"holds no pages"),
    ],
)
def test_bad_label_files_are_refused_naming_the_line(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        read_labelled_pages(write_jsonl(tmp_path / "labels.jsonl", rows))


def test_a_label_file_that_is_not_utf8_or_a_cut_gzip_is_refused(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(PAGES[0]).encode() + b"\n" + '{"text": "café", "label": 0}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.jsonl is not UTF-8 text.*save the file as UTF-8"):
        read_labelled_pages(latin)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(("".join(json.dumps(p) + "\n" for p in PAGES * 50)).encode())[:200])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz cannot be read after line"):
        read_labelled_pages(cut)


def test_a_missing_label_file_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"--labels: .*nope\.jsonl does not exist"):
        read_labelled_pages(tmp_path / "nope.jsonl")


def test_cli_prints_the_figures_writes_json_and_refuses_a_bad_file_without_a_traceback(tmp_path, labels,
                                                                                         lid_model_path):
    out = tmp_path / "eval.json"
    args = ["evaluate-filter", "--data", str(tmp_path / "data"), "--labels", str(labels), "--quality-model", "none",
            "--page-model", "none", "--lid-model", str(lid_model_path), "--slice", "unanimous", "--json", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "balanced accuracy 0.833" in result.output and "c4_lorem_ipsum" in result.output
    saved = json.loads(out.read_text())
    assert saved["all"]["reasons"]["gopher_min_words"] == {"good": 1, "bad": 1}
    assert saved["chain"]["rules"] == list(RULES)  # without a page model, all four families by default
    assert saved["slices"]["unanimous=false"]["bad_dropped"] is None  # NaN written as null

    bad = write_jsonl(tmp_path / "bad.jsonl", [PAGES[0], {"text": "x", "label": "yes"}])
    result = CliRunner().invoke(cli, args[:4] + [str(bad)] + args[5:11])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "bad.jsonl:2: 'label' is 'yes'" in result.output

    result = CliRunner().invoke(cli, args[:11] + ["--slice", "nosuchfield"])
    assert result.exit_code == 1 and "no page has the field 'nosuchfield'" in result.output
