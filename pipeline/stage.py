"""Run a stage: a pure function over each input shard, an executor, receipts, and a manifest.

A stage is described by a config dataclass, a list of `ShardTask`s (one output shard per task) and a
top-level function `fn(task, stage_dir, config) -> ShardStats`. `run_stage` decides which shards are
already done (their receipt matches the config and the inputs), hands the rest to an executor, checks
the accounting identity of every shard, writes its receipt, and writes `manifest.json` last. Every
stage of the pipeline runs here, including the ones with a single task (download lists, the quality
model, the tokenizer): config hash, skip, refusal, receipts and manifest exist once.

Executors only run `fn` on tasks and hand back the `ShardStats`; the driver (this process) alone
writes receipts and the manifest. `LocalExecutor` runs tasks in this process or a process pool;
`pipeline.ray_executor.RayExecutor` runs one Ray task per shard on a cluster. The executor is not part
of the config: a stage begun on one executor can be finished on another, with identical outputs.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from pipeline.errors import AccountingError, ConfigError, InputError, StageConfigChanged
from formats.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    config_dict,
    config_hash,
    file_fingerprint,
    listed_path,
    read_json,
    without_timings,
    write_json_atomic,
)
from pipeline.storage import stage_path

log = logging.getLogger(__name__)

RECEIPTS_DIR = "_receipts"


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: input files in, one output shard (named `name`) out."""

    name: str
    inputs: tuple[str, ...]


@dataclass
class ShardStats:
    """What one shard did. The identity `docs_in == kept + dropped + unreadable` must hold.

    `dropped` and `unreadable` count documents by reason code; `outputs` lists output file records
    (see `manifest.output_record`); `extra` holds stage-specific figures (tokens, clusters, ...),
    summed over shards in the manifest when numeric.
    """

    docs_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    unreadable: Counter = field(default_factory=Counter)
    outputs: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def check(self, where: str) -> None:
        accounted = self.kept + sum(self.dropped.values()) + sum(self.unreadable.values())
        if accounted != self.docs_in:
            raise AccountingError(
                f"{where}: {self.docs_in} documents in but {accounted} accounted for "
                f"(kept {self.kept}, dropped {dict(self.dropped)}, unreadable {dict(self.unreadable)}); "
                "this is a bug in the stage, please report it"
            )

    def to_json(self) -> dict:
        return {
            "docs_in": self.docs_in,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "unreadable": dict(sorted(self.unreadable.items())),
            "outputs": self.outputs,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "ShardStats":
        return cls(
            docs_in=obj["docs_in"],
            kept=obj["kept"],
            dropped=Counter(obj["dropped"]),
            unreadable=Counter(obj["unreadable"]),
            outputs=obj["outputs"],
            extra=obj.get("extra", {}),
        )


@dataclass
class Progress:
    """A snapshot handed to the progress callback about twice a second."""

    docs: int
    shards_done: int
    shards_total: int
    shards_skipped: int
    elapsed_s: float


# --- progress counter shared with worker processes -------------------------------------------------

_counter: Any = None
_pending = 0


_on_flush: Callable[[int], None] | None = None
_last_flush = 0.0


def _init_worker(counter: Any, on_flush: Callable[[int], None] | None = None) -> None:
    """Set the shared counter (and, for tasks run in the driver itself, a callback that shows progress
    while a long task runs, at most twice a second)."""
    global _counter, _on_flush
    _counter = counter
    _on_flush = on_flush


def report_progress(docs: int = 1) -> None:
    """Called by stage functions as they go; cheap (batched into the shared counter)."""
    global _pending
    _pending += docs
    if _pending >= 256:
        flush_progress()


def flush_progress() -> None:
    global _pending, _last_flush
    if _counter is not None and _pending:
        with _counter.get_lock():
            _counter.value += _pending
        if _on_flush is not None and time.monotonic() - _last_flush > 0.5:
            _last_flush = time.monotonic()
            _on_flush(_counter.value)
    _pending = 0


def run_task(fn: Callable, task: ShardTask, stage_dir: str, config: Any) -> ShardStats:
    """Run one task where an executor put it (this process, a pool worker, a Ray worker)."""
    try:
        return fn(task, Path(stage_dir), config)
    finally:
        flush_progress()


# --- executors -----------------------------------------------------------------------------------

#: Called by an executor for each finished task, in the driver: (task, its stats).
OnDone = Callable[[ShardTask, ShardStats], None]
#: Called by an executor about twice a second, in the driver, with the documents processed so far.
OnTick = Callable[[int], None]


class Executor(Protocol):
    """Runs a stage function over tasks somewhere and hands each result back to the driver.

    An executor never writes receipts or manifests: `run_stage` does, in the driver, as results arrive.
    It raises the first task error it cannot retry (after cancelling what it can).
    """

    name: str

    def run(self, fn: Callable, tasks: Sequence[ShardTask], stage_dir: Path, config: Any,
            on_done: OnDone, on_tick: OnTick, stage: str = "") -> None: ...


@dataclass
class LocalExecutor:
    """Tasks in this process (one worker, or one task) or in a pool of `workers` spawned processes."""

    workers: int = 1
    name: str = "local"

    def run(self, fn: Callable, tasks: Sequence[ShardTask], stage_dir: Path, config: Any,
            on_done: OnDone, on_tick: OnTick, stage: str = "") -> None:
        ctx = mp.get_context("spawn")
        counter = ctx.Value("q", 0)
        if self.workers <= 1 or len(tasks) <= 1:
            _init_worker(counter, on_tick)
            try:
                for task in tasks:
                    on_done(task, run_task(fn, task, str(stage_dir), config))
                    on_tick(counter.value)
            finally:
                _init_worker(None)
            return
        with cf.ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(counter,)
        ) as pool:
            futures = {pool.submit(run_task, fn, t, str(stage_dir), config): t for t in tasks}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        on_done(futures[fut], fut.result())
                    on_tick(counter.value)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise


