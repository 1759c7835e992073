"""Shared CLI plumbing: logging set-up, progress (a bar on a terminal, a line per shard in a log), the
end-of-stage summary table, the executor options every stage command takes, and recorded options."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
import time
from typing import Callable

import click
from tqdm import tqdm

from formats.manifest import load_manifest
from pipeline.errors import ConfigError
from formats.json_records import surrogate_at
from pipeline.stage import Executor, LocalExecutor, Progress, format_table, summary_rows

DEFAULT_WORKERS = os.cpu_count() or 1

EXECUTORS = ("local", "ray")


def make_executor(name: str = "local", workers: int = 1, address: str | None = None) -> Executor:
    """The executor called `name`: "local" (`workers` processes) or "ray" (the cluster at `address`,
    else RAY_ADDRESS, else a Ray started on this machine). Ray is imported only here, on request."""
    if name == "local":
        return LocalExecutor(workers=max(1, workers))
    if name == "ray":
        try:
            from pipeline.ray_executor import RayExecutor  # optional dependency: kept out of the default path
        except ImportError as exc:
            raise ConfigError(
                "--executor", f"ray is not installed ({exc}); install it with `pip install 'crawlgpt[ray]'`"
            ) from exc
        return RayExecutor(address=address)
    raise ConfigError("--executor", f"{name!r}; choose one of {', '.join(EXECUTORS)}")


data_option = click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
                           show_default=True, help="Data folder (shards/ and tokenizer/ in, runs/ out).")


def run_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A run name is one folder name under DATA/runs/: never a path that leads elsewhere."""
    if not value or value.strip(".") == "" or any(c in value for c in "/\\\0:"):
        raise click.BadParameter(
            f"{value!r} is not a plain folder name (no /, \\, :, NUL; not . or ..); a run always lives in "
            "DATA/runs/RUN/. To read a checkpoint elsewhere, pass --checkpoint PATH.", ctx, param)
    return value


def optional_run_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`run_name` for an option whose default (None) is derived from --run (e.g. --out-run)."""
    return None if value is None else run_name(ctx, param, value)


run_option = click.option("--run", "--run-name", "run", default="default", show_default=True, callback=run_name,
                          help="Run name: its files go to DATA/runs/RUN/. Under torchrun spell it --run-name (torchrun reads --run as its own --run-path).")
device_option = click.option("--device", default="auto", show_default=True,
                             help="cpu, cuda, cuda:N, mps or auto (CUDA when available). Under torchrun: cuda:LOCAL_RANK.")
tokenizer_option = click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False, path_type=Path),
                                default=None, help="tokenizer.json [default: DATA/tokenizer/tokenizer.json].")
checkpoint_option = click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                                 help="Checkpoint file or run folder (its newest checkpoint) "
                                      "[default: DATA/runs/RUN].")


def is_main() -> bool:
    """True on rank 0 of a torchrun job (and in a plain process): only it prints."""
    return int(os.environ.get("RANK", "0")) == 0



# ---- option types: every number option is range-checked by click, naming the option ----------------


class FiniteFloat(click.FloatRange):
    """A float option that must be finite and in range. NaN passes every comparison (`nan < 0` and
    `nan > 1` are both false), so click's FloatRange alone lets `--temperature nan` through."""

    name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


#: Shares of a data set (validation, test): 0 (none) up to, not including, 1 (all).
SHARE = FiniteFloat(min=0, max=1, max_open=True)
#: A learning rate, weight decay, coefficient or clip: finite and not negative.
NON_NEGATIVE = FiniteFloat(min=0)
#: Strictly positive and finite (epochs, DPO's beta, a clip range).
POSITIVE = FiniteFloat(min=0, min_open=True)
#: Counts that must be at least 1 (batch sizes, steps, prompts).
POSITIVE_INT = click.IntRange(min=1)
#: Counts where 0 means "automatic" or "none".
COUNT = click.IntRange(min=0)


