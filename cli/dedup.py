"""`crawlgpt dedup` (exact + MinHash near-duplicate removal) and `crawlgpt dedup-show` (inspect a cluster)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from cli.common import (
    DEFAULT_WORKERS,
    build_executor,
    executor_options,
    fail,
    recorded_config,
    remembered,
    run_with_progress,
)
from pipeline.dedup.clusters import histogram_rows
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.show import cluster_overview, find_cluster, format_cluster
from pipeline.dedup.stage import run_dedup
from pipeline.errors import PipelineError
from pipeline.stage import format_table

def register(group: click.Group) -> None:
    d = DedupConfig()

    @group.command("dedup")
    @click.option("--data", "data_dir", default="data", show_default=True, type=click.Path(file_okay=False),
                  help="Data folder: reads DATA/filtered, writes DATA/dedup (work files) and DATA/corpus.")
    @click.option("--workers", default=DEFAULT_WORKERS, show_default=True, type=click.IntRange(min=1),
                  help="Worker processes for the per-shard and per-partition phases.")
    @click.option("--ngram", default=d.ngram, show_default=True, type=int,
                  help="Words per shingle (3: edited copies keep a high Jaccard similarity).")
    @click.option("--num-perm", default=d.num_perm, show_default=True, type=int,
                  help="MinHash permutations per document (cost grows linearly).")
    @click.option("--bands", default=d.bands, show_default=True, type=int, help="LSH bands.")
    @click.option("--rows", default=d.rows, show_default=True, type=int,
                  help="Signature values per band (bands x rows <= num-perm).")
    @click.option("--threshold", default=d.threshold, show_default=True, type=float,
                  help="Minimum estimated Jaccard similarity for a candidate pair to be near duplicates.")
    @click.option("--seed", default=d.seed, show_default=True, type=int, help="Seed of the MinHash permutations.")
    @click.option("--partitions", default=d.partitions, show_default=True, type=int,
                  help="Hash-range partitions of the band keys (each processed independently).")
    @click.option("--bucket-window", default=d.bucket_window, show_default=True, type=int,
                  help="Pairs per bucket member in large buckets (all pairs in buckets up to this size + 1).")
    @click.option("--force", is_flag=True, help="Discard outputs made with another config and start over.")
    @executor_options
    @click.pass_context
    def dedup(ctx, data_dir, workers, ngram, num_perm, bands, rows, threshold, seed, partitions, bucket_window, force,
              executor, ray_address):
        """Remove exact and near-duplicate documents: DATA/filtered -> DATA/corpus.

        One document per cluster is kept (the one with the most words, ties by smallest id); removed
        copies go to DATA/corpus/rejected with their cluster and representative. Rerunning resumes.
        Options not given are taken as the last run in DATA recorded them (then the defaults shown).
        """
        try:
            recorded = recorded_config(Path(data_dir) / "corpus")
            names = ("ngram", "num_perm", "bands", "rows", "threshold", "seed", "partitions", "bucket_window")
            config = DedupConfig(**remembered(ctx, recorded, **{n: n for n in names}))
            runner = build_executor(executor, workers, ray_address)
            manifest = run_with_progress(
                "dedup",
                lambda on_progress: run_dedup(data_dir, config, workers=workers, force=force, on_progress=on_progress,
                                              executor=runner),
            )
        except PipelineError as err:
            fail(err)
        _print_dedup_summary(manifest)

    @group.command("dedup-show")
    @click.option("--data", "data_dir", default="data", show_default=True, type=click.Path(file_okay=False),
                  help="Data folder holding a finished dedup stage.")
    @click.option("--width", default=None, type=int, help="Output width in characters [default: terminal width].")
    @click.option("--lines", "max_lines", default=12, show_default=True, type=int,
                  help="Lines of text shown per document.")
    @click.argument("ident", required=False)
    def dedup_show(data_dir, width, max_lines, ident):
        """Show one duplicate cluster side by side: IDENT is a cluster id or the id of any member.

        Without IDENT, list the cluster-size histogram and the largest clusters.
        """
        try:
            if ident is None:
                click.echo(cluster_overview(data_dir))
                return
            view = find_cluster(data_dir, ident)
        except PipelineError as err:
            fail(err)
        click.echo(format_cluster(view, width=width or shutil.get_terminal_size((160, 40)).columns, max_lines=max_lines))


def _print_dedup_summary(manifest: dict) -> None:
    d = manifest.get("dedup", {})
    if not d:
        return
    click.echo("")
    click.echo(format_table(histogram_rows(d["cluster_size_histogram"]), ["cluster size", "clusters"]))
    pairs = d.get("pairs", {})
    click.echo("")
    click.echo(format_table([(k.replace("_", " "), v) for k, v in pairs.items()], ["LSH", "count"]))
    click.echo("")
    click.echo(format_table([(k, f"{v:.1f}s") for k, v in d.get("phase_elapsed_s", {}).items()], ["phase", "time"]))
