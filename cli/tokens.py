"""CLI: `crawlgpt tokenizer`, `crawlgpt shards`, `crawlgpt stats`."""

from __future__ import annotations

from pathlib import Path

import click

from formats import layout
from formats.layout import shards_dir, tokenizer_file
from cli.common import (
    DEFAULT_WORKERS,
    FiniteFloat,
    build_executor,
    executor_options,
    fail,
    recorded_config,
    remembered,
    run_with_progress,
)
from pipeline.errors import PipelineError
from pipeline.shard_stats import StatsConfig, format_json, format_report, shard_stats
from pipeline.stage import format_table
from formats.token_shards import TokenShardError
from pipeline.tokenize_stage import ShardsConfig, make_shards
from pipeline.tokenizer_train import SPLIT_PATTERNS, TokenizerConfig, train_tokenizer

_TOK = TokenizerConfig()
_SH = ShardsConfig()
_ST = StatsConfig()

data_option = click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
                           show_default=True, help="Data folder (corpus/ in, tokenizer/ and shards/ out).")
force_option = click.option("--force", is_flag=True, help="Discard outputs made with another config and start over.")


@click.command("tokenizer")
@data_option
@click.option("--vocab-size", type=int, default=_TOK.vocab_size, show_default=True,
              help="Vocabulary size incl. special tokens; a multiple of 64 (GPU-friendly embedding).")
@click.option("--pattern", type=click.Choice(sorted(SPLIT_PATTERNS)), default=_TOK.pattern, show_default=True,
              help="Pre-tokenization split regex.")
@click.option("--reserved-tokens", type=int, default=_TOK.reserved_tokens, show_default=True,
              help="Reserved special tokens <|reserved_N|> for later chat formats.")
@click.option("--min-frequency", type=int, default=_TOK.min_frequency, show_default=True,
              help="Minimum pair count for a merge.")
@click.option("--sample-mb", type=FiniteFloat(), default=0, show_default=True,
              help="Train on at most this many MB of text, sampled evenly by document id (0 = whole corpus).")
@click.option("--heldout-fraction", type=FiniteFloat(), default=_TOK.heldout_fraction, show_default=True,
              help="Share of documents held out (as the shards' validation split) to measure compression.")
@click.option("--from", "source", type=click.Choice(["corpus", "decontaminated", "redacted"]), default="corpus",
              show_default=True, help="Documents to train on: DATA/corpus, DATA/decontaminated after "
                                      "`crawlgpt decontaminate`, or DATA/redacted after `crawlgpt pii`.")
@force_option
@executor_options
@click.pass_context
def tokenizer_cmd(ctx: click.Context, data: Path, vocab_size: int, pattern: str, reserved_tokens: int,
                  min_frequency: int, sample_mb: float, heldout_fraction: float, source: str, force: bool, executor: str,
                  ray_address: str | None) -> None:
    """Train the byte-level BPE tokenizer on DATA/corpus (or DATA/decontaminated, DATA/redacted); write DATA/tokenizer/tokenizer.json.

    Options not given are taken as the last run in DATA recorded them (then the defaults shown)."""
    recorded = recorded_config(data / layout.TOKENIZER)
    if "sample_bytes" in recorded:
        recorded = {**recorded, "sample_mb": recorded["sample_bytes"] / 1e6}
    opts = remembered(ctx, recorded, vocab_size="vocab_size", pattern="pattern", reserved_tokens="reserved_tokens",
                      min_frequency="min_frequency", sample_mb="sample_mb", heldout_fraction="heldout_fraction")
    config = TokenizerConfig(vocab_size=opts["vocab_size"], min_frequency=opts["min_frequency"],
                             pattern=opts["pattern"], reserved_tokens=opts["reserved_tokens"],
                             sample_bytes=int(round(opts["sample_mb"] * 1e6)),
                             heldout_fraction=opts["heldout_fraction"])
    try:
        runner = build_executor(executor, 1, ray_address)
        m = train_tokenizer(data / source, data / layout.TOKENIZER, config, force=force, executor=runner)
    except PipelineError as err:
        fail(err)
    h, t = m["heldout"], m["training"]
    rows = [
        ("tokenizer", str(tokenizer_file(data))),
        ("vocab size", f"{m['vocab_size']:,} (end-of-text id {m['eot_id']}, {len(m['special_tokens'])} special)"),
        ("trained on", f"{t['documents']:,} documents, {t['bytes'] / 1e6:.1f} MB in {t['elapsed_s']:.1f}s"),
        ("held out", f"{h['documents']:,} documents, {h['bytes'] / 1e6:.2f} MB"),
        ("bytes per token", f"{h['bytes_per_token']}"),
        ("tokens per word", f"{h['tokens_per_word']}"),
    ]
    click.echo(format_table(rows, ["tokenizer", ""]))


@click.command("shards")
@data_option
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
              help="Processes, one corpus shard each (the tokenizer also uses threads within a batch).")
