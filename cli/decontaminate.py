"""CLI: `crawlgpt decontaminate` (drop corpus documents that share a 13-gram with a benchmark)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import DEFAULT_WORKERS, build_executor, executor_options, fail, run_with_progress
from pipeline.errors import PipelineError
from pipeline.stage import format_table


@click.command("decontaminate")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
              help="Data folder: reads DATA/corpus, writes DATA/decontaminated.")
@click.option("--benchmark", "benchmarks", multiple=True, required=True, metavar="[TASK=]PATH",
              help="A benchmark file (repeatable): PATH when its name is the release name (piqa-valid.jsonl, "
                   "lambada_test.jsonl, ...), TASK=PATH otherwise; other JSONL files: every string field.")
@click.option("--ngram", type=int, default=13, show_default=True,
              help="Words in a shared sequence that counts as contamination (GPT-3's 13).")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
              help="Worker processes.")
@click.option("--force", is_flag=True, help="Discard DATA/decontaminated made with another config and start over.")
@executor_options
def decontaminate_cmd(data: Path, benchmarks: tuple[str, ...], ngram: int, workers: int, force: bool, executor: str,
                      ray_address: str | None) -> None:
    """Drop documents of DATA/corpus that share an n-gram with a benchmark item: DATA/decontaminated.

    Dropped documents go to DATA/decontaminated/rejected with the benchmark, item and n-gram they share.
    Then train the tokenizer and make the shards from it with `--from decontaminated`.
    """
    from pipeline.decontaminate import DecontaminateConfig, run_decontaminate

    try:
        config = DecontaminateConfig(benchmarks=tuple(benchmarks), ngram=ngram)
        runner = build_executor(executor, workers, ray_address)
        manifest = run_with_progress("decontaminate", lambda on_progress: run_decontaminate(
            data, config, workers=workers, force=force, on_progress=on_progress, executor=runner))
    except PipelineError as err:
        fail(err)
    b = manifest["benchmarks"]
    rows = [(task, n, b["items_shorter_than_ngram"].get(task, 0),
             manifest["totals"]["dropped"].get(f"benchmark_overlap_{task}", 0)) for task, n in b["items"].items()]
    click.echo("")
    click.echo(format_table(rows, ["benchmark", "items", f"items < {ngram} words", "documents dropped"]))


def register(group: click.Group) -> None:
    group.add_command(decontaminate_cmd)
