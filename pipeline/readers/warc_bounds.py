"""Where WARC records begin and end in a file, read from the bytes: the next place a record can start,
the end of a record, whether a record's Content-Length overstates its body, and whether a gzip stream
decodes to its end. The WARC reader uses them to resynchronise after damage."""

from __future__ import annotations

import zlib
from typing import BinaryIO

from pipeline.readers.common import CHUNK_BYTES

GZIP_MAGIC = b"\x1f\x8b"
GZIP_MEMBER_MAGIC = b"\x1f\x8b\x08"  # magic + deflate method: where a gzip member can start
_WARC_MAGIC = b"WARC/1."


def overstated_length(f: BinaryIO, record_start: int, gz: bool, limit: int) -> tuple[bool, int | None]:
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
        return _overstated_member(f, record_start, limit)
    head = f.read(1 << 16)
    claimed = _claimed_record_bytes(head)
    if claimed is None:
        return False, None
    f.seek(record_start + claimed - 4)
    tail = f.read(4)
    if tail == b"\r\n\r\n":
        return False, None
    nxt = find_next_start(f, record_start + 1, gz)
    if len(tail) < 4 and nxt is None:
        return False, None  # the file ends inside the record: cut short (`truncated_record`), not a bad length
    return True, nxt


def _overstated_member(f: BinaryIO, record_start: int, limit: int) -> tuple[bool, int | None]:
    """`overstated_length` for a gzip file, whose read position is at `record_start`."""
    if f.read(3) != GZIP_MEMBER_MAGIC:
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


def record_end(f: BinaryIO, record_start: int, gz: bool) -> int | None:
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


def find_next_start(f: BinaryIO, pos: int, gz: bool) -> int | None:
    """The first offset >= pos where a record can start (a gzip member header, or `WARC/1.`)."""
    magic = GZIP_MEMBER_MAGIC if gz else _WARC_MAGIC
    f.seek(pos)
    carry = b""
    base = pos
    while True:
        chunk = f.read(CHUNK_BYTES)
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
        chunk = f.read(CHUNK_BYTES)
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
