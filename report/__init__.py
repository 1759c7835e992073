"""`crawlgpt report`: one self-contained HTML page (DATA/report.html) about a DATA folder.

Built from what the stages already wrote (manifests, samples of the rejected and kept Parquet files, the
dedup cluster assignments, the tokenizer and shard manifests, DATA/runs/*), never by reading the corpus
through; each section appears only when its stage ran. No script, no server, no network: charts are
inline SVG, crawl text is escaped, and a Content-Security-Policy forbids everything but inline styles
and data: images. One module per section: funnel, filters (languages, distributions, dropped
documents), dedup, tokens, runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from formats.manifest import atomic_path
from report import dedup, filters, funnel, runs, tokens
from report.page import Section, render_page

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"


@dataclass(frozen=True)
class ReportResult:
    path: Path
    bytes: int
    seconds: float
    sections: tuple[str, ...]


def report_sections(data_dir: Path) -> list[Section]:
    """Every section whose stage ran, in pipeline order."""
    found: list[Section | None] = [funnel.section(data_dir), *filters.sections(data_dir), dedup.section(data_dir),
                                   tokens.section(data_dir), runs.section(data_dir)]
    return [s for s in found if s is not None]


def build_report(data_dir: str | Path, out: str | Path | None = None) -> ReportResult:
    """Write the page for `data_dir` (to DATA/report.html unless `out` is given) atomically."""
    start = time.monotonic()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir} is not a folder; give the DATA folder of a pipeline run (--data)")
    sections = report_sections(data_dir)
    if not sections:
        raise InputError(f"{data_dir} holds no finished stage to report on; run `make corpus DATA={data_dir}` first")
    page = render_page(f"crawlgpt report: {data_dir.resolve().name}", str(data_dir.resolve()), sections)
    path = Path(out) if out is not None else data_dir / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    seconds = time.monotonic() - start
    log.info("report: %s (%d bytes, %d sections) in %.1fs", path, len(page.encode()), len(sections), seconds)
    return ReportResult(path, path.stat().st_size, seconds, tuple(s.id for s in sections))
