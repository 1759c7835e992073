"""Shared CLI plumbing: logging set-up, progress (a bar on a terminal, a line per shard in a log), the
end-of-stage summary table, the executor options every stage command takes, and recorded options."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import click
from tqdm import tqdm

from pipeline.errors import PipelineError
from formats.manifest import load_manifest
from pipeline.stage import EXECUTORS, Executor, Progress, format_table, make_executor, summary_rows

DEFAULT_WORKERS = os.cpu_count() or 1

executor_option = click.option(
    "--executor", type=click.Choice(EXECUTORS), default="local", show_default=True, envvar="CRAWLGPT_EXECUTOR",
    help="Where shards run: local processes, or one Ray task per shard on a Ray cluster (see docs/cluster.md).")
ray_address_option = click.option(
    "--ray-address", default=None, envvar="RAY_ADDRESS",
    help="Ray cluster to use with --executor ray (host:port of the head); default: RAY_ADDRESS, else a "
         "Ray started on this machine.")


def executor_options(f):
    """Add --executor and --ray-address to a stage command."""
    return executor_option(ray_address_option(f))


def build_executor(name: str, workers: int, ray_address: str | None) -> Executor | None:
    """The executor for a stage command; None for local, so each stage keeps its own worker choice."""
    if name == "local":
        return None
    return make_executor(name, workers=workers, address=ray_address)


def given(ctx: click.Context, name: str) -> bool:
    """Whether option `name` was given on the command line or by its environment variable."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def remembered(ctx: click.Context, recorded: dict, **options: str) -> dict:
    """Values of `options` (parameter name -> recorded config key): as given on the command line, else
    as the stage recorded them (lists read back from JSON become tuples), else the option's default."""
    out = {}
    for param, key in options.items():
        value = ctx.params[param]
        if not given(ctx, param) and key in recorded:
            value = as_tuples(recorded[key])
        out[param] = value
    return out


def as_tuples(value):
    """`value` read back from JSON with its lists turned back into tuples (frozen configs hold tuples)."""
    if isinstance(value, list):
        return tuple(as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: as_tuples(v) for k, v in value.items()}
    return value


def recorded_config(stage_dir) -> dict:
    """The config a stage recorded in its manifest (or {}): options not given on the command line are
    taken from here, so `make shards DATA=d` goes on with what `make corpus ... DATA=d` chose."""
    manifest = load_manifest(stage_dir)
    return (manifest or {}).get("config", {}) if isinstance(manifest, dict) else {}


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


class StageProgress:
    """A tqdm bar over shards that also shows documents per second and an ETA by shard fraction.

    On a terminal only: when stderr is a file (CI, nohup, Slurm) a bar would write thousands of
    carriage-return updates, so it prints one line per finished shard instead.
    """

    def __init__(self, desc: str, unit: str = "docs", tty: bool | None = None):
        self.desc = desc
        self.unit = unit
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: tqdm | None = None  # created at the first report, so errors before the stage starts print cleanly
        self._shown = 0

    def __call__(self, p: Progress) -> None:
        if not self.tty:
            if p.shards_done > self._shown:
                self._shown = p.shards_done
                rate = p.docs / p.elapsed_s if p.elapsed_s > 0 else 0.0
                click.echo(f"{self.desc}: {p.shards_done}/{p.shards_total} shards "
                           f"({p.shards_skipped} already done), {self._amount(p.docs)}, "
                           f"{self._amount(rate)}/s, {p.elapsed_s:.1f}s", err=True)
            return
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
        self.bar.set_postfix_str(f"{self._amount(p.docs)}, {self._amount(rate)}/s, ETA {eta}", refresh=False)
        self.bar.refresh()

    def _amount(self, n: float) -> str:
        if self.unit == "bytes":
            return f"{n / 2**20:,.1f} MiB"
        return f"{n:,.0f} {self.unit}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_with_progress(desc: str, call: Callable[[Callable[[Progress], None]], dict], summary: bool = True,
                      unit: str = "docs") -> dict:
    """Run `call(on_progress)` with progress reports, then print the summary table of its manifest."""
    progress = StageProgress(desc, unit=unit)
    try:
        manifest = call(progress)
    finally:
        progress.close()
    if summary:
        print_summary(desc, manifest)
    return manifest


def print_summary(title: str, manifest: dict) -> None:
    click.echo(f"\n{title}: summary ({manifest.get('elapsed_s', 0):.1f}s)")
    click.echo(format_table(summary_rows(manifest), ["", "documents", "share"]))


def fail(err: PipelineError) -> None:
    """Turn a user-facing error into a clean one-line message and exit code 1 (no traceback)."""
    raise click.ClickException(str(err)) from err
