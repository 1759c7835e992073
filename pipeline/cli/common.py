"""Shared CLI plumbing: logging set-up, the progress bar, the end-of-stage summary table."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import click
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.stage import Progress, format_table, summary_rows

DEFAULT_WORKERS = os.cpu_count() or 1


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


class StageProgress:
    """A tqdm bar over shards that also shows documents per second and an ETA by shard fraction."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar: tqdm | None = None  # created at the first report, so errors before the stage starts print cleanly
        self._shown = 0

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            self.bar = tqdm(desc=self.desc, total=p.shards_total, unit=" shards", dynamic_ncols=True, file=sys.stderr)
        if self.bar.total != p.shards_total:
            self.bar.total = p.shards_total
        self.bar.update(p.shards_done - self._shown)
        self._shown = p.shards_done
        rate = p.docs / p.elapsed_s if p.elapsed_s > 0 else 0.0
        todo = p.shards_total - p.shards_skipped
        frac = (p.shards_done - p.shards_skipped) / todo if todo else 1.0
        eta = f"{p.elapsed_s * (1 - frac) / frac:,.0f}s" if frac > 0 else "?"
        self.bar.set_postfix_str(f"{p.docs:,} docs, {rate:,.0f} docs/s, ETA {eta}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_with_progress(desc: str, call: Callable[[Callable[[Progress], None]], dict]) -> dict:
    """Run `call(on_progress)` with a progress bar, then print the summary table of its manifest."""
    progress = StageProgress(desc)
    try:
        manifest = call(progress)
    finally:
        progress.close()
    print_summary(desc, manifest)
    return manifest


def print_summary(title: str, manifest: dict) -> None:
    click.echo(f"\n{title}: summary ({manifest.get('elapsed_s', 0):.1f}s)")
    click.echo(format_table(summary_rows(manifest), ["", "documents", "share"]))


def fail(err: PipelineError) -> None:
    """Turn a user-facing error into a clean one-line message and exit code 1 (no traceback)."""
    raise click.ClickException(str(err)) from err
