"""Phase 4: write the deduplicated corpus, one output shard per input shard.

Every document of the input shard goes either to corpus/<shard>.parquet (kept: it has no duplicate, or it
is its cluster's representative) or to corpus/rejected/<shard>.parquet with reason `exact_duplicate` or
`near_duplicate`, score = the estimated Jaccard similarity with its representative, and in `meta`:
`dedup_cluster`, `dedup_cluster_size`, `dedup_representative`. A kept representative gets
`dedup_cluster` and `dedup_cluster_size` in its meta, so any cluster can be found from either side.

Kept rows are copied batch by batch with Arrow (only the representatives' meta is rewritten), so this
phase costs little more than reading and writing the text once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.documents import DOC_SCHEMA, Document, DocumentWriter, iter_document_batches
from pipeline.errors import AccountingError
from formats.manifest import atomic_path, output_record
from pipeline.stage import ShardStats, ShardTask, report_progress

from .clusters import REPRESENTATIVE

REJECTED_DIR = "rejected"
_META = DOC_SCHEMA.get_field_index("meta")


def apply_shard(task: ShardTask, stage_dir: Path, config) -> ShardStats:
    """Stage function: (input shard, its assignment file) -> kept shard + rejected shard."""
    source, assignment_path = task.inputs
    assignment = pq.read_table(assignment_path)
    members = {row["id"]: row for row in assignment.to_pylist()}
    member_ids = pa.array(list(members), pa.string())
    kept_path = stage_dir / f"{task.name}.parquet"
    rejected_path = stage_dir / REJECTED_DIR / f"{task.name}.parquet"
    stats = ShardStats()
    found = 0
    with atomic_path(kept_path) as tmp, pq.ParquetWriter(tmp, DOC_SCHEMA, compression="zstd") as kept_writer:
        with DocumentWriter(rejected_path, rejected=True) as rejected_writer:
            for batch in iter_document_batches(source, DOC_SCHEMA.names):
                table = pa.Table.from_batches([batch]).cast(DOC_SCHEMA)
                stats.docs_in += table.num_rows
                report_progress(table.num_rows)
                in_cluster = pc.is_in(table["id"], value_set=member_ids).to_numpy(zero_copy_only=False)
                if not in_cluster.any():
                    kept_writer.write_table(table)
                    stats.kept += table.num_rows
                    continue
                rows = np.flatnonzero(in_cluster)
                found += rows.size
                ids = table["id"].take(rows).to_pylist()
                drop = np.zeros(table.num_rows, bool)
                meta = table["meta"].to_pylist()
                for row, doc_id in zip(rows.tolist(), ids):
                    m = members[doc_id]
                    annotated = json.loads(meta[row]) if meta[row] else {}
                    annotated["dedup_cluster"] = m["cluster"]
                    annotated["dedup_cluster_size"] = m["cluster_size"]
                    if m["reason"] == REPRESENTATIVE:
                        meta[row] = json.dumps(annotated, ensure_ascii=False, sort_keys=True)
                        continue
                    annotated["dedup_representative"] = m["representative"]
                    drop[row] = True
                    text, url, source_name = (table[c][row].as_py() for c in ("text", "url", "source"))
                    doc = Document(doc_id, text or "", url or "", source_name or "", annotated)
                    rejected_writer.write(doc, reason=m["reason"], score=float(m["jaccard"]))
                    stats.dropped[m["reason"]] += 1
                table = table.set_column(_META, "meta", pa.array(meta, pa.string()))
                kept = table.filter(pa.array(~drop))
                kept_writer.write_table(kept)
                stats.kept += kept.num_rows
    if found != len(members):
        raise AccountingError(
            f"dedup apply {task.name}: {len(members)} documents of this shard are in clusters but only "
            f"{found} were found in {source}; the input changed after the signatures were computed. "
            "Rerun `crawlgpt dedup` (it redoes the stale phases)."
        )
    stats.outputs = [
        output_record(kept_path, stats.kept, stage_dir),
        output_record(rejected_path, sum(stats.dropped.values()), stage_dir),
    ]
    stats.extra = {"clusters_represented": sum(1 for m in members.values() if m["reason"] == REPRESENTATIVE)}
    return stats

