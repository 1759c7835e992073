"""The `crawlgpt` command line: one subcommand per stage.

click is imported only under `cli/`. Each area registers its commands from its own module so
that the library modules stay free of CLI concerns.
"""

from __future__ import annotations

import importlib
import logging

import click

from cli.common import setup_logging

log = logging.getLogger(__name__)

#: Modules under cli/ that define `register(group)`.
COMMAND_MODULES = ("download", "filter", "quality", "dedup", "decontaminate", "pii", "tokens", "training", "finetune", "align",
                   "evaluation", "report")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """crawlgpt: raw web crawl in, trained GPT out. Each subcommand is one stage; rerunning resumes."""
    setup_logging(verbose)


for _name in COMMAND_MODULES:
    importlib.import_module(f"cli.{_name}").register(main)
