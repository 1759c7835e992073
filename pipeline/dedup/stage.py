"""The dedup stage: its config and `run_dedup`, which chains the four phases.

    filtered/<shard>.parquet
      -> dedup/signatures/<shard>.parquet   phase 1, one task per shard    (signatures.py)
      -> dedup/partitions/part-NNNNN.parquet phase 2, one task per partition (buckets.py)
      -> dedup/clusters/<shard>.parquet     phase 3, one task               (clusters.py)
      -> corpus/<shard>.parquet + corpus/rejected/<shard>.parquet + corpus/manifest.json  phase 4 (apply.py)

Each phase is a `pipeline.stage.run_stage` with its own folder, receipts and manifest, so a killed run
resumes where it stopped and a rerun with the same config skips finished work. Each phase's config holds
only the options it depends on: changing `threshold` reuses the signatures, and changing anything
refuses to overwrite without `force`, naming the phase folder and the option that changed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from pipeline.errors import AccountingError
from formats.manifest import load_manifest
from pipeline.stage import Executor, Progress, ShardTask, manifest_outputs, run_stage, stage_documents

from .apply import apply_shard
from .buckets import partition_name, partition_shard
from .clusters import cluster_shard
from .config import ClusterConfig, DedupConfig
from .signatures import signature_shard

log = logging.getLogger(__name__)

STAGE = "dedup"
UPSTREAM_DIR = "filtered"
WORK_DIR = "dedup"
OUTPUT_DIR = "corpus"
#: Documents of work that make starting one more worker process worth it (a spawned worker needs ~0.5-1 s
#: to start and import numpy, pyarrow and datasketch). Below this a phase runs in-process: on the 13k
#: documents of the dev crawl that is faster than any pool. Per phase, from bench/bench_dedup.py costs:
#: signatures ~150 us/doc, partitions ~9 us/doc per partition, apply ~50 us/doc.
DOCS_PER_WORKER = {"signatures": 15_000, "partitions": 200_000, "apply": 40_000}


def phase_workers(phase: str, workers: int, tasks: int, docs: int, partitions: int = 1) -> int:
    """Workers worth starting for a phase: at most `workers` and `tasks`, one per DOCS_PER_WORKER of work."""
    work = docs * (partitions if phase == "partitions" else 1)
    n = max(1, min(workers, tasks, round(work / DOCS_PER_WORKER[phase])))
    if n < min(workers, tasks):
        log.info("dedup-%s: %d worker(s) for %s documents (a worker pays off per ~%s)", phase, n, f"{docs:,}",
                 f"{DOCS_PER_WORKER[phase] // (partitions if phase == 'partitions' else 1):,}")
    return n


class _PhaseProgress:
    """Presents the four phases to one progress callback as a single run over all their tasks."""

    def __init__(self, on_progress: Callable[[Progress], None] | None, total_tasks: int):
        self.on_progress = on_progress
        self.total = total_tasks
        self.start = time.monotonic()
        self.docs = self.done = self.skipped = 0
        self._last: Progress | None = None

    def phase(self) -> Callable[[Progress], None] | None:
        if self.on_progress is None:
            return None
        if self._last is not None:
            self.docs += self._last.docs
            self.done += self._last.shards_done
            self.skipped += self._last.shards_skipped
            self._last = None

        def report(p: Progress) -> None:
            self._last = p
            self.on_progress(
                Progress(
                    docs=self.docs + p.docs,
                    shards_done=self.done + p.shards_done,
                    shards_total=self.total,
                    shards_skipped=self.skipped + p.shards_skipped,
                    elapsed_s=time.monotonic() - self.start,
                )
            )

        return report


def run_dedup(
    data_dir: str | Path,
    config: DedupConfig = DedupConfig(),
    workers: int = 1,
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    executor: Executor | None = None,
) -> dict:
    """Deduplicate DATA/filtered into DATA/corpus; return the corpus manifest (also on disk).

    Every phase runs its tasks on `executor` (default: local processes, as many as pay off).
    """
    data_dir = Path(data_dir)
    upstream_dir = data_dir / UPSTREAM_DIR
    inputs = stage_documents(upstream_dir, make_target="filter")
    upstream_manifest = load_manifest(upstream_dir) or {}
    upstream = {"filtered": upstream_manifest.get("config_hash", "")}
    names = [Path(p).stem for p in inputs]
    n_docs = int(upstream_manifest.get("totals", {}).get("kept", 0))
    work = data_dir / WORK_DIR
    progress = _PhaseProgress(on_progress, 2 * len(inputs) + config.partitions + 1)
    t0 = time.monotonic()

    run_stage(
        "dedup-signatures", work / "signatures", config.signature_config(),
        [ShardTask(n, (str(p),)) for n, p in zip(names, inputs)],
        signature_shard, workers=phase_workers("signatures", workers, len(inputs), n_docs),
        force=force, upstream=upstream, on_progress=progress.phase(), executor=executor,
    )
    signature_files = tuple(str(work / "signatures" / f"{n}.parquet") for n in names)
    t1 = time.monotonic()

    m2 = run_stage(
        "dedup-partitions", work / "partitions", config.partition_config(),
        [ShardTask(partition_name(i), signature_files) for i in range(config.partitions)],
        partition_shard, workers=phase_workers("partitions", workers, config.partitions, n_docs, config.partitions),
        force=force, on_progress=progress.phase(), executor=executor,
    )
    edge_files = tuple(str(work / "partitions" / p) for p in manifest_outputs(m2, ""))
    t2 = time.monotonic()

    m3 = run_stage(
        "dedup-clusters", work / "clusters", ClusterConfig(len(edge_files), len(signature_files)),
        [ShardTask("clusters", edge_files + signature_files)],
        cluster_shard, workers=1, force=force, on_progress=progress.phase(), executor=executor,
    )
    clusters = m3["shards"][0]["extra"]
    t3 = time.monotonic()

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        expected = upstream_manifest.get("totals", {}).get("kept")
        if expected is not None and manifest["totals"]["docs_in"] != expected:
            raise AccountingError(
                f"dedup read {manifest['totals']['docs_in']} documents but {upstream_dir} lists {expected} "
                "kept; the filter stage's outputs changed during the run. Rerun `make dedup`."
            )
        manifest["dedup"] = {
            "clusters": clusters["clusters"],
            "docs_in_clusters": clusters["docs_in_clusters"],
            "exact_duplicate": clusters["exact_duplicate"],
            "near_duplicate": clusters["near_duplicate"],
            "cluster_size_histogram": clusters["cluster_size_histogram"],
            "largest_clusters": clusters["largest_clusters"],
            "pairs": {k: v for k, v in m2["totals"]["extra"].items() if k != "docs_scanned"},
            "scurve": config.scurve(),
            "phase_elapsed_s": {
                "signatures": round(t1 - t0, 3),
                "partitions": round(t2 - t1, 3),
                "clusters": round(t3 - t2, 3),
                "apply": manifest["elapsed_s"],
            },
        }
        manifest["elapsed_s"] = round(time.monotonic() - t0, 3)  # the whole stage, all four phases
        return manifest

    manifest = run_stage(
        STAGE, data_dir / OUTPUT_DIR, config,
        [ShardTask(n, (str(p), str(work / "clusters" / f"{n}.parquet"))) for n, p in zip(names, inputs)],
        apply_shard, workers=phase_workers("apply", workers, len(inputs), n_docs),
        force=force, upstream=upstream, on_progress=progress.phase(), finalize=finalize,
        executor=executor,
    )
    log.info(
        "dedup: %d documents in, %d kept, %d exact and %d near duplicates removed in %.1fs",
        manifest["totals"]["docs_in"], manifest["totals"]["kept"],
        clusters["exact_duplicate"], clusters["near_duplicate"], manifest["elapsed_s"],
    )
    return manifest

