"""The filter stage: raw input files in, kept documents and rejected documents (with reasons) out.

Each raw file is one shard. Every document goes through a fixed chain of filters, cheapest and most
decisive first: language ID, Gopher quality, C4, FineWeb, Gopher repetition, then the quality
classifier and the page model (`filters/page_model.py`). The first filter that says drop decides the document's reason; the rest are not run. The
order is fixed (`RULES`; the config only selects families), so a rerun gives the same reasons.

Outputs in DATA/filtered/ (the common document-stage layout):
- `<shard>.parquet`: kept documents, their text untouched, with `lang`, `lang_score` and (with a
  classifier) `quality_score` added to `meta`;
- `rejected/<shard>.parquet`: every dropped document with `reason` and `score` (the measured value that
  failed), plus a row per unreadable input item (id = its location, empty text,
  reason `unreadable:<code>`), so nothing leaves the pipeline unaccounted for;
- `manifest.json`: counts per reason, per shard and in total, written last.

A new quality model (or lid model, or page model) changes the stage's upstream fingerprint, so every
shard is redone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from formats import layout
from pipeline.documents import Document, DocumentWriter
from pipeline.errors import ConfigError, InputError
from pipeline.file_cache import FileCache
from pipeline.filters.base import Decision, Filter
from pipeline.filters.c4 import C4Config, C4Filter
from pipeline.filters.classifier import HQ_LABEL, NORMALIZATIONS, QUALITY_OPTION, QualityClassifierFilter
from pipeline.filters.fineweb import FineWebConfig, FineWebFilter
from pipeline.filters.gopher import (
    GopherQualityConfig,
    GopherQualityFilter,
    GopherRepetitionConfig,
    GopherRepetitionFilter,
)
from pipeline.filters.language import LID_OPTION, LanguageFilter
from pipeline.filters.models import check_fasttext_file
from pipeline.filters.page_model import PageModelFilter, load_page_model
from pipeline.filters.text_stats import TextStats
from pipeline.download import load_raw_files, raw_dir
from formats.manifest import BY_CONTENT, manifest_hash, output_record, sha256_file
from pipeline.quality_train import model_manifest
from pipeline.readers import ReaderConfig, Unreadable, read_file
from pipeline.stage import Executor, Progress, ShardStats, ShardTask, report_progress, run_stage

log = logging.getLogger(__name__)

STAGE = "filter"
FILTERED_DIR = layout.FILTERED
REJECTED_DIR = "rejected"
#: The rule families, in the order they run (after language ID, before the quality classifier).
RULES = ("gopher_quality", "c4", "fineweb", "gopher_repetition")
#: The rule families the CLI runs with a page model, which weighs C4's and FineWeb's statistics itself
#: (chosen by cross-validation on labelled web pages and by the dev crawl: docs/filter.md).
WEB_RULES = ("gopher_quality", "gopher_repetition")


@dataclass(frozen=True)
class FilterConfig:
    """Everything that decides which documents the filter stage keeps."""

    #: Path of the fastText language-ID model (lid.176); resolve URLs before building the config.
    #: The config records its file name; its content (sha256) is in the manifest's `upstream`.
    lid_model: str = field(metadata=BY_CONTENT)
    #: Languages to keep (lid.176 codes: en, de, zh, ...).
    langs: tuple[str, ...] = ("en",)
    #: Smallest lid.176 probability of the top language to keep a document (FineWeb: 0.65).
    min_lang_score: float = 0.65
    #: Characters of each document given to language ID (the first ones; enough for a stable answer).
    lid_max_chars: int = 10_000
    #: Rule families to apply, from `RULES`, run in `RULES` order.
    rules: tuple[str, ...] = RULES
    #: Gopher quality thresholds.
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    #: Gopher repetition thresholds.
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    #: C4 rules.
    c4: C4Config = field(default_factory=C4Config)
    #: FineWeb thresholds.
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)
    #: Path of a fastText quality model, or None for no classifier (recorded like lid_model).
    quality_model: str | None = field(default=None, metadata=BY_CONTENT)
    #: Keep documents with P(label) >= this; None: the threshold in the model's manifest (else 0.5).
    quality_threshold: float | None = None
    #: The model's label for good text; None: from the model's manifest (else `__label__hq`).
    quality_label: str | None = None
    #: Text normalisation the model expects; None: from the model's manifest (else "none").
    quality_normalization: str | None = None
    #: GPT-3's Pareto sampling shape (9 in GPT-3) instead of the threshold; None: threshold.
    quality_pareto_alpha: float | None = None
    #: Seed of the Pareto draws.
    seed: int = 0
    #: Path of a page model (JSON, `page-model-train`), or None; it runs last and, with a quality
    #: model, takes the classifier's score as one of its features instead of its threshold.
    page_model: str | None = field(default=None, metadata=BY_CONTENT)
    #: Keep pages with page-model probability >= this; None: the threshold stored in the model.
    page_threshold: float | None = None
    #: JSONL key / Parquet column with the text, for raw inputs that are not WARC/WET.
    text_field: str = "text"

    def __post_init__(self) -> None:
        if not self.langs:
            raise ConfigError("--langs", "give at least one language code (e.g. en)")
        if not 0.0 <= self.min_lang_score <= 1.0:
            raise ConfigError("--lang-threshold", f"must be between 0 and 1, got {self.min_lang_score}")
        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise ConfigError("--rules", f"unknown rule families {unknown}; choose from {', '.join(RULES)}")
        if self.quality_threshold is not None and not 0.0 <= self.quality_threshold <= 1.0:
            raise ConfigError("--quality-threshold", f"must be between 0 and 1, got {self.quality_threshold}")
        if self.quality_normalization is not None and self.quality_normalization not in NORMALIZATIONS:
            raise ConfigError("--quality-normalization", f"must be one of {NORMALIZATIONS}")
        if self.quality_pareto_alpha is not None and self.quality_pareto_alpha <= 0:
            raise ConfigError("--quality-pareto-alpha", f"must be > 0, got {self.quality_pareto_alpha}")
        if self.page_threshold is not None and not 0.0 <= self.page_threshold <= 1.0:
            raise ConfigError("--page-threshold", f"must be between 0 and 1, got {self.page_threshold}")


def with_rule_overrides(config: FilterConfig, overrides: dict[str, str]) -> FilterConfig:
    """A copy of `config` with rule thresholds set from {"family.field": "value"} (the CLI's --set).

    Values are parsed by the field's type; "none" disables a rule. Unknown names raise ConfigError.
    """
    families: dict[str, Any] = {}
    for key, raw in overrides.items():
        family, _, name = key.partition(".")
        if family not in RULES or not name:
            raise ConfigError("--set", f"{key!r}: expected FAMILY.FIELD with FAMILY one of {', '.join(RULES)}")
        current = families.get(family, getattr(config, family))
        fields = {f.name: f for f in dataclasses.fields(current)}
        if name not in fields:
            raise ConfigError("--set", f"{key!r}: {family} has no field {name!r}; fields: {', '.join(fields)}")
        families[family] = dataclasses.replace(current, **{name: _parse_value(key, raw, getattr(current, name))})
    return dataclasses.replace(config, **families)


def _parse_value(key: str, raw: str, current: Any) -> Any:
    text = raw.strip()
    if text.lower() == "none":
        return None
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float) or current is None:
            return float(text)
        if isinstance(current, tuple):
            items = [t.strip() for t in text.split(",") if t.strip()]
            if current and isinstance(current[0], tuple):  # ((n, limit), ...): "2:0.2,3:0.18"
                return tuple((int(n), float(v)) for n, v in (t.split(":") for t in items))
            return tuple(items)
    except ValueError as exc:
        raise ConfigError("--set", f"{key}={raw!r}: cannot parse as {type(current).__name__}") from exc
    return text


# --- the chain -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualitySettings:
    """The classifier settings actually applied (config values, else the model's manifest, else defaults)."""

    threshold: float
    label: str
    normalization: str
    max_chars: int


def quality_settings(config: FilterConfig) -> QualitySettings | None:
    """Resolve the classifier's threshold, label and normalisation for `config.quality_model`."""
    if config.quality_model is None:
        return None
    manifest = model_manifest(config.quality_model) or {}
    return QualitySettings(
        threshold=config.quality_threshold if config.quality_threshold is not None else manifest.get("threshold", 0.5),
        label=config.quality_label or manifest.get("label", HQ_LABEL),
        normalization=config.quality_normalization or manifest.get("normalization", "none"),
        max_chars=int(manifest.get("max_chars", 100_000)),
    )


def build_chain(config: FilterConfig) -> list[Filter]:
    """The filters of `config`, in the order they run."""
    chain: list[Filter] = [LanguageFilter(config.lid_model, config.langs, config.min_lang_score, config.lid_max_chars)]
    makers = {
        "gopher_quality": lambda: GopherQualityFilter(config.gopher_quality),
        "c4": lambda: C4Filter(config.c4),
        "fineweb": lambda: FineWebFilter(config.fineweb),
        "gopher_repetition": lambda: GopherRepetitionFilter(config.gopher_repetition),
    }
    chain += [makers[r]() for r in RULES if r in config.rules]
    settings = quality_settings(config)
    qf = None
    if settings is not None:
        qf = QualityClassifierFilter(
            config.quality_model,
            threshold=settings.threshold,
            label=settings.label,
            normalization=settings.normalization,
            pareto_alpha=config.quality_pareto_alpha,
            seed=config.seed,
            max_chars=settings.max_chars,
        )
    page_model = load_page_model(config.page_model) if config.page_model is not None else None
    if qf is not None and (page_model is None or not page_model.needs_quality_score):
        chain.append(qf)
    if page_model is not None:
        # a page model trained with the classifier's score weighs it with the other signals (it replaces
        # the classifier's threshold); one trained without it runs after the classifier
        chain.append(PageModelFilter(page_model, chain[0], qf, config.page_threshold))
    return chain


def chain_names(config: FilterConfig) -> list[str]:
    """The names of the filters `config` runs, in order (without loading any model)."""
    names = ["language", *(r for r in RULES if r in config.rules)]
    page_model = load_page_model(config.page_model) if config.page_model is not None else None
    if config.quality_model is not None and (page_model is None or not page_model.needs_quality_score):
        names.append("quality_classifier")
    return names + (["page_model"] if page_model is not None else [])


_CHAINS = FileCache(keep_one=True)


def _chain_for(config: FilterConfig) -> list[Filter]:
    """One chain (and one load of each model) per worker process, config and model files.

    The key includes each model file's size and modification time, so a model retrained at the same
    path is loaded afresh (a long-lived process, e.g. tests running shards in-process, must not keep
    filtering with the old one).
    """
    models = [p for p in (config.lid_model, config.quality_model, config.page_model) if p]
    return _CHAINS.get(models, lambda: build_chain(config), extra=(config,))


def decide(chain: list[Filter], doc: Document) -> tuple[Decision | None, dict]:
    """Run `chain` on `doc`: (the first drop decision or None if kept, the annotations gathered)."""
    stats = TextStats(doc.text)
    notes: dict = {}
    for f in chain:
        d = f.decide(doc, stats)
        if d.annotations:
            notes.update(d.annotations)
        if not d.keep:
            return d, notes
    return None, notes


# --- one shard -----------------------------------------------------------------------------------


def shard_name(path: str | Path) -> str:
    """The output shard name of a raw file: its name without extensions (crawl-00000.warc.wet.gz -> crawl-00000)."""
    name = Path(path).name
    return name.split(".", 1)[0] or name


def shard_names(paths: list[Path]) -> list[str]:
    """Output shard names for raw files, unique even when two files share a name.

    Each file keeps `shard_name` when no other file has it. Files that would collide (a/x.jsonl and
    b/x.jsonl, or a.warc beside a.warc.gz) are named by their path below the folder they share instead,
    with separators and dots as `_` (a_x_jsonl, a_warc_gz), so every shard is told apart from the
    start and a rerun gives the same names.
    """
    base = [shard_name(p) for p in paths]
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(base):
        groups.setdefault(n, []).append(i)
    names = list(base)
    for n, members in groups.items():
        if len(members) < 2:
            continue
        absolute = [os.path.abspath(paths[i]) for i in members]
        common = os.path.commonpath([os.path.dirname(a) for a in absolute])
        for i, a in zip(members, absolute):
            names[i] = re.sub(r"[^A-Za-z0-9-]", "_", os.path.relpath(a, common))
    taken = Counter(names)
    for i, n in enumerate(names):
        if taken[n] > 1 or (names[i] != base[i] and n in base):  # a made name that meets another: number it
            names[i] = f"{n}-{i:05d}"
    return names


def filter_shard(task: ShardTask, stage_dir: Path, config: FilterConfig) -> ShardStats:
    """Filter one raw file into `<shard>.parquet` and `rejected/<shard>.parquet`; return the counts."""
    chain = _chain_for(config)
    stats = ShardStats()
    kept_path = stage_dir / f"{task.name}.parquet"
    rejected_path = stage_dir / REJECTED_DIR / f"{task.name}.parquet"
    reader = ReaderConfig(text_field=config.text_field)
    with DocumentWriter(kept_path) as kept, DocumentWriter(rejected_path, rejected=True) as rejected:
        for path in task.inputs:
            # a file that shares its name with another (see shard_names) is called by its shard name in
            # ids and locations, so documents named after their line (<file>:<line>) stay unique
            name = Path(path).name if task.name == shard_name(path) else task.name
            for item in read_file(path, reader, name=name):
                stats.docs_in += 1
                if isinstance(item, Unreadable):
                    reason = f"unreadable:{item.reason}"
                    stats.unreadable[item.reason] += 1
                    rejected.write(
                        Document(id=item.location, text="", source=name, meta={"detail": item.detail}),
                        reason=reason,
                        score=None,
                    )
                else:
                    decision, notes = decide(chain, item)
                    doc = dataclasses.replace(item, meta={**item.meta, **notes}) if notes else item
                    if decision is None:
                        stats.kept += 1
                        kept.write(doc)
                    else:
                        stats.dropped[decision.reason] += 1
                        rejected.write(doc, reason=decision.reason, score=_finite(decision.score))
                report_progress(1)
    stats.outputs = [
        output_record(kept_path, kept.rows, stage_dir),
        output_record(rejected_path, rejected.rows, stage_dir),
    ]
    log.debug("filter %s: %d in, %d kept", task.name, stats.docs_in, stats.kept)
    return stats


def _finite(x: float) -> float | None:
    return x if x == x else None  # NaN -> null in Parquet


# --- the stage -----------------------------------------------------------------------------------


def filter_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / FILTERED_DIR


def check_models(config: FilterConfig) -> None:
    """Fail before any work if a model is missing, not fastText, or lacks the label (InputError)."""
    check_fasttext_file(config.lid_model, LID_OPTION)
    if config.quality_model is not None:
        check_fasttext_file(config.quality_model, QUALITY_OPTION)
    build_chain(config)  # loads the models, checks the quality label


def run_filter(
    data_dir: str | Path,
    config: FilterConfig,
    workers: int = 1,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    executor: Executor | None = None,
) -> dict:
    """Filter every raw input file listed in DATA/raw/manifest.json into DATA/filtered/; return the manifest."""
    raw_files = load_raw_files(data_dir)
    if not raw_files:
        raise InputError(f"{raw_dir(data_dir)}/manifest.json lists no input files; run `make download` first")
    check_models(config)
    tasks = [ShardTask(n, (str(p),)) for n, p in zip(shard_names(raw_files), raw_files)]
    upstream = {
        "raw": manifest_hash(raw_dir(data_dir)),
        "lid_model": sha256_file(config.lid_model),
        "quality_model": sha256_file(config.quality_model) if config.quality_model else None,
    }
    if config.page_model is not None:
        upstream["page_model"] = sha256_file(config.page_model)
    settings = quality_settings(config)
    if settings is not None:
        upstream["quality_settings"] = dataclasses.asdict(settings)

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        manifest["chain"] = chain_names(config)
        return manifest

    return run_stage(
        STAGE,
        filter_dir(data_dir),
        config,
        tasks,
        filter_shard,
        workers=workers,
        force=force,
        upstream=upstream,
        on_progress=on_progress,
        finalize=finalize,
        executor=executor,
    )
