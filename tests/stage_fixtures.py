"""The toy stage the stage-runner tests run (importable by name from subprocesses and Ray workers)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


from pipeline.documents import Document, DocumentWriter, read_documents, write_documents
from formats.manifest import output_record, sha256_file
from pipeline.stage import ShardStats, ShardTask


@dataclass(frozen=True)
class KeepLongConfig:
    min_chars: int = 5
    sleep_s: float = 0.0


def keep_long(task: ShardTask, stage_dir: Path, config: KeepLongConfig) -> ShardStats:
    """A toy stage: keep documents with at least `min_chars` characters."""
    stats = ShardStats()
    kept_path = stage_dir / f"{task.name}.parquet"
    rej_path = stage_dir / "rejected" / f"{task.name}.parquet"
    with DocumentWriter(kept_path) as kept, DocumentWriter(rej_path, rejected=True) as rejected:
        for doc in read_documents(task.inputs[0]):
            time.sleep(config.sleep_s)
            stats.docs_in += 1
            if len(doc.text) >= config.min_chars:
                kept.write(doc)
                stats.kept += 1
            else:
                rejected.write(doc, reason="too_short", score=len(doc.text))
                stats.dropped["too_short"] += 1
    stats.outputs = [
        output_record(kept_path, kept.rows, stage_dir),
        output_record(rej_path, rejected.rows, stage_dir),
    ]
    return stats


def lose_one(task: ShardTask, stage_dir: Path, config: KeepLongConfig) -> ShardStats:
    stats = keep_long(task, stage_dir, config)
    stats.kept -= 1  # a buggy stage that forgets a document
    return stats


def make_inputs(tmp_path: Path, n_shards: int = 3, docs_per_shard: int = 10) -> list[ShardTask]:
    tasks = []
    for s in range(n_shards):
        path = tmp_path / "in" / f"s{s}.parquet"
        if path.exists():  # reuse: rewriting would change the inputs' fingerprints
            tasks.append(ShardTask(name=f"s{s}", inputs=(str(path),)))
            continue
        write_documents(path, (Document(id=f"{s}-{i}", text="x" * i, url=f"http://e/{s}/{i}") for i in range(docs_per_shard)))
        tasks.append(ShardTask(name=f"s{s}", inputs=(str(path),)))
    return tasks


def output_hashes(stage_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(stage_dir)): sha256_file(p) for p in sorted(stage_dir.rglob("*.parquet"))}
