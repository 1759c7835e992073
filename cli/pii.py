"""CLI: `crawlgpt pii` (replace e-mail and public IP addresses in the corpus with placeholders)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import DEFAULT_WORKERS, build_executor, executor_options, fail, run_with_progress
from pipeline.errors import PipelineError
from pipeline.stage import format_table
from pipeline.pii import KINDS, PiiConfig, run_pii


@click.command("pii")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
              help="Data folder: reads DATA/decontaminated (if decontamination ran) or DATA/corpus, writes "
                   "DATA/redacted.")
@click.option("--emails/--no-emails", default=True, show_default=True, help="Replace e-mail addresses.")
@click.option("--ips/--no-ips", default=True, show_default=True,
              help="Replace public IPv4/IPv6 addresses (private, loopback, documentation ranges are kept).")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
              help="Worker processes.")
@click.option("--force", is_flag=True, help="Discard DATA/redacted made with another config and start over.")
@executor_options
def pii_cmd(data: Path, emails: bool, ips: bool, workers: int, force: bool, executor: str,
            ray_address: str | None) -> None:
    """Replace e-mail and public IP addresses with fixed placeholders (as FineWeb does): DATA/redacted.

    Then train the tokenizer and make the shards from it with `--from redacted` (`make ... PII=1` does).
    """
    try:
        config = PiiConfig(emails=emails, ips=ips)
        runner = build_executor(executor, workers, ray_address)
        manifest = run_with_progress("pii", lambda on_progress: run_pii(
            data, config, workers=workers, force=force, on_progress=on_progress, executor=runner))
    except PipelineError as err:
        fail(err)
    extra = manifest["totals"]["extra"]
    rows = [(kind, extra.get(f"pii_{kind}", 0)) for kind in KINDS]
    rows.append(("documents with any", extra.get("pii_documents", 0)))
    click.echo("")
    click.echo(format_table(rows, ["replaced", "count"]))


def register(group: click.Group) -> None:
    group.add_command(pii_cmd)