EXECUTORS = ("local", "ray")


def make_executor(name: str = "local", workers: int = 1, address: str | None = None) -> Executor:
    """The executor called `name`: "local" (`workers` processes) or "ray" (the cluster at `address`,
    else RAY_ADDRESS, else a Ray started on this machine). Ray is imported only here, on request."""
    if name == "local":
        return LocalExecutor(workers=max(1, workers))
    if name == "ray":
        try:
            from pipeline.ray_executor import RayExecutor  # optional dependency: kept out of the default path
        except ImportError as exc:
            raise ConfigError(
                "--executor", f"ray is not installed ({exc}); install it with `pip install 'crawlgpt[ray]'`"
            ) from exc
        return RayExecutor(address=address)
    raise ConfigError("--executor", f"{name!r}; choose one of {', '.join(EXECUTORS)}")


# --- the runner ----------------------------------------------------------------------------------


def inputs_fingerprint(task: ShardTask, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in task.inputs:
        h.update(file_fingerprint(p).encode() if os.path.exists(p) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict) -> str:
    """The fields that differ, by dotted key (nested configs are compared field by field)."""
    old, new = _flatten(old), _flatten(new)
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs) or "(no field differs; the stage's format version changed)"


def _check_config(stage_dir: Path, stage: str, cfg: dict, cfg_hash: str, force: bool, keep_outputs: bool,
                  hint: str) -> None:
    """Refuse to mix outputs of two configs in one folder unless `force` wipes the old ones."""
    previous: dict | None = None
    manifest = stage_dir / MANIFEST_NAME
    if manifest.exists():
        previous = read_json(manifest)
    else:
        receipts = sorted((stage_dir / RECEIPTS_DIR).glob("*.json")) if stage_dir.exists() else []
        if receipts:
            previous = read_json(receipts[0])
    if previous is None or previous.get("config_hash") == cfg_hash:
        return
    if "config_hash" not in previous and previous.get("config") == cfg:
        return  # a manifest from before this runner (the download stage's) with the same config
    if force:
        if keep_outputs:
            log.warning("%s: config changed, --force given: forgetting the old shards (files kept as a cache)", stage)
            shutil.rmtree(stage_dir / RECEIPTS_DIR, ignore_errors=True)
            manifest.unlink(missing_ok=True)
        else:
            log.warning("%s: config changed, --force given: removing %s", stage, stage_dir)
            shutil.rmtree(stage_dir)
        return
    raise StageConfigChanged(
        f"{stage_dir} holds output of stage '{stage}' made with a different config "
        f"({config_diff(previous.get('config', {}), cfg)}). {hint + ' ' if hint else ''}Rerun with --force "
        "(make ... FORCE=1) to discard it and start over, or choose another output folder (DATA=...)."
    )


