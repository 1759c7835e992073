"""Read raw input files into `Document`s: Common Crawl WET/WARC, JSONL, Parquet and plain text.

This is the hot path of the filter stage, so WARC files are parsed with FastWARC (resiliparse's native
WARC parser): our whole reader, checks included, reads WET about 1.8x faster than bare warcio
(bench/bench_readers.py; figures in docs/download.md).

`read_file` never raises for bad content inside a file. A web crawl always holds some damage (a
download cut short, a record of binary junk, a line of invalid JSON), and one bad record must cost
neither the run nor the documents around it. Bad content is yielded as an `Unreadable(location,
reason)` so the stage can count it by reason code; reading then resumes at the next good record. Only
problems that make the whole input unusable (a path that does not exist, a file type we cannot read,
a Parquet file without the text column) raise `InputError` and end the run at once.

What counts as a document, and what is skipped silently because it is not one:
- WET (`conversion` records): one document per record; `warcinfo` records are skipped.
- WARC (`response` and `resource` records): one document per HTML or plain-text payload, HTML turned
  into main-content text by resiliparse; `warcinfo`, `request`, `metadata` and `revisit` records are
  skipped. Responses that are not text (images, PDFs) or not HTTP 2xx are counted as unreadable.
- WAT: metadata only, no text. Each JSON `metadata` record is counted as unreadable (`wat_metadata`)
  so a WAT file given by mistake shows up in the stage summary instead of silently yielding nothing.
- JSONL (plain, .gz, .zst): one document per non-blank line; the text field is configurable.
- Parquet: one document per row; the text column is configurable.
- Plain text (.txt): one document per file (a paragraph is too small to judge quality or language).

One module per format (`warc`, `jsonl`, `parquet`, `text`); `common` holds what they share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.errors import InputError
from pipeline.readers.common import REASONS, SUPPORTED_SUFFIXES, Item, ReaderConfig, Unreadable
from pipeline.readers.jsonl import read_jsonl
from pipeline.readers.parquet import read_parquet
from pipeline.readers.text import read_text
from pipeline.readers.warc import read_warc
from pipeline.readers.warc_bounds import gzip_problem

__all__ = [
    "REASONS", "SUPPORTED_SUFFIXES", "Item", "ReaderConfig", "Unreadable",
    "file_kind", "gzip_problem", "is_wat", "read_file",
]


def file_kind(path: str | Path) -> str | None:
    """The reader for `path` by its name ("warc", "jsonl", "parquet", "text"), or None if unsupported."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            if suffix.startswith(".warc"):
                return "warc"
            if suffix.startswith(".jsonl"):
                return "jsonl"
            return "parquet" if suffix == ".parquet" else "text"
    return None


def is_wat(path: str | Path) -> bool:
    """WAT files (`.warc.wat[.gz]`) hold page metadata only: no text to read."""
    return ".warc.wat" in Path(path).name.lower()


def read_file(path: str | Path, config: ReaderConfig = ReaderConfig(), name: str | None = None) -> Iterator[Item]:
    """Yield the documents of one file, and an `Unreadable` for each bad region or record.

    `name` is how the file is called in document ids, sources and locations (default: its file name);
    the filter stage passes a longer one for files that share a name, so their ids stay apart.

    Raises `InputError` (before yielding anything) when the path does not exist or the file type is not
    supported; never raises for damaged content.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"input file {path} {what}; check the download stage's manifest or SOURCE")
    kind = file_kind(path)
    if kind is None:
        raise InputError(
            f"cannot read {path}: unsupported file type; supported suffixes: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    name = name or path.name
    if path.stat().st_size == 0:
        return iter([Unreadable(name, "empty_file")])
    reader = {"warc": read_warc, "jsonl": read_jsonl, "parquet": read_parquet, "text": read_text}[kind]
    return reader(path, config, name)
