"""Decontamination (`crawlgpt decontaminate`): drop corpus documents that share an n-gram with a benchmark.

GPT-3's rule (Brown et al. 2020, appendix C): a training document that shares any 13-gram with a
benchmark item is removed, so that benchmark accuracy measures the model and not its memory. Text is
compared as the GPT-3 and lm-evaluation-harness decontamination code compares it: lower-cased,
punctuation removed, split on whitespace. Benchmark items shorter than n words cannot match and are
counted in the manifest (`items_shorter_than_ngram`).

The stage runs after dedup: DATA/corpus in, DATA/decontaminated out (the tokenizer and the shards then
read it: `crawlgpt tokenizer --from decontaminated`, `make corpus DECONTAMINATE=...` wires this up).
One task per corpus shard, through the same stage runner as every other stage (receipts, resume, a
config change refused without --force, manifest written last). A dropped document goes to
`rejected/<shard>.parquet` with reason `benchmark_overlap_<task>`, score = the number of its n-grams
found in benchmarks, and in `meta` the matching item's id (`decontam_item`), task and the first
matching n-gram (`decontam_ngram`).

Benchmark files are the tasks' public release files, read by `formats.benchmark_tasks` into each item's passages:
its text without prompt scaffolding, question and answer together (PIQA: goal + solution, one passage
per solution; LAMBADA: the passage; WinoGrande: the sentence with each option), named as `TASK=PATH` or
just `PATH` when the file name says the task; in any other JSONL file each string field of a record is
one passage. An n-gram never spans two passages. They are inputs of
every task, so editing a benchmark file redoes the stage.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pipeline.documents import Document, DocumentWriter, read_documents
from pipeline.errors import ConfigError, InputError
from formats.manifest import manifest_hash, output_record
from pipeline.stage import Executor, Progress, ShardStats, ShardTask, report_progress, run_stage, stage_documents

log = logging.getLogger(__name__)

STAGE = "decontaminate"
OUTPUT_DIR = "decontaminated"
REJECTED_DIR = "rejected"
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


@dataclass(frozen=True)
class DecontaminateConfig:
    """Which benchmarks, and how long a shared word sequence must be to count as contamination."""

    benchmarks: tuple[str, ...] = ()
    """Benchmark files: `TASK=PATH` or `PATH` (task from the file name, else generic JSONL)."""
    ngram: int = 13
    """Words in a shared sequence that counts as overlap (13: GPT-3's choice)."""

    def validate(self) -> None:
        if not self.benchmarks:
            raise ConfigError("--benchmark", "name at least one benchmark file (TASK=PATH or PATH)")
        if self.ngram < 1:
            raise ConfigError("--ngram", f"{self.ngram}; must be >= 1")


def words(text: str) -> list[str]:
    """Lower-cased words with punctuation removed: the form in which n-grams are compared."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def ngrams(tokens: Sequence[str], n: int):
    return (tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def parse_benchmark(spec: str) -> tuple[str, Path]:
    """`TASK=PATH` -> (TASK, PATH); `PATH` -> (the task whose release name it has, or "jsonl", PATH)."""
    from formats.benchmark_tasks import TASKS

    task, sep, path = spec.partition("=")
    if sep and task in TASKS:
        return task, Path(path)
    path = Path(spec)
    for name, task_spec in TASKS.items():
        if path.name in task_spec.files:
            return name, path
    return "jsonl", path


def benchmark_items(spec: str) -> tuple[str, list[tuple[str, tuple[str, ...]]]]:
    """(task, [(item id, the item's passages)]) of one benchmark file; n-grams never span two passages."""
    from formats.benchmark_tasks import TASKS, BenchmarkDataError

    task, path = parse_benchmark(spec)
    if not path.is_file():
        raise InputError(f"benchmark file {path} does not exist (from --benchmark {spec!r})")
    if task != "jsonl":
        try:
            return task, [(item.id, item.passages) for item in TASKS[task].reader(path)]
        except BenchmarkDataError as err:
            raise InputError(str(err)) from err
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{number}: not a JSON line ({err.msg})") from err
                values = record.values() if isinstance(record, dict) else [record]
                items.append((f"{path.stem}-{number}", tuple(v for v in values if isinstance(v, str))))
    return path.stem, items


class NgramIndex:
    """Every n-gram of every benchmark item -> (task, item id) of the first item that has it."""

    def __init__(self, benchmarks: Sequence[str], n: int):
        self.n = n
        self.owner: dict[tuple[str, ...], tuple[str, str]] = {}
        self.items = Counter()
        self.too_short = Counter()
        for spec in benchmarks:
            task, items = benchmark_items(spec)
            for item_id, passages in items:
                self.items[task] += 1
                longest = 0
                for passage in passages:
                    tokens = words(passage)
                    longest = max(longest, len(tokens))
                    for gram in ngrams(tokens, n):
                        self.owner.setdefault(gram, (task, item_id))
                if longest < n:
                    self.too_short[task] += 1

    def matches(self, text: str) -> tuple[int, tuple[str, ...] | None]:
        """(how many of the text's n-grams are benchmark n-grams, the first of them)."""
        found, first = 0, None
        for gram in ngrams(words(text), self.n):
            if gram in self.owner:
                found += 1
                first = first or gram
        return found, first


_INDEX: dict[tuple, NgramIndex] = {}


def _index(config: DecontaminateConfig) -> NgramIndex:
    """The n-gram index, built once per worker process."""
    key = (config.benchmarks, config.ngram)
    if key not in _INDEX:
        _INDEX.clear()
        _INDEX[key] = NgramIndex(config.benchmarks, config.ngram)
    return _INDEX[key]


def decontaminate_shard(task: ShardTask, stage_dir: Path, config: DecontaminateConfig) -> ShardStats:
    """Stage function: one corpus shard -> kept shard + rejected shard (with the matching item)."""
    index = _index(config)
    stats = ShardStats()
    kept_path = stage_dir / f"{task.name}.parquet"
    rejected_path = stage_dir / REJECTED_DIR / f"{task.name}.parquet"
    with DocumentWriter(kept_path) as kept, DocumentWriter(rejected_path, rejected=True) as rejected:
        for doc in read_documents(task.inputs[0]):
            stats.docs_in += 1
            found, gram = index.matches(doc.text)
            if gram is None:
                kept.write(doc)
                stats.kept += 1
            else:
                bench, item_id = index.owner[gram]
                reason = f"benchmark_overlap_{bench}"
                meta = {**doc.meta, "decontam_task": bench, "decontam_item": item_id, "decontam_ngram": " ".join(gram)}
                rejected.write(Document(doc.id, doc.text, doc.url, doc.source, meta), reason=reason, score=float(found))
                stats.dropped[reason] += 1
            report_progress(1)
    stats.outputs = [output_record(kept_path, kept.rows, stage_dir),
                     output_record(rejected_path, rejected.rows, stage_dir)]
    return stats


def run_decontaminate(data_dir: str | Path, config: DecontaminateConfig, workers: int = 1, force: bool = False,
                      on_progress: Callable[[Progress], None] | None = None, executor: Executor | None = None) -> dict:
    """DATA/corpus -> DATA/decontaminated; return the manifest (with the benchmark item counts)."""
    config.validate()
    data_dir = Path(data_dir)
    corpus = data_dir / "corpus"
    inputs = stage_documents(corpus, "corpus")
    index = _index(config)  # reads every benchmark file now: a bad one fails before any work
    bench_files = tuple(str(parse_benchmark(spec)[1].resolve()) for spec in config.benchmarks)
    tasks = [ShardTask(Path(p).name.removesuffix(".parquet"), (str(p), *bench_files)) for p in inputs]

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        manifest["benchmarks"] = {
            "items": dict(index.items), "items_shorter_than_ngram": dict(index.too_short),
            "distinct_ngrams": len(index.owner)}
        return manifest

    return run_stage(STAGE, data_dir / OUTPUT_DIR, config, tasks, decontaminate_shard, workers=workers, force=force,
                     upstream={"corpus": manifest_hash(corpus)}, on_progress=on_progress, finalize=finalize,
                     executor=executor)
