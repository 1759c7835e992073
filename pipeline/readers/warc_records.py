"""One WARC record as a document: WET text, WARC HTML turned into main-content text, WAT metadata
counted as unreadable, and the reasons a record is not a document."""

from __future__ import annotations

import zlib

from fastwarc import WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5

from pipeline.documents import Document
from pipeline.readers.common import Item, ReaderConfig, Unreadable

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/xml", "text/xml"})
_TEXT_TYPES = frozenset({"text/plain"})


def warc_too_large(rec, name: str, offset: int, length: int, config: ReaderConfig) -> Item | None:
    if rec.record_type == WarcRecordType.metadata and not _is_wat_record(rec):
        return None
    return Unreadable(f"{name}@offset {offset}", "too_large", f"{length} bytes > {config.max_record_bytes}")


def _is_wat_record(rec) -> bool:
    return (rec.headers.get("Content-Type") or "").startswith("application/json")


def warc_item(rec, payload: bytes, name: str, offset: int, config: ReaderConfig) -> Item | None:
    """One WARC record's payload as a Document, an Unreadable, or None for non-document records."""
    rtype = rec.record_type
    where = f"{name}@offset {offset}"
    if rtype == WarcRecordType.conversion:
        text = _conversion_text(payload, where)
    elif rtype == WarcRecordType.metadata:
        return Unreadable(where, "wat_metadata") if _is_wat_record(rec) else None
    else:  # response or resource
        text = _response_text(rec, payload, where, config)
    if isinstance(text, Unreadable):
        return text
    if not text.strip():
        return Unreadable(where, "empty_record")
    return _record_document(rec, text, name, offset)


def _conversion_text(payload: bytes, where: str) -> str | Unreadable:
    """A WET `conversion` record's text, which must be UTF-8 without NUL bytes."""
    if b"\x00" in payload:
        return Unreadable(where, "nul_bytes")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unreadable(where, "invalid_utf8", str(exc))


def _response_text(rec, payload: bytes, where: str, config: ReaderConfig) -> str | Unreadable:
    """A WARC `response` or `resource` record's text: HTML as main-content text, plain text as is."""
    headers = rec.headers
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
    return text


def _record_document(rec, text: str, name: str, offset: int) -> Document:
    headers = rec.headers
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