@click.option("--val-fraction", type=FiniteFloat(), default=_SH.val_fraction, show_default=True,
              help="Share of documents in the validation split (chosen by a hash of the document id).")
@click.option("--max-shard-mb", type=FiniteFloat(), default=_SH.max_shard_bytes / 2**20, show_default=True,
              help="Start a new token file when one reaches this many MiB of tokens.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="tokenizer.json to use [default: DATA/tokenizer/tokenizer.json].")
@click.option("--from", "source", type=click.Choice(["corpus", "decontaminated", "redacted", "filtered", "raw"]),
              default="corpus", show_default=True,
              help="corpus: the curated DATA/corpus; decontaminated: DATA/decontaminated; redacted: DATA/redacted "
                   "(after `crawlgpt pii`); filtered: DATA/filtered "
                   "(before dedup); raw: every readable document of DATA/raw's files, unfiltered and not "
                   "deduplicated (the data ablation's baseline).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: DATA/shards; DATA/shards-raw or DATA/shards-filtered with "
                   "--from raw or filtered].")
@force_option
@executor_options
@click.pass_context
def shards_cmd(ctx: click.Context, data: Path, workers: int, val_fraction: float, max_shard_mb: float,
               tokenizer_path: Path | None, source: str, out_dir: Path | None, force: bool, executor: str,
               ray_address: str | None) -> None:
    """Tokenize DATA/corpus (or DATA/raw, DATA/filtered, DATA/decontaminated, DATA/redacted) into packed Arrow token shards under DATA/shards/{train,val}.

    Options not given are taken as the last run in DATA recorded them (then the defaults shown)."""
    recorded = recorded_config(shards_dir(data))
    if "max_shard_bytes" in recorded:
        recorded = {**recorded, "max_shard_mb": recorded["max_shard_bytes"] / 2**20}
    opts = remembered(ctx, recorded, val_fraction="val_fraction", max_shard_mb="max_shard_mb")
    config = ShardsConfig(val_fraction=opts["val_fraction"], max_shard_bytes=int(round(opts["max_shard_mb"] * 2**20)),
                          source="corpus" if source in ("decontaminated", "redacted") else source)
    tok = tokenizer_path or tokenizer_file(data)
    src = data / source
    out = out_dir or shards_dir(data, source)
    try:
        runner = build_executor(executor, workers, ray_address)
        m = run_with_progress("shards", lambda on_progress: make_shards(
            src, tok, out, config, workers=workers, force=force, on_progress=on_progress, executor=runner))
    except PipelineError as err:
        fail(err)
    rows = [(split, s["files"], s["documents"], s["tokens"], f"{s['bytes'] / 2**20:.1f} MiB")
            for split, s in m["split_totals"].items()]
    click.echo("")
    click.echo(format_table(rows, ["split", "files", "documents", "tokens", "size"]))
    click.echo(f"dtype {m['dtype']}, vocab {m['vocab_size']}, end-of-text id {m['eot_id']}, "
               f"{m['totals']['extra'].get('text_bytes', 0) / 1e6:.1f} MB of text")


@click.command("stats")
@click.argument("shards_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for machines).")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="tokenizer.json for decoding [default: the copy in the folder, else the manifest's].")
@click.option("--histogram", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the PNG histogram of document lengths [default: SHARDS_DIR/doc_lengths.png].")
@click.option("--no-histogram", is_flag=True, help="Do not write the histogram.")
@click.option("--top", type=click.IntRange(min=0), default=_ST.top_tokens, show_default=True,
              help="How many frequent tokens to list.")
@click.option("--sample-chars", type=click.IntRange(min=0), default=_ST.sample_chars, show_default=True,
              help="Characters of the sample document to show.")
@click.option("--verify-shards/--no-verify-shards", default=_ST.verify_checksums, show_default=True,
              help="Check every shard's sha256 against the manifest first (slow for many GB).")
def stats_cmd(shards_dir: Path, as_json: bool, tokenizer_path: Path | None, histogram: Path | None,
              no_histogram: bool, top: int, sample_chars: int, verify_shards: bool) -> None:
    """Report documents, tokens and lengths per token shard and in total, and plot document lengths."""
    hist = None if no_histogram else (histogram or shards_dir / "doc_lengths.png")
    try:
        report = shard_stats(shards_dir, tokenizer_path, hist, StatsConfig(top_tokens=top, sample_chars=sample_chars,
                                                                       verify_checksums=verify_shards))
    except (PipelineError, TokenShardError) as err:
        fail(err)
    except OSError as err:
        raise click.ClickException(f"cannot write the histogram: {err} (use --histogram PATH or --no-histogram)")
    if as_json:
        click.echo(format_json(report))
    else:
        click.echo(format_report(report))
        if report.get("histogram"):
            click.echo(f"\nhistogram of document lengths: {report['histogram']}")


def register(group: click.Group) -> None:
    group.add_command(tokenizer_cmd)
    group.add_command(shards_cmd)
    group.add_command(stats_cmd)
