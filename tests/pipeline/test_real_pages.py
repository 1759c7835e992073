"""Readers, language ID and rules on real web files: every page counted, nothing crashes.

The files are in ../shared/data/web (skipped when absent): the Dolma sample of 697 unfiltered
CC-MAIN-2019-30 pages in many languages (JSONL.gz, 27 with empty text), and two real CC-MAIN-2016-50
WET files, one of 25 records and one of 16 whose last gzip member is cut off.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.download import run_download
from pipeline.filter_stage import WEB_RULES, FilterConfig, run_filter
from pipeline.filters.page_model import BUNDLED_PAGE_MODEL
from pipeline.readers import Unreadable, read_file

DOLMA = "cc-main-2019-30-dolma-697.jsonl.gz"
WET_25 = "cc-main-2016-50-25-records.warc.wet.gz"
WET_CUT = "cc-main-2016-50-truncated.warc.wet.gz"


def read_counts(path: Path) -> tuple[int, Counter]:
    items = list(read_file(path))
    return sum(not isinstance(i, Unreadable) for i in items), Counter(i.reason for i in items if isinstance(i, Unreadable))


def test_every_real_page_is_read_or_counted_with_a_reason(shared_data):
    web = shared_data / "web"
    assert read_counts(web / WET_25) == (25, Counter())
    assert read_counts(web / DOLMA) == (670, Counter({"empty_record": 27}))  # 697 lines
    docs, bad = read_counts(web / WET_CUT)
    assert (docs, bad) == (15, Counter({"truncated_gzip": 1}))  # 16 records, the last one cut off


def test_the_truncated_member_is_reported_with_its_offset(shared_data):
    [cut] = [i for i in read_file(shared_data / "web" / WET_CUT) if isinstance(i, Unreadable)]
    assert cut.location == f"{WET_CUT}@offset 49258"
    assert "3479 of 7758 bytes" in cut.detail


@pytest.fixture(scope="module")
def real_data(shared_data, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("real-raw")
    for name in (DOLMA, WET_25, WET_CUT):
        (raw / name).symlink_to(shared_data / "web" / name)
    data = tmp_path_factory.mktemp("real") / "data"
    run_download(str(raw), 0, data)
    return data


@pytest.mark.parametrize("page_model", [False, True], ids=["four rule families", "bundled page model"])
def test_the_filter_stage_accounts_for_every_real_page(real_data, lid_model_path, page_model, tmp_path):
    config = FilterConfig(lid_model=str(lid_model_path))
    if page_model:
        config = FilterConfig(lid_model=str(lid_model_path), rules=WEB_RULES, page_model=str(BUNDLED_PAGE_MODEL))
    manifest = run_filter(real_data, config, force=True)
    t = manifest["totals"]
    assert t["docs_in"] == 697 + 25 + 16
    assert t["unreadable"] == {"empty_record": 27, "truncated_gzip": 1}
    assert t["kept"] + sum(t["dropped"].values()) + sum(t["unreadable"].values()) == t["docs_in"]
    assert 0 < t["kept"] < 300  # about 263 of the Dolma pages are English, fewer are good
    folder = real_data / "filtered"
    rejected = pq.read_table(folder / "rejected").to_pylist()
    # language ID names the languages of the real pages it drops (Russian, Chinese, ...)
    langs = Counter(json.loads(r["meta"]).get("lang") for r in rejected if r["reason"] == "lang_not_kept")
    assert {"ru", "zh"} <= set(langs) and "en" not in langs
    cut = [r for r in rejected if r["reason"] == "unreadable:truncated_gzip"]
    assert [r["id"] for r in cut] == [f"{WET_CUT}@offset 49258"]
