"""Documents and document shards.

A document keeps the stable `id` it was given when it was read (WARC record id, or file + line) for its
whole life: no stage relies on position or order. Document shards are Parquet files (zstd-compressed)
with the columns `id`, `text`, `url`, `source` and `meta` (a JSON object as a string, so stages can add
annotations such as `lang` or `lang_score` without a schema change). Rejected-document shards add
`reason` and `score` columns.

This module is the one place that reads document shards: `iter_document_batches` (Arrow batches of
chosen columns, for stages that work column-wise: dedup, the tokenizer, the shards stage),
`read_documents` (`Document` objects), `read_document_rows` (chosen documents by id), `count_documents` and `text_bytes` (from the footer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from formats.manifest import atomic_path

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("url", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),
    ]
)
REJECTED_SCHEMA = DOC_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("score", pa.float64()))

#: Rows per Parquet row group: small enough to stream, large enough to compress well.
ROW_GROUP_SIZE = 2048


@dataclass
class Document:
    """One document. `meta` holds source metadata and annotations added by stages."""

    id: str
    text: str
    url: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)


class DocumentWriter:
    """Streams documents into a Parquet shard, written under a temporary name and renamed on close.

    Use as a context manager: if the block raises, the partial file is removed and nothing appears
    at `path`, so a killed stage never leaves a half-written shard that looks finished.
    """

    def __init__(self, path: str | Path, rejected: bool = False):
        self.path = Path(path)
        self.schema = REJECTED_SCHEMA if rejected else DOC_SCHEMA
        self.rows = 0
        self._buffer: dict[str, list] = {name: [] for name in self.schema.names}
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")

    def write(self, doc: Document, reason: str | None = None, score: float | None = None) -> None:
        buf = self._buffer
        buf["id"].append(doc.id)
        buf["text"].append(doc.text)
        buf["url"].append(doc.url)
        buf["source"].append(doc.source)
        buf["meta"].append(json.dumps(doc.meta, ensure_ascii=False, sort_keys=True))
        if "reason" in buf:
            buf["reason"].append(reason)
            buf["score"].append(score)
        self.rows += 1
        if len(buf["id"]) >= ROW_GROUP_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self._buffer["id"]:
            self._writer.write_table(pa.table(self._buffer, schema=self.schema))
            self._buffer = {name: [] for name in self.schema.names}

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._atomic.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        self._writer.close()
        self._atomic.__exit__(type(exc), exc, None)

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def write_documents(path: str | Path, docs: Iterable[Document]) -> int:
    """Write `docs` to a Parquet shard at `path` atomically; return the number written."""
    with DocumentWriter(path) as writer:
        for doc in docs:
            writer.write(doc)
    return writer.rows


def iter_document_batches(
    path: str | Path, columns: list[str] | None = None, batch_rows: int = ROW_GROUP_SIZE
) -> Iterator[pa.RecordBatch]:
    """Stream a document shard as Arrow record batches of `columns` (all if None), `batch_rows` at a time.

    A file that is not a readable Parquet shard is an InputError naming the file, not an Arrow traceback.
    """
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: not a readable document shard ({exc}); rerun the stage that wrote it") from exc
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def read_document_rows(path: str | Path, ids: list[str], columns: list[str]) -> list[dict]:
    """The rows (as dicts of `columns`) of the documents with these `ids` in a shard (Parquet's
    predicate push-down skips row groups that hold none of them)."""
    try:
        return pq.read_table(path, columns=columns, filters=[("id", "in", ids)]).to_pylist()
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: not a readable document shard ({exc}); rerun the stage that wrote it") from exc


def read_documents(path: str | Path, columns: list[str] | None = None) -> Iterator[Document]:
    """Stream the documents of a Parquet shard, one row group at a time (flat memory)."""
    for batch in iter_document_batches(path, columns):
        cols = batch.to_pydict()
        n = batch.num_rows
        for i in range(n):
            yield Document(
                id=cols["id"][i],
                text=cols["text"][i] if "text" in cols else "",
                url=cols.get("url", [""] * n)[i] or "",
                source=cols.get("source", [""] * n)[i] or "",
                meta=json.loads(cols["meta"][i]) if "meta" in cols and cols["meta"][i] else {},
            )


def count_documents(path: str | Path) -> int:
    """Number of rows in a Parquet shard, read from its footer (no data read)."""
    return pq.ParquetFile(path).metadata.num_rows


def text_bytes(paths: Iterable[str | Path], column: str = "text") -> int:
    """Uncompressed size of the text column of document shards, from their footers (no data read)."""
    total = 0
    for p in paths:
        md = pq.ParquetFile(p).metadata
        col = md.schema.names.index(column)
        total += sum(md.row_group(i).column(col).total_uncompressed_size for i in range(md.num_row_groups))
    return total
