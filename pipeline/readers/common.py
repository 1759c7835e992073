"""What every reader shares: its config, the `Unreadable` item and its reason codes, the file suffixes
we read, and how a JSONL line's or Parquet row's fields become a `Document`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from pipeline.documents import Document

#: File name endings we can read, longest first (so `.warc.wet.gz` wins over `.gz`-style matches).
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".warc.wet.gz",
    ".warc.wat.gz",
    ".warc.wet",
    ".warc.wat",
    ".warc.gz",
    ".warc",
    ".jsonl.gz",
    ".jsonl.zst",
    ".jsonl",
    ".parquet",
    ".txt",
)

#: Every reason code an `Unreadable` can carry, with what it means.
REASONS: dict[str, str] = {
    "truncated_gzip": "the gzip stream ends before its last member is complete (a download cut short)",
    "truncated_zstd": "the zstd stream ends before its last frame is complete",
    "truncated_record": "an uncompressed WARC file ends inside a record",
    "corrupt_gzip": "bytes that do not decompress (damaged or foreign data between gzip members)",
    "not_warc": "bytes that are not a WARC record where one was expected",
    "bad_content_length": "a WARC record whose Content-Length is larger than its body (it would swallow the "
                          "records after it); reading resumes at the next record",
    "invalid_utf8": "the text is not valid UTF-8",
    "nul_bytes": "the text contains NUL bytes (binary data, not text)",
    "empty_record": "the record holds no text (only whitespace, or HTML without text)",
    "too_large": "the record is larger than ReaderConfig.max_record_bytes",
    "bad_json": "a JSONL line that is not a JSON object",
    "missing_text": "a JSON line or Parquet row without a string in the text field",
    "empty_file": "the file holds no bytes (after decompression)",
    "bad_parquet": "a Parquet file that cannot be opened or read (damaged footer or pages)",
    "not_html": "a WARC response or resource whose payload is not HTML or plain text",
    "http_status": "a WARC response whose HTTP status is not 2xx (redirects, errors)",
    "bad_content_encoding": "a gzip/deflate Content-Encoding that does not decode",
    "wat_metadata": "a WAT metadata record (JSON about a page, no text)",
}

UTF8_BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ReaderConfig:
    """How raw files become documents."""

    text_field: str = "text"
    """JSONL key / Parquet column holding the document text."""
    id_field: str = "id"
    """JSONL key / Parquet column holding a document id; `<file name>:<line or row>` when absent."""
    url_field: str = "url"
    """JSONL key / Parquet column holding the document URL, if any."""
    max_record_bytes: int = 10_000_000
    """Records larger than this are skipped as `too_large`: they are almost never useful text (dumps,
    binary, generated tables) and a single one can stall a worker or exhaust its memory."""
    main_content: bool = True
    """WARC HTML: keep only the main content (drop navigation, headers, footers) when extracting text."""


@dataclass(frozen=True)
class Unreadable:
    """Input that could not be read as a document: where it is and why (a code from `REASONS`)."""

    location: str
    reason: str
    detail: str = ""


Item = Union[Document, Unreadable]


def make_document(text: str, fields: dict, name: str, default_id: str, where: str, config: ReaderConfig) -> Item:
    """A JSONL line's or Parquet row's fields as a Document; leftover fields go to `meta`."""
    if "\x00" in text:
        return Unreadable(where, "nul_bytes")
    if len(text) > config.max_record_bytes or (
        len(text) * 4 > config.max_record_bytes and len(text.encode("utf-8")) > config.max_record_bytes
    ):
        return Unreadable(where, "too_large", f"text longer than {config.max_record_bytes} bytes")
    if not text.strip():
        return Unreadable(where, "empty_record")
    doc_id = fields.pop(config.id_field, None)
    url = fields.pop(config.url_field, None)
    return Document(
        id=str(doc_id) if doc_id is not None and doc_id != "" else default_id,
        text=text,
        url=str(url) if url else "",
        source=name,
        meta=fields,
    )

