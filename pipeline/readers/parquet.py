"""Parquet: one document per row; the text column is configurable."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.readers.common import Item, ReaderConfig, Unreadable, make_document

#: Parquet rows decoded at a time: small, so a damaged page costs few rows before it is noticed.
_PARQUET_BATCH_ROWS = 128


def read_parquet(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - arrow raises several types for a damaged file
        yield Unreadable(name, "bad_parquet", str(exc))
        return
    columns = pf.schema_arrow.names
    if config.text_field not in columns:
        raise InputError(
            f"{path}: no column {config.text_field!r} (columns: {', '.join(columns)}); "
            "set the text field option to the column holding the document text"
        )
    if pf.metadata.num_rows == 0:
        yield Unreadable(name, "empty_file", "no rows")
        return
    # Row group by row group, in small batches: pyarrow decodes pages as a batch needs them, so a
    # damaged page costs the rows from its batch to the end of its row group, never the whole file.
    # The footer gives every group's row count, so each lost row is counted, with its location.
    row = 0  # first row of the current group
    for group in range(pf.num_row_groups):
        group_rows = pf.metadata.row_group(group).num_rows
        done = 0  # rows of this group already yielded
        try:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[group]):
                items = list(_parquet_batch(batch, name, row + done, config))
                done += len(items)
                yield from items
        except Exception as exc:  # noqa: BLE001 - arrow raises several types for a damaged page
            first, last = row + done, row + group_rows - 1
            detail = f"row group {group}, rows {first}-{last} cannot be decoded: {exc}"
            for r in range(first, last + 1):
                yield Unreadable(f"{name}@row {r}", "bad_parquet", detail)
        row += group_rows


def _parquet_batch(batch, name: str, first_row: int, config: ReaderConfig) -> Iterator[Item]:
    cols = batch.to_pydict()
    texts = cols.pop(config.text_field)
    for i, text in enumerate(texts):
        row = first_row + i
        where = f"{name}@row {row}"
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Unreadable(where, "invalid_utf8", str(exc))
                continue
        if not isinstance(text, str):
            yield Unreadable(where, "missing_text", f"null {config.text_field!r}")
        else:
            fields = {k: v[i] for k, v in cols.items()}
            yield make_document(text, fields, name, f"{name}:{row}", where, config)

