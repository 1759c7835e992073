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
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import pyarrow.parquet as pq
import zstandard
from fastwarc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5

from pipeline.documents import Document
from pipeline.errors import InputError

log = logging.getLogger(__name__)

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

GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_GZIP_MEMBER_MAGIC = b"\x1f\x8b\x08"  # magic + deflate method: where a gzip member can start
_WARC_MAGIC = b"WARC/1."
_WARC_BOUNDARY = b"\r\n\r\nWARC/1."  # the end of one record and the start of the next
_CHUNK_BYTES = 1 << 20
#: Parquet rows decoded at a time: small, so a damaged page costs few rows before it is noticed.
_PARQUET_BATCH_ROWS = 128

# metadata is kept only to recognise WAT records; warcinfo/request/revisit are filtered out in C.
_RECORD_TYPES = (
    WarcRecordType.conversion | WarcRecordType.response | WarcRecordType.resource | WarcRecordType.metadata
)
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/xml", "text/xml"})
_TEXT_TYPES = frozenset({"text/plain"})


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
    reader = {"warc": _read_warc, "jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text}[kind]
    return reader(path, config, name)


# --- WARC / WET / WAT ------------------------------------------------------------------------------


def _read_warc(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
    """Iterate WARC records with FastWARC, resynchronising after damage.

    FastWARC stops at the first error, so after one we find the next place a record can start (a gzip
    member header, or `WARC/1.` in an uncompressed file) and start a new iterator there. Consecutive
    failures without a good record in between are one bad region and yield one `Unreadable`. A file cut
    short is caught twice over: a record whose payload is shorter than its Content-Length, and, after a
    clean end, a check that the last gzip members decompress to their end (FastWARC ends silently when
    a member's end is missing). The last item is held back until that check has run, so a record from
    a cut member is reported as `truncated_gzip`, not yielded as a short document.

    A record whose Content-Length overstates its body (in an intact file) would swallow the records
    after it: FastWARC reads on into them. It shows as a payload holding the next record's header, a
    payload shorter than announced, or an error right after the record; each time `_overstated_length`
    checks the record against its gzip member (or, uncompressed, its closing CRLFCRLF), and a record
    that does not fit is `bad_content_length` and reading resumes at the record after it.
    """
    check_limit = config.max_record_bytes + (1 << 20)  # a record's payload plus room for its headers
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
        start = 0  # where the current FastWARC iterator started
        pending: Unreadable | None = None  # bad region not yet reported (merged until a good record)
        held: tuple[int, Item] | None = None  # the last record's (offset, item), not yet yielded
        last_start: int | None = None  # offset of the last record read completely, in this pass
        while True:
            f.seek(start)
            last_start = None
            resume_at: int | None = -1  # >= 0 (or None: nothing after) when a record had a bad length
            bad_length: Unreadable | None = None
            try:
                for rec in ArchiveIterator(f, record_types=_RECORD_TYPES, parse_http=True):
                    offset = rec.stream_pos
                    length = rec.content_length
                    if length > config.max_record_bytes:
                        item = _warc_too_large(rec, name, offset, length, config)
                    else:
                        payload = rec.reader.read()
                        short = len(payload) < length
                        if short or _WARC_BOUNDARY in payload or (not gz and payload.endswith((b"\r", b"\r\n"))):
                            # signs of a body that runs into the next record (or, uncompressed, into the
                            # closing CRLFCRLF: a quarter of real WET bodies end in CRLF, so for gzip,
                            # where the check decompresses the member again, a body 1-4 bytes too long
                            # is let through: it only gains trailing whitespace): check it
                            here = f.tell()
                            overstated, nxt = _overstated_length(f, offset, gz, check_limit)
                            f.seek(here)  # FastWARC reads on from where it was
                            if overstated:
                                bad_length = Unreadable(
                                    f"{name}@offset {offset}", "bad_content_length",
                                    f"Content-Length {length} runs past the end of the record",
                                )
                                resume_at = nxt
                                break
                        if short:
                            # the data ends inside this record: the file was cut short
                            item = Unreadable(
                                f"{name}@offset {offset}",
                                "truncated_gzip" if gz else "truncated_record",
                                f"payload has {len(payload)} of {length} bytes",
                            )
                            if held is not None:
                                yield held[1]
                            if pending is not None:
                                yield pending
                            yield item
                            return
                        item = _warc_item(rec, payload, name, offset, config)
                    last_start = offset
                    if item is None:
                        continue
                    if held is not None:
                        yield held[1]
                    if pending is not None:
                        yield pending
                        pending = None
                    held = (offset, item)
            except (OSError, ValueError, EOFError) as exc:
                reason = "corrupt_gzip" if "compress" in str(exc).lower() else "not_warc"
                bad_at = start
                if last_start is not None:
                    overstated, nxt = _overstated_length(f, last_start, gz, check_limit)
                    if overstated:
                        # the error is the next record read from inside this one: only this one is bad
                        if held is not None and held[0] == last_start:
                            held = None
                        bad_length = Unreadable(
                            f"{name}@offset {last_start}", "bad_content_length",
                            "Content-Length runs past the end of the record",
                        )
                        resume_at = nxt
                if bad_length is None:
                    if last_start is not None:
                        end = _record_end(f, last_start, gz)
                        if end is None:
                            # the last record's own member fails its CRC check (FastWARC notices only when
                            # it moves on): its payload cannot be trusted, so it is not yielded
                            bad_at, reason = last_start, "corrupt_gzip"
                            if held is not None and held[0] == last_start:
                                held = None
                        else:
                            bad_at = end
                    if pending is None:
                        pending = Unreadable(f"{name}@offset {bad_at}", reason, str(exc))
                    nxt = _find_next_start(f, bad_at + 1, gz)
                    if nxt is not None:
                        start = nxt
                        continue
                    # the bad region runs to the end of the file: nothing left to check
                    if held is not None:
                        yield held[1]
                    yield pending
                    return
            if bad_length is not None:
                if held is not None:
                    yield held[1]
                    held = None
                if pending is not None:
                    yield pending
                    pending = None
                yield bad_length
                if resume_at is None:
                    return
                start = resume_at
                continue
            break
        if gz:
            # FastWARC's offsets are member starts in multi-member files (Common Crawl: one member per
            # record); for a single-member file they are not, and the check decompresses from `start`.
            tail_from = last_start if last_start is not None else start
            f.seek(tail_from)
            if f.read(3) != _GZIP_MEMBER_MAGIC:
                tail_from = start
            problem = gzip_problem(f, tail_from)
            if problem is not None:
                reason, member_at = problem
                bad = Unreadable(f"{name}@offset {member_at}", reason, "the gzip stream does not decode to its end")
                if held is not None and held[0] != member_at:
                    yield held[1]
                if pending is not None:
                    yield pending
                yield bad
                return
        if held is not None:
            yield held[1]
        if pending is not None:
            yield pending


def _overstated_length(f: BinaryIO, record_start: int, gz: bool, limit: int) -> tuple[bool, int | None]:
    """Whether the record at `record_start` announces more bytes than it holds, and if so where the
    record after it really starts (None: nowhere, the file ends).

    gzip (one member per record, as Common Crawl writes): the header plus Content-Length plus the closing
    CRLFCRLF must fit in the record's own member; the next record starts at the next member. A member
    that does not decode is not judged here (that is `corrupt_gzip` or `truncated_gzip`), nor is a file
    that is one gzip member. Uncompressed: the record must end in CRLFCRLF where its Content-Length
    says; the next record is the next `WARC/1.` after the record's start. `limit`: the most bytes a
    member may decompress to (a record is at most ReaderConfig.max_record_bytes).
    """
    f.seek(record_start)
    if gz:
        if f.read(3) != _GZIP_MEMBER_MAGIC:
            return False, None
        f.seek(record_start)
        d = zlib.decompressobj(31)
        head = b""  # the first 64 KiB of the member: the record's header is in there
        size = consumed = 0
        while not d.eof:
            chunk = f.read(1 << 16)
            if not chunk:
                return False, None
            try:
                out = d.decompress(chunk)
            except zlib.error:
                return False, None
            consumed += len(chunk)
            size += len(out)
            if len(head) < 1 << 16:
                head += out[: (1 << 16) - len(head)]
            if size > limit:
                return False, None  # not one record per member (a single-member file): not judged here
        claimed = _claimed_record_bytes(head)
        if claimed is None or claimed <= size:
            return False, None
        end = record_start + consumed - len(d.unused_data)
        f.seek(end)
        return True, (end if f.read(1) else None)
    head = f.read(1 << 16)
    claimed = _claimed_record_bytes(head)
    if claimed is None:
        return False, None
    f.seek(record_start + claimed - 4)
    tail = f.read(4)
    if tail == b"\r\n\r\n":
        return False, None
    nxt = _find_next_start(f, record_start + 1, gz)
    if len(tail) < 4 and nxt is None:
        return False, None  # the file ends inside the record: cut short (`truncated_record`), not a bad length
    return True, nxt


def _claimed_record_bytes(head: bytes) -> int | None:
    """Header, block and closing CRLFCRLF of the record whose start is `head`, by its Content-Length."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None
    for line in head[:end].split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            try:
                return end + 4 + int(value.strip()) + 4
            except ValueError:
                return None
    return None


def _warc_too_large(rec, name: str, offset: int, length: int, config: ReaderConfig) -> Item | None:
    if rec.record_type == WarcRecordType.metadata and not _is_wat_record(rec):
        return None
    return Unreadable(f"{name}@offset {offset}", "too_large", f"{length} bytes > {config.max_record_bytes}")


def _is_wat_record(rec) -> bool:
    return (rec.headers.get("Content-Type") or "").startswith("application/json")


def _warc_item(rec, payload: bytes, name: str, offset: int, config: ReaderConfig) -> Item | None:
    """One WARC record's payload as a Document, an Unreadable, or None for non-document records."""
    rtype = rec.record_type
    where = f"{name}@offset {offset}"
    headers = rec.headers
    if rtype == WarcRecordType.conversion:
        if b"\x00" in payload:
            return Unreadable(where, "nul_bytes")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Unreadable(where, "invalid_utf8", str(exc))
    elif rtype == WarcRecordType.metadata:
        return Unreadable(where, "wat_metadata") if _is_wat_record(rec) else None
    else:  # response or resource
        if rec.is_http:
            status = rec.http_headers.status_code
            if status is None or not 200 <= status < 300:
                return Unreadable(where, "http_status", f"HTTP status {status}")
            mime = (rec.http_content_type or "").lower()
            payload_or_err = _decode_content_encoding(rec.http_headers.get("Content-Encoding"), payload)
            if isinstance(payload_or_err, str):
                return Unreadable(where, "bad_content_encoding", payload_or_err)
            payload = payload_or_err
            charset = rec.http_charset
        else:
            mime = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            charset = None
        identified = (headers.get("WARC-Identified-Payload-Type") or "").lower()
        if mime not in _HTML_TYPES and mime not in _TEXT_TYPES and identified not in _HTML_TYPES:
            return Unreadable(where, "not_html", f"content type {mime or identified or 'unknown'}")
        text = _html_to_text(payload, charset, config) if (mime in _HTML_TYPES or identified in _HTML_TYPES) else (
            bytes_to_str(payload, _encoding_of(payload, charset))
        )
        if "\x00" in text:
            return Unreadable(where, "nul_bytes")
    if not text.strip():
        return Unreadable(where, "empty_record")
    meta = {"offset": offset, "warc_date": headers.get("WARC-Date")}
    content_type = headers.get("WARC-Identified-Payload-Type") or headers.get("Content-Type")
    if content_type:
        meta["content_type"] = content_type
    lang = headers.get("WARC-Identified-Content-Language")
    if lang:
        meta["language"] = lang
    return Document(
        id=_record_id(rec.record_id, name, offset),
        text=text,
        url=headers.get("WARC-Target-URI") or "",
        source=name,
        meta=meta,
    )


def _record_id(raw: str | None, name: str, offset: int) -> str:
    """`<urn:uuid:X>` -> `X`: stable across runs and unique across crawls (WARC record ids are UUIDs)."""
    if not raw:
        return f"{name}@{offset}"
    rid = raw.strip()
    if rid.startswith("<") and rid.endswith(">"):
        rid = rid[1:-1]
    return rid[len("urn:uuid:"):] if rid.startswith("urn:uuid:") else rid


def _encoding_of(payload: bytes, charset: str | None) -> str:
    if charset:
        enc = map_encoding_to_html5(charset)
        if enc:
            return enc
    return detect_encoding(payload) or "utf-8"


def _html_to_text(payload: bytes, charset: str | None, config: ReaderConfig) -> str:
    html = bytes_to_str(payload, _encoding_of(payload, charset))
    return extract_plain_text(html, main_content=config.main_content)


def _decode_content_encoding(encoding: str | None, payload: bytes) -> bytes | str:
    """Undo gzip/deflate Content-Encoding (Common Crawl stores payloads decoded; other crawlers may not).

    Returns the decoded bytes, or an error message string.
    """
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return payload
    if enc in ("gzip", "x-gzip", "deflate"):
        try:
            return zlib.decompress(payload, 47 if enc != "deflate" else zlib.MAX_WBITS)
        except zlib.error:
            try:
                return zlib.decompress(payload, -zlib.MAX_WBITS)  # raw deflate, as some servers send
            except zlib.error as exc:
                return f"Content-Encoding {enc}: {exc}"
    return payload  # unknown encodings (br, zstd): Common Crawl already decoded them; try as is


def _record_end(f: BinaryIO, record_start: int, gz: bool) -> int | None:
    """Offset just past the record (gzip member, or raw WARC record) that starts at `record_start`.

    For gzip, None if that member does not decompress cleanly to its end (CRC included).
    """
    f.seek(record_start)
    if gz:
        d = zlib.decompressobj(31)
        consumed = 0
        while not d.eof:
            chunk = f.read(1 << 16)
            if not chunk:
                return None
            try:
                d.decompress(chunk, 0)
            except zlib.error:
                return None
            consumed += len(chunk)
        return record_start + consumed - len(d.unused_data)
    head = f.read(1 << 16)
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return record_start + 1
    for line in head[:end].split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            try:
                return record_start + end + 4 + int(value.strip()) + 4
            except ValueError:
                break
    return record_start + 1


def _find_next_start(f: BinaryIO, pos: int, gz: bool) -> int | None:
    """The first offset >= pos where a record can start (a gzip member header, or `WARC/1.`)."""
    magic = _GZIP_MEMBER_MAGIC if gz else _WARC_MAGIC
    f.seek(pos)
    carry = b""
    base = pos
    while True:
        chunk = f.read(_CHUNK_BYTES)
        if not chunk:
            return None
        buf = carry + chunk
        i = buf.find(magic)
        if i >= 0:
            return base + i
        carry = buf[-(len(magic) - 1):]
        base += len(buf) - len(carry)


def gzip_problem(f: BinaryIO, start: int = 0) -> tuple[str, int] | None:
    """Decompress every gzip member from `start` to the end of the file, discarding the output.

    Returns None when the stream decodes to its very end, else (reason, offset of the bad member):
    "truncated_gzip" when the data ends inside a member, "corrupt_gzip" when bytes do not decompress.
    Used after reading a WARC file and by the download stage's integrity check.
    """
    f.seek(start)
    d = zlib.decompressobj(31)
    member_at = start  # offset of the member being decompressed
    pos = start  # offset of the first byte of `data` below
    started = False
    while True:
        chunk = f.read(_CHUNK_BYTES)
        if not chunk:
            return None if (d.eof or not started) else ("truncated_gzip", member_at)
        data = chunk
        while data:
            started = True
            try:
                d.decompress(data, 0)
            except zlib.error:
                return "corrupt_gzip", member_at
            if d.eof:
                rest = d.unused_data
                pos += len(data) - len(rest)
                member_at = pos
                data = rest
                d = zlib.decompressobj(31)
                started = False
            else:
                pos += len(data)
                data = b""


# --- JSONL -----------------------------------------------------------------------------------------


class _ZstdRaw(io.RawIOBase):
    """A raw stream over a (multi-frame) zstd file that raises EOFError if the last frame is cut short.

    zstandard's own stream_reader ends silently on a truncated frame; we must not mistake half a file
    for a whole one.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self._dctx = zstandard.ZstdDecompressor()
        self._d = self._dctx.decompressobj()
        self._started = False
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            chunk = self._f.read(1 << 16)
            if not chunk:
                if self._started and not self._d.eof:
                    raise EOFError("zstd stream ends inside a frame")
                return 0
            while chunk:
                self._started = True
                self._buf += self._d.decompress(chunk)
                if self._d.eof:
                    chunk = self._d.unused_data
                    self._d = self._dctx.decompressobj()
                    self._started = False
                else:
                    chunk = b""
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _open_text_stream(path: Path, raw: BinaryIO) -> BinaryIO:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdRaw(raw), buffer_size=1 << 16)  # type: ignore[return-value]
    return raw


def _read_jsonl(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
    limit = config.max_record_bytes
    compression = "truncated_zstd" if path.name.lower().endswith(".zst") else "truncated_gzip"
    line_no = 0
    seen_content = False
    with open(path, "rb") as raw:
        stream = _open_text_stream(path, raw)
        try:
            while True:
                line = stream.readline(limit + 1)
                if not line:
                    break
                line_no += 1
                if line_no == 1 and line.startswith(_UTF8_BOM):
                    line = line[len(_UTF8_BOM):]  # a byte-order mark some editors write: not content
                where = f"{name}@line {line_no}"
                if len(line) > limit and not line.endswith(b"\n"):
                    while line and not line.endswith(b"\n"):  # skip the rest of the oversized line
                        line = stream.readline(_CHUNK_BYTES)
                    seen_content = True
                    yield Unreadable(where, "too_large", f"line longer than {limit} bytes")
                    continue
                if not line.strip():
                    continue
                seen_content = True
                yield _jsonl_item(line, name, line_no, where, config)
        except EOFError as exc:
            yield Unreadable(f"{name}@line {line_no + 1}", compression, str(exc))
            return
        except (OSError, zlib.error, zstandard.ZstdError) as exc:
            code = "corrupt_gzip" if compression == "truncated_gzip" else "truncated_zstd"
            yield Unreadable(f"{name}@line {line_no + 1}", code, str(exc))
            return
    if not seen_content:
        yield Unreadable(name, "empty_file", "no non-blank lines")


def _jsonl_item(line: bytes, name: str, line_no: int, where: str, config: ReaderConfig) -> Item:
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unreadable(where, "invalid_utf8", str(exc))
    try:
        obj = json.loads(s)
    except ValueError as exc:
        return Unreadable(where, "bad_json", str(exc))
    except RecursionError:  # e.g. 200,000 nested arrays: deeper than the parser's stack allows
        return Unreadable(where, "bad_json", "nested too deeply to parse")
    if not isinstance(obj, dict):
        return Unreadable(where, "bad_json", f"a JSON {type(obj).__name__}, not an object")
    text = obj.pop(config.text_field, None)
    if not isinstance(text, str):
        return Unreadable(where, "missing_text", f"no string field {config.text_field!r}")
    return _make_document(text, obj, name, f"{name}:{line_no}", where, config)


def _make_document(text: str, fields: dict, name: str, default_id: str, where: str, config: ReaderConfig) -> Item:
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


# --- Parquet ---------------------------------------------------------------------------------------


def _read_parquet(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
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
            yield _make_document(text, fields, name, f"{name}:{row}", where, config)


# --- plain text ------------------------------------------------------------------------------------


def _read_text(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
    size = path.stat().st_size
    if size > config.max_record_bytes:
        yield Unreadable(name, "too_large", f"{size} bytes > {config.max_record_bytes}")
        return
    data = path.read_bytes()
    if b"\x00" in data:
        yield Unreadable(name, "nul_bytes")
        return
    try:
        text = data.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Unreadable(name, "invalid_utf8", str(exc))
        return
    if not text.strip():
        yield Unreadable(name, "empty_record")
        return
    yield Document(id=name, text=text, url="", source=name, meta={})
