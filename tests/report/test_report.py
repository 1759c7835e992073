"""`crawlgpt report`: one self-contained page built from what the stages wrote. Checked as a browser sees it
(Debian's chromium, headless; skipped where it is not installed): it loads from file:// with no console
message and no network request, every section whose stage ran is there, and crawl text holding <script>
is shown, not run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.decontaminate import DecontaminateConfig, run_decontaminate
from pipeline.dedup.stage import run_dedup
from pipeline.documents import read_documents
from pipeline.download import run_download
from pipeline.errors import InputError
from pipeline.filter_stage import FilterConfig, run_filter
from pipeline.pii import run_pii
from report import build_report
from report.dedup import word_diff
from report.filters import threshold
from report.page import CSP, esc
from report.runs import _series
from report.svg import histogram
from pipeline.stage import stage_documents

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")

PWNED = "<script>document.title='PWNED'</script>"
HOSTILE = [PWNED, "</pre><script>document.title='PWNED'</script><pre>",
           "<img src=\"http://127.0.0.1:9/beacon.png\"> <style>body{background:url(http://127.0.0.1:9/b)}</style>",
           "Mail jane.doe@gmail.com or visit 93.184.216.34 " + "word " * 5]


@pytest.fixture(scope="module")
def data(shared_data: Path, lid_model_path: Path, tmp_path_factory) -> Path:
    """A DATA folder made by the real stages (download, filter, dedup, pii) from the smallest dev-crawl file
    and a JSONL file of hostile pages, which the file order puts first among the rejected."""
    src = shared_data / "crawl-dev" / "crawl-00005.warc.wet.gz"
    if not src.exists():
        pytest.skip(f"{src} not found")
    raw = tmp_path_factory.mktemp("raw")
    shutil.copy(src, raw / src.name)
    (raw / "a-hostile.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in HOSTILE))
    data = tmp_path_factory.mktemp("data")
    run_download(str(raw), 0, data)
    run_filter(data, FilterConfig(lid_model=str(lid_model_path)))
    run_dedup(data)
    first = next(d for p in stage_documents(data / "corpus") for d in read_documents(p))  # a page that leaked
    bench = raw.parent / "leaked.jsonl"
    bench.write_text(json.dumps({"passage": first.text}) + "\n")
    run_decontaminate(data, DecontaminateConfig(benchmarks=(str(bench),)))
    run_pii(data)
    run = data / "runs" / "r1"
    run.mkdir(parents=True)
    records = [{"kind": "train", "step": s, "loss": 8 - s / 10} for s in range(1, 11)]
    records.append({"kind": "val", "step": 10, "val_loss": 7.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "benchmark.json").write_text(json.dumps({"results": [{"task": "piqa", "items": 50, "acc": 0.52,
                                                                  "chance": 0.5}]}))
    return data


def browse(page: Path, tmp_path: Path) -> tuple[str, str, list[str]]:
    """(the DOM after load, chromium's console messages, URLs the page asked for) of `page` from file://."""
    netlog = tmp_path / "net.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    console = "\n".join(line for line in done.stderr.splitlines() if "CONSOLE" in line)
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = [e["params"]["url"] for e in log["events"]
            if e["type"] == start_job and "url" in e.get("params", {})
            and e["params"].get("initiator") != "not an origin"  # the browser's own background requests
            and not e["params"]["url"].startswith(("file:", "data:"))]
    return done.stdout, console, urls


def test_the_page_holds_every_section_whose_stage_ran(data):
    result = build_report(data)
    assert result.path == data / "report.html"
    assert result.sections == ("funnel", "languages", "distributions", "dropped", "dedup", "runs")  # no shards
    page = result.path.read_text()
    assert f'content="{CSP}"' in page
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "<img" not in page and "<style>body" not in page  # only as text
    assert "PII replaced (decontaminated in)" in page and "jane.doe@gmail.com" not in page.split("Dropped")[0]
    assert "<td>decontaminate</td>" in page and "<b>benchmark_overlap_leaked</b>" in page


def test_the_page_is_small_and_a_rebuild_gives_the_same_bytes(data):
    first = build_report(data).path.read_bytes()
    assert len(first) < 2_000_000
    assert build_report(data).path.read_bytes() == first


@needs_chromium
def test_in_a_browser_no_console_message_no_request_and_crawl_text_does_not_run(data, tmp_path):
    page = build_report(data).path
    dom, console, urls = browse(page, tmp_path)
    assert "<title>crawlgpt report" in dom and "PWNED</title>" not in dom
    assert console == "" and urls == []
    for section in ("funnel", "languages", "distributions", "dropped", "dedup", "runs"):
        assert f'<section id="{section}">' in dom
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom  # shown as text


@needs_chromium
def test_the_browser_check_sees_a_script_run_and_a_request_made(tmp_path):
    control = tmp_path / "control.html"  # what the checks above must catch, without our page's defences
    control.write_text(f"<!DOCTYPE html><html><head><title>t</title></head><body>{PWNED}"
                       "<img src=\"http://127.0.0.1:9/beacon.png\"><script>console.error('boom')</script></body></html>")
    dom, console, urls = browse(control, tmp_path)
    assert "<title>PWNED</title>" in dom and "boom" in console and urls == ["http://127.0.0.1:9/beacon.png"]


def test_a_folder_without_finished_stages_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no finished stage"):
        build_report(tmp_path)


def test_cli_writes_the_page_and_says_where(data):
    from cli import main

    result = CliRunner().invoke(main, ["report", "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert str(data / "report.html") in result.output and "funnel" in result.output


def test_thresholds_come_from_the_recorded_config():
    m = {"config": {"min_lang_score": 0.65, "gopher_quality": {"min_words": 50},
                    "fineweb": {"max_short_line_ratio": 0.67}, "c4": {"min_sentences": 5, "policy_lines": True}},
         "upstream": {"quality_settings": {"threshold": 0.25}}}
    assert threshold("gopher_min_words", m) == 50
    assert threshold("fineweb_max_short_line_ratio", m) == 0.67
    assert threshold("c4_min_sentences", m) == 5
    assert threshold("lang_low_score", m) == 0.65
    assert threshold("quality_classifier_low", m) == 0.25
    assert threshold("c4_curly_bracket", m) is None
    assert threshold("c4_policy_lines", m) is None  # a switch, not a threshold


def test_word_diff_marks_what_differs_and_escapes_it():
    out = word_diff("the <b>cat</b> sat on the mat", "the <b>cat</b> slept on the mat")
    assert "<del>sat</del>" in out and "<ins>slept</ins>" in out
    assert "&lt;b&gt;cat&lt;/b&gt;" in out and "<b>" not in out


def test_histogram_draws_the_threshold_inside_the_range():
    chart = histogram([0.1, 0.2, 0.2, 0.9], "x", threshold=0.5, bins=4)
    assert chart.count("<rect") == 4 and "threshold 0.5" in chart
    line = re.search(r'<line x1="([\d.]+)"', chart)
    assert line and 30 < float(line.group(1)) < 30 + 300  # between the first and the last bar
    assert esc("<a>") == "&lt;a&gt;"


def test_alignment_metrics_get_their_own_chart_and_benchmarks_none():
    metrics = [{"kind": "train", "step": 1, "loss": 2.0, "reward_mean": 0.1, "kl": 0.01, "lr": 1e-3},
               {"kind": "val", "step": 1, "val_loss": 2.1, "val_accuracy": 0.6},
               {"kind": "benchmark", "step": 1, "piqa_acc": 0.5}]
    losses, others = _series(metrics)
    assert losses == {"loss": [(1, 2.0)], "val_loss": [(1, 2.1)]}
    assert others == {"reward_mean": [(1, 0.1)], "kl": [(1, 0.01)], "val_accuracy": [(1, 0.6)]}