class Utf8Text(click.ParamType):
    """A text option: bytes that are not UTF-8 on the command line reach Python as lone surrogates
    (`surrogateescape`), which no tokenizer can encode; refused here, naming the option."""

    name = "text"

    def convert(self, value, param, ctx):
        at = surrogate_at(value)
        if at is not None:
            self.fail(f"holds bytes that are not UTF-8 (at character {at}); pass UTF-8 text.", param, ctx)
        return value


TEXT = Utf8Text()


def check_text(text: str, where: str) -> str | None:
    """None when text can be encoded as UTF-8, else a one-line message naming where (a line of input)."""
    at = surrogate_at(text)
    return None if at is None else f"{where}: holds bytes that are not UTF-8 (at character {at}); send UTF-8 text"


def sampling_options(max_new_tokens: int, temperature: float, top_k: int):
    """--max-new-tokens, --temperature, --top-k, --top-p: one set of checks for every command that
    samples (`sample`, `chat`)."""
    options = [
        click.option("--max-new-tokens", type=POSITIVE_INT, default=max_new_tokens, show_default=True,
                     help="Tokens to generate at most."),
        click.option("--temperature", type=NON_NEGATIVE, default=temperature, show_default=True,
                     help="Softmax temperature; 0 = greedy."),
        click.option("--top-k", type=COUNT, default=top_k, show_default=True,
                     help="Sample among the k most likely tokens; 0 = all."),
        click.option("--top-p", type=FiniteFloat(min=0, max=1, min_open=True), default=1.0, show_default=True,
                     help="Sample among the smallest set of tokens whose probability reaches p; 1 = all."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def real_folder(path) -> str:
    """A folder's resolved path (symlinks and `..` followed): two spellings of one folder compare equal."""
    return os.path.realpath(os.path.expanduser(str(path)))

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

    def __init__(self, desc: str, unit: str = "docs", tty: bool | None = None, part: str = "shards"):
        self.desc = desc
        self.unit = unit
        self.part = part
        """What is counted done of a total: shards, or chunks of a count (`CountProgress`)."""
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: tqdm | None = None  # created at the first report, so errors before the stage starts print cleanly
        self._shown = 0

    def __call__(self, p: Progress) -> None:
        if not self.tty:
            if p.shards_done > self._shown:
                self._shown = p.shards_done
                rate = p.docs / p.elapsed_s if p.elapsed_s > 0 else 0.0
                skipped = f" ({p.shards_skipped} already done)" if self.part == "shards" else ""
                click.echo(f"{self.desc}: {p.shards_done}/{p.shards_total} {self.part}{skipped}, {self._amount(p.docs)}, "
                           f"{self._amount(rate)}/s, {p.elapsed_s:.1f}s", err=True)
            return
        if self.bar is None:
            self.bar = tqdm(desc=self.desc, total=p.shards_total, unit=f" {self.part}", dynamic_ncols=True,
                            file=sys.stderr)
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


class CountProgress:
    """Progress over a count (requests scored, answers generated) through `StageProgress`: a bar on a
    terminal; off one (a log file) one line per tenth of the work, never carriage-return updates."""

    CHUNKS = 10

    def __init__(self, desc: str, total: int, unit: str, tty: bool | None = None):
        self.stage = StageProgress(desc, unit=unit, tty=tty, part="tenths")
        self.total, self.done, self.start = total, 0, time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        tenths = self.CHUNKS if self.done >= self.total else self.done * self.CHUNKS // max(self.total, 1)
        self.stage(Progress(docs=self.done, shards_done=tenths, shards_total=self.CHUNKS, shards_skipped=0,
                            elapsed_s=time.monotonic() - self.start))

    def close(self) -> None:
        self.stage.close()


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


def fail(err: Exception) -> None:
    """Turn a user-facing error (a `CrawlGPTError`, or a ValueError with a readable message) into a clean
    one-line message and exit code 1 (no traceback)."""
    raise click.ClickException(str(err)) from err