def run_stage(
    stage: str,
    stage_dir: str | Path,
    config: Any,
    tasks: Sequence[ShardTask],
    fn: Callable[[ShardTask, Path, Any], ShardStats],
    workers: int = 1,
    force: bool = False,
    upstream: dict | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    finalize: Callable[[Path, dict], dict] | None = None,
    executor: Executor | None = None,
    on_shard: Callable[[dict], None] | None = None,
    keep_outputs_on_force: bool = False,
    refusal_hint: str = "",
) -> dict:
    """Run `fn` over every task not already done and write the stage manifest; return it.

    `upstream` is recorded in the manifest and mixed into every shard's input fingerprint, so a change
    upstream (e.g. a rebuilt quality model) redoes the shards that depend on it. `finalize`, if given,
    may add stage-level fields to the manifest dict before it is written. `executor` runs the tasks
    (default: `LocalExecutor(workers)`); `on_shard(receipt)` is called in the driver for each shard
    finished in this run. `keep_outputs_on_force` makes --force forget the receipts but keep the files
    (for outputs that are a cache keyed by their input, such as downloads); `refusal_hint` is added to
    the message that refuses a changed config.

    A rerun that finds every shard done and the manifest unchanged (timings aside) leaves the manifest
    file as it is and returns it.
    """
    stage_dir = stage_path(stage_dir)
    executor = executor or LocalExecutor(workers=workers)
    cfg = config_dict(config)
    cfg_hash = config_hash({"stage": stage, "format": FORMAT_VERSION, **cfg})
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        raise ValueError(f"{stage}: two input shards map to the same output name(s) {dupes[:5]}; rename the inputs")
    _check_config(stage_dir, stage, cfg, cfg_hash, force, keep_outputs_on_force, refusal_hint)
    _remove_temporaries(stage_dir)
    receipts_dir = stage_dir / RECEIPTS_DIR
    receipts_dir.mkdir(parents=True, exist_ok=True)
    upstream_key = repr(sorted((upstream or {}).items()))

    results: dict[str, dict] = {}
    todo: list[ShardTask] = []
    for task in tasks:
        fp = inputs_fingerprint(task, upstream_key)
        receipt = _load_receipt(receipts_dir / f"{task.name}.json", stage_dir, cfg_hash, fp)
        if receipt is not None:
            results[task.name] = receipt
        else:
            todo.append(task)
    previous = _read_manifest(stage_dir) if not todo else None
    (stage_dir / MANIFEST_NAME).unlink(missing_ok=True)  # a stage being rerun is not finished
    _remove_stale(stage_dir, receipts_dir, set(names))
    skipped = len(results)
    if skipped:
        log.info("%s: %d of %d shards already done, skipping them", stage, skipped, len(tasks))

    start = time.monotonic()
    docs_seen = [0]

    def done(task: ShardTask, stats: ShardStats) -> None:
        stats.check(f"{stage} shard {task.name}")
        receipt = {
            "stage": stage,
            "shard": task.name,
            "inputs": list(task.inputs),
            "inputs_fingerprint": inputs_fingerprint(task, upstream_key),
            "config_hash": cfg_hash,
            "config": cfg,
            **stats.to_json(),
        }
        write_json_atomic(receipts_dir / f"{task.name}.json", receipt)
        results[task.name] = receipt
        log.info(
            "%s %s: %d in, %d kept, %d dropped, %d unreadable",
            stage, task.name, stats.docs_in, stats.kept,
            sum(stats.dropped.values()), sum(stats.unreadable.values()),
        )
        if on_shard is not None:
            on_shard(receipt)

    def tick(docs: int) -> None:
        docs_seen[0] = max(docs_seen[0], docs)
        if on_progress:
            on_progress(Progress(docs_seen[0], len(results), len(tasks), skipped, time.monotonic() - start))

    if todo:
        executor.run(fn, todo, stage_dir, config, done, tick, stage=stage)
        _remove_temporaries(stage_dir)  # what attempts lost with their worker left behind (then retried)
    tick(docs_seen[0])

    manifest = _build_manifest(stage, cfg, cfg_hash, upstream, [results[n] for n in sorted(results)])
    manifest["elapsed_s"] = round(time.monotonic() - start, 3)
    if finalize is not None:
        manifest = finalize(stage_dir, manifest)
    manifest = json_roundtrip(manifest)
    if previous is not None and without_timings(previous) == without_timings(manifest):
        manifest = previous  # nothing changed: keep the file (and its timings) as they are
    write_json_atomic(stage_dir / MANIFEST_NAME, manifest)
    return manifest


def json_roundtrip(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), for comparing with a file's content."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _read_manifest(stage_dir: Path) -> dict | None:
    try:
        return read_json(stage_dir / MANIFEST_NAME) if (stage_dir / MANIFEST_NAME).exists() else None
    except ValueError:
        return None


