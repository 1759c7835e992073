"""`crawlgpt download`: fetch (or list) the raw input files into DATA/raw."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import build_executor, executor_options, fail, run_with_progress
from pipeline.download import DEFAULT_BASE_URL, DEFAULT_NUM_FILES, DEFAULT_SOURCE, DownloadConfig, run_download
from pipeline.errors import PipelineError
from pipeline.stage import format_table

_DEFAULTS = DownloadConfig()


def register(group: click.Group) -> None:
    group.add_command(download_command)


@click.command("download")
@click.option("--source", default=None,
              help="A Common Crawl crawl id (CC-MAIN-2024-51), a file listing URLs or crawl-data/ paths, "
                   "a local folder, a glob, or one file. Default: the SOURCE of the existing "
                   f"DATA/raw/manifest.json, else {DEFAULT_SOURCE}.")
@click.option("--num-files", type=int, default=None,
              help="How many WET files of a crawl id to take (the first ones of its wet.paths.gz); "
                   "lists, folders and globs are taken whole. Default: as last time for the same SOURCE, "
                   f"else {DEFAULT_NUM_FILES}.")
@click.option("--data", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Pipeline data folder; files go to DATA/raw/files, the list to DATA/raw/manifest.json.")
@click.option("--workers", type=int, default=_DEFAULTS.workers, show_default=True,
              help="Parallel transfers (Common Crawl throttles many parallel connections).")
@click.option("--retries", type=int, default=_DEFAULTS.retries, show_default=True,
              help="Retries per file, with exponential backoff, for 429/5xx, dropped connections, bad gzip.")
@click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True,
              help="Where crawl-data/ paths are fetched from (a mirror, or a local server for tests).")
@click.option("--text-field", default="text", show_default=True,
              help="JSONL key holding the text (as for filter): a JSONL file of a folder or glob SOURCE whose "
                   "first record lacks it is skipped as not a document file.")
@click.option("--force", is_flag=True,
              help="Replace a file list made for another SOURCE/NUM_FILES (downloaded files are kept).")
@executor_options
def download_command(
    source: str | None, num_files: int | None, data: Path, workers: int, retries: int, base_url: str,
    text_field: str, force: bool, executor: str, ray_address: str | None,
) -> None:
    """Download the raw input files (resumable, verified), or list local ones, into DATA/raw."""
    try:
        config = DownloadConfig(workers=workers, retries=retries, base_url=base_url)
        runner = build_executor(executor, workers, ray_address)
        manifest = run_with_progress("download", lambda on_progress: run_download(
            source, num_files, data, config, force=force, on_progress=on_progress, executor=runner,
            text_field=text_field),
            summary=False, unit="bytes")
    except PipelineError as err:
        fail(err)
        return
    _print_summary(manifest)


def _print_summary(manifest: dict) -> None:
    run = manifest["run"]
    totals = manifest["totals"]
    rows = [("files", totals["files"], _human(totals["bytes"]))]
    if run["local"]:
        rows.append(("local (used in place)", run["local"], ""))
    else:
        rows.append(("downloaded now", run["downloaded"], _human(run["fetched_bytes"])))
        rows.append(("already complete (skipped)", run["skipped"], ""))
    click.echo(f"\ndownload: summary ({run['elapsed_s']:.1f}s, source {manifest['source']})")
    click.echo(format_table(rows, ["", "files", "bytes"]))
    if run["fetched_bytes"] and run["elapsed_s"] > 0:
        click.echo(f"average rate: {_human(run['fetched_bytes'] / run['elapsed_s'])}/s")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)
