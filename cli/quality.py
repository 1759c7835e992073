"""`crawlgpt quality-train`: the fastText quality classifier (reference text against the crawl)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import (FiniteFloat, build_executor, executor_options, fail, recorded_config, remembered,
                        run_with_progress)
from pipeline.errors import PipelineError
from pipeline.quality_train import QualityTrainConfig, quality_dir, train_quality_model
from pipeline.stage import format_table

_Q = QualityTrainConfig(reference=("-",))


def register(group: click.Group) -> None:
    group.add_command(quality_train_command)


@click.command("quality-train")
@click.option("--data", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Pipeline data folder: negatives come from DATA/raw, the model goes to DATA/quality/.")
@click.option("--reference", "references", multiple=True,
              help="Good text for the positives: JSONL (.gz/.zst), Parquet, .txt or WET files; repeatable, or "
                   "several paths in one value separated by spaces. For a real run: Wikipedia, books and "
                   "curated web text (see README). Default: as the last run in DATA recorded it, else "
                   "--default-reference.")
@click.option("--default-reference", "default_references", multiple=True,
              help="Reference used when none is given and none is recorded (make passes its default here); "
                   "with neither, no classifier is trained.")
@click.option("--negatives-per-positive", type=FiniteFloat(), default=_Q.negatives_per_positive, show_default=True,
              help="Raw crawl documents sampled as negatives per reference document.")
@click.option("--holdout", type=FiniteFloat(), default=_Q.holdout, show_default=True,
              help="Share of positives and negatives held out to measure precision, recall and ROC AUC.")
@click.option("--target-recall", type=FiniteFloat(), default=_Q.target_recall, show_default=True,
              help="The recommended threshold keeps this share of held-out reference documents.")
@click.option("--seed", type=int, default=_Q.seed, show_default=True,
              help="Seed of the sampling, the split and fastText (training is single-threaded, so reproducible).")
@click.option("--epoch", type=int, default=_Q.epoch, show_default=True, help="fastText training epochs.")
@click.option("--text-field", default=_Q.text_field, show_default=True,
              help="JSONL key / Parquet column holding the text of reference files.")
@click.option("--force", is_flag=True, help="Replace a model trained with another config.")
@executor_options
@click.pass_context
def quality_train_command(
    ctx: click.Context, data: Path, references: tuple[str, ...], default_references: tuple[str, ...],
    negatives_per_positive: float, holdout: float, target_recall: float, seed: int, epoch: int, text_field: str,
    force: bool, executor: str, ray_address: str | None,
) -> None:
    """Train the fastText quality classifier (reference text vs the raw crawl) into DATA/quality/.

    Options not given are taken as the last run in DATA recorded them (then the defaults shown)."""
    try:
        recorded = recorded_config(quality_dir(data))
        opts = remembered(ctx, recorded, negatives_per_positive="negatives_per_positive", holdout="holdout",
                          target_recall="target_recall", seed="seed", epoch="epoch", text_field="text_field")
        if references:
            paths = _reference_paths(references)
        elif recorded.get("reference"):
            paths = list(recorded["reference"])
            click.echo(f"quality-train: reference as recorded in {quality_dir(data)}: {' '.join(paths)}", err=True)
        else:
            paths = _reference_paths(default_references)
        if not paths:
            click.echo("quality-train: no reference text given or recorded: no quality classifier "
                       "(the filter applies the rules only)")
            return
        config = QualityTrainConfig(reference=tuple(paths), **opts)
        runner = build_executor(executor, 1, ray_address)
        manifest = run_with_progress("quality-train", lambda on_progress: train_quality_model(
            data, config, force=force, on_progress=on_progress, executor=runner), summary=False)
    except PipelineError as err:
        fail(err)
        return
    _print_quality_summary(manifest, quality_dir(data))


def _reference_paths(values: tuple[str, ...]) -> list[str]:
    paths: list[str] = []
    for value in values:
        parts = [value] if Path(value).exists() else value.split()
        paths += [str(Path(p).resolve()) for p in parts]
    return paths


def _print_quality_summary(manifest: dict, out: Path) -> None:
    m, c = manifest["metrics"], manifest["counts"]
    rows = [
        ("reference documents (train / held out)", f"{c['train_positive']:,} / {c['holdout_positive']:,}"),
        ("crawl negatives (train / held out)", f"{c['train_negative']:,} / {c['holdout_negative']:,}"),
        ("held-out ROC AUC", f"{m['roc_auc']:.3f}"),
        (f"threshold (keeps {m['target_recall']:.1%} of held-out reference)", f"{m['threshold']:.3f}"),
        ("precision / recall at that threshold", f"{m['precision']:.3f} / {m['recall']:.3f}"),
        ("precision / recall at 0.5", f"{m['precision_at_0.5']:.3f} / {m['recall_at_0.5']:.3f}"),
    ]
    click.echo(f"\nquality-train: summary ({manifest.get('elapsed_s', 0):.1f}s)")
    click.echo(format_table(rows, ["", "value"]))
    click.echo(
        "(negatives are raw crawl pages, some of them good, so precision and AUC understate the classifier)\n"
        f"model: {out / manifest['model']['path']}"
    )


#: The options of `filter` that configure the chain; `evaluate-filter` takes them too, with the same help.