def _remove_temporaries(stage_dir: Path) -> None:
    """Delete temporary files a killed run left behind (see `manifest.atomic_path`)."""
    if stage_dir.exists():
        for tmp in stage_dir.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _load_receipt(path: Path, stage_dir: Path, cfg_hash: str, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        receipt = read_json(path)
    except ValueError:
        return None
    if receipt.get("config_hash") != cfg_hash or receipt.get("inputs_fingerprint") != fingerprint:
        return None
    for out in receipt.get("outputs", []):
        try:
            p = listed_path(stage_dir, out["path"], path)
        except ValueError as exc:
            log.warning("%s; redoing the shard", exc)
            return None
        if not p.exists() or p.stat().st_size != out["bytes"]:
            return None
    return receipt


def _remove_stale(stage_dir: Path, receipts_dir: Path, names: set[str]) -> None:
    """Drop receipts and outputs of shards whose input is no longer part of the stage."""
    for receipt_path in receipts_dir.glob("*.json"):
        if receipt_path.stem in names:
            continue
        try:
            receipt = read_json(receipt_path)
            for out in receipt.get("outputs", []):
                listed_path(stage_dir, out["path"], receipt_path).unlink(missing_ok=True)
        except ValueError as exc:
            log.warning("stale receipt %s: %s; leaving its outputs alone", receipt_path, exc)
        receipt_path.unlink(missing_ok=True)
        log.info("removed stale shard %s (its input is gone)", receipt_path.stem)


def _build_manifest(stage: str, cfg: dict, cfg_hash: str, upstream: dict | None, receipts: list[dict]) -> dict:
    totals = ShardStats()
    extra: dict[str, Any] = {}
    for r in receipts:
        totals.docs_in += r["docs_in"]
        totals.kept += r["kept"]
        totals.dropped.update(r["dropped"])
        totals.unreadable.update(r["unreadable"])
        for k, v in r.get("extra", {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                extra[k] = extra.get(k, 0) + v
    totals.check(f"{stage} totals")
    return {
        "stage": stage,
        "format_version": FORMAT_VERSION,
        "config": cfg,
        "config_hash": cfg_hash,
        "upstream": upstream or {},
        "totals": {
            "docs_in": totals.docs_in,
            "kept": totals.kept,
            "dropped": dict(sorted(totals.dropped.items())),
            "unreadable": dict(sorted(totals.unreadable.items())),
            "extra": extra,
        },
        "shards": [
            {k: r[k] for k in ("shard", "inputs", "docs_in", "kept", "dropped", "unreadable", "outputs", "extra")}
            for r in receipts
        ],
    }


def manifest_outputs(manifest: dict, prefix: str) -> list[str]:
    """Relative paths of a manifest's output files under folder `prefix` (e.g. 'kept/'), in shard order."""
    return [o["path"] for s in manifest["shards"] for o in s["outputs"] if o["path"].startswith(prefix)]


def summary_rows(manifest: dict) -> list[tuple[str, int, str]]:
    """(what, documents, share) rows for the end-of-stage summary table."""
    t = manifest["totals"]
    n = max(t["docs_in"], 1)
    rows = [("documents in", t["docs_in"], "100.0%"), ("kept", t["kept"], f"{100 * t['kept'] / n:.1f}%")]
    for reason, c in sorted(t["dropped"].items(), key=lambda kv: -kv[1]):
        rows.append((f"dropped: {reason}", c, f"{100 * c / n:.1f}%"))
    for reason, c in sorted(t["unreadable"].items(), key=lambda kv: -kv[1]):
        rows.append((f"unreadable: {reason}", c, f"{100 * c / n:.1f}%"))
    return rows


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain aligned text table (no extra dependency)."""
    cells = [list(map(str, header))] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def stage_documents(stage_dir: str | Path, make_target: str = "corpus") -> list[Path]:
    """The kept-document shards of a finished stage, from its manifest (never a glob of the folder).

    Reading the manifest rather than listing files means a stage never picks up a stale or half-written
    shard; a stage that has not finished is an error naming the command that makes it.
    """
    stage_dir = Path(stage_dir)
    manifest = stage_dir / MANIFEST_NAME
    if not manifest.exists():
        raise InputError(
            f"{stage_dir} has no {MANIFEST_NAME}: its stage has not finished. Run `make {make_target}` first."
        )
    m = read_json(manifest)
    try:
        return [listed_path(stage_dir, p, manifest) for p in manifest_outputs(m, "") if not p.startswith("rejected/")]
    except ValueError as exc:
        raise InputError(f"{exc} (`make {make_target}`)") from exc
