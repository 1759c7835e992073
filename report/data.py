"""What the report reads: the stage manifests of a DATA folder, and small samples of document shards.

Samples are read batch by batch and stop early, so the report costs the same on 6 WET files and on 600:
it never reads the corpus through.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from formats.manifest import load_manifest
from pipeline.stage import manifest_outputs

log = logging.getLogger(__name__)

#: Document stages in pipeline order: (folder under DATA, label in the page).
DOCUMENT_STAGES = (("filtered", "filter"), ("corpus", "dedup"), ("decontaminated", "decontaminate"),
                   ("redacted", "pii"))


def manifest(data_dir: Path, folder: str) -> dict | None:
    m = load_manifest(data_dir / folder)
    return m if isinstance(m, dict) else None


def document_stages(data_dir: Path) -> list[tuple[str, str, dict]]:
    """(folder, label, manifest) of every document stage that finished, in pipeline order."""
    out = []
    for folder, label in DOCUMENT_STAGES:
        m = manifest(data_dir, folder)
        if m is not None and "totals" in m:
            out.append((folder, label, m))
    return out


def outputs(data_dir: Path, folder: str, m: dict, rejected: bool) -> list[Path]:
    """The kept (or rejected) document files a stage manifest lists."""
    paths = manifest_outputs(m, "rejected/" if rejected else "")
    if not rejected:
        paths = [p for p in paths if not p.startswith("rejected/")]
    return [data_dir / folder / p for p in paths if (data_dir / folder / p).is_file()]


def sample_rows(paths: list[Path], columns: list[str], max_rows: int) -> Iterator[dict]:
    """Rows of `columns` from the first batches of each file in turn, at most `max_rows` in all, spread
    over the files (an equal share each) so that one shard does not stand for the whole crawl."""
    if not paths or max_rows <= 0:
        return
    share = max(1, max_rows // len(paths))
    given = 0
    for path in paths:
        try:
            pf = pq.ParquetFile(path)
        except OSError as exc:
            log.warning("report: skipping %s (%s)", path, exc)
            continue
        names = [c for c in columns if c in pf.schema_arrow.names]
        taken = 0
        for batch in pf.iter_batches(batch_size=min(share, 2048), columns=names):
            for row in batch.to_pylist():
                yield row
                taken += 1
                given += 1
                if taken >= share or given >= max_rows:
                    break
            if taken >= share or given >= max_rows:
                break
        if given >= max_rows:
            return


def meta(row: dict) -> dict:
    try:
        value = json.loads(row.get("meta") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
