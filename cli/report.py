"""CLI: `crawlgpt report` (one self-contained HTML page about a DATA folder) and `crawlgpt card` (its
Hugging Face dataset card)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import fail
from pipeline.errors import PipelineError
from report import build_report
from report.dataset_card import write_dataset_card

data_option = click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
                           show_default=True, help="Data folder of a pipeline run.")


@click.command("report")
@data_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the page [default: DATA/report.html].")
def report_cmd(data: Path, out: Path | None) -> None:
    """Write DATA/report.html: funnel, languages, rule statistics, dropped documents, duplicate clusters,
    tokenizer, shards and training runs, from what the stages wrote. Opens from disk, needs no network."""
    try:
        result = build_report(data, out)
    except PipelineError as err:
        fail(err)
    click.echo(f"report: {result.path} ({result.bytes / 1e6:.2f} MB, sections: {', '.join(result.sections)}) "
               f"in {result.seconds:.1f}s")


@click.command("card")
@data_option
def card_cmd(data: Path) -> None:
    """Write DATA/corpus/README.md, the corpus's dataset card in the Hugging Face format."""
    try:
        path = write_dataset_card(data)
    except PipelineError as err:
        fail(err)
    click.echo(f"dataset card: {path}")


def register(group: click.Group) -> None:
    group.add_command(report_cmd)
    group.add_command(card_cmd)
