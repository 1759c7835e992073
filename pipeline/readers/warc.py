"""WARC / WET / WAT: iterate records with FastWARC, resynchronising after damage.

FastWARC stops at the first error, so after one we find the next place a record can start (a gzip
member header, or `WARC/1.` in an uncompressed file) and start a new iterator there. Consecutive
failures without a good record in between are one bad region and yield one `Unreadable`. A file cut
short is caught twice over: a record whose payload is shorter than its Content-Length, and, after a
clean end, a check that the last gzip members decompress to their end (FastWARC ends silently when
a member's end is missing). The last item is held back until that check has run, so a record from
a cut member is reported as `truncated_gzip`, not yielded as a short document.

A record whose Content-Length overstates its body (in an intact file) would swallow the records
after it: FastWARC reads on into them. It shows as a payload holding the next record's header, a
payload shorter than announced, or an error right after the record; each time `overstated_length`
checks the record against its gzip member (or, uncompressed, its closing CRLFCRLF), and a record
that does not fit is `bad_content_length` and reading resumes at the record after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from fastwarc import ArchiveIterator, WarcRecordType

from pipeline.readers.common import Item, ReaderConfig, Unreadable
from pipeline.readers.warc_bounds import (
    GZIP_MAGIC,
    GZIP_MEMBER_MAGIC,
    find_next_start,
    gzip_problem,
    overstated_length,
    record_end,
)
from pipeline.readers.warc_records import warc_item, warc_too_large

_WARC_BOUNDARY = b"\r\n\r\nWARC/1."  # the end of one record and the start of the next

# metadata is kept only to recognise WAT records; warcinfo/request/revisit are filtered out in C.
_RECORD_TYPES = (
    WarcRecordType.conversion | WarcRecordType.response | WarcRecordType.resource | WarcRecordType.metadata
)

# What a pass over the file ends with: read on from `start`, stop (all is yielded), or a clean end.
_AGAIN, _STOP, _END = "again", "stop", "end"


@dataclass(frozen=True)
class _BadLength:
    """A record whose Content-Length runs past its end, and where the record after it starts (None: nowhere)."""

    unreadable: Unreadable
    resume_at: int | None


@dataclass(frozen=True)
class _CutShort:
    """A record whose payload ends before its Content-Length: the file was cut short."""

    unreadable: Unreadable


def read_warc(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
    """Yield the documents of one WARC/WET/WAT file, and an `Unreadable` for each bad region or record."""
    with open(path, "rb") as f:
        yield from _WarcScan(f, config, name).items()


class _WarcScan:
    """The state of reading one WARC file: where the current pass started, the bad region not yet
    reported, and the last record's item, held back until what follows it shows it is whole."""

    def __init__(self, f: BinaryIO, config: ReaderConfig, name: str):
        self.f = f
        self.config = config
        self.name = name
        self.check_limit = config.max_record_bytes + (1 << 20)  # a record's payload plus room for its headers
        self.gz = f.read(2) == GZIP_MAGIC
        self.start = 0  # where the current FastWARC iterator started
        self.pending: Unreadable | None = None  # bad region not yet reported (merged until a good record)
        self.held: tuple[int, Item] | None = None  # the last record's (offset, item), not yet yielded
        self.last_start: int | None = None  # offset of the last record read completely, in this pass

    def items(self) -> Iterator[Item]:
        while True:
            outcome = yield from self._pass()
            if outcome == _STOP:
                return
            if outcome == _END:
                break
        yield from self._finish()

    def _pass(self) -> Iterator[Item]:
        """One FastWARC iterator from `start`; returns `_AGAIN`, `_STOP` or `_END`."""
        self.f.seek(self.start)
        self.last_start = None
        try:
            outcome = yield from self._iterate()
        except (OSError, ValueError, EOFError) as exc:
            outcome = self._overstated_last()
            if outcome is None:
                return (yield from self._resync(exc))
        if isinstance(outcome, _BadLength):
            return (yield from self._skip_bad_length(outcome))
        return outcome

    def _iterate(self) -> Iterator[Item]:
        """Read records until the iterator ends (`_END`), a record is cut short (`_STOP`) or overstates its
        length (that `_BadLength`)."""
        for rec in ArchiveIterator(self.f, record_types=_RECORD_TYPES, parse_http=True):
            item = self._record(rec)
            if isinstance(item, _BadLength):
                return item
            if isinstance(item, _CutShort):
                yield from self._flush()
                yield item.unreadable
                return _STOP
            if item is not None:
                yield from self._hold(self.last_start, item)
        return _END

    def _record(self, rec) -> Item | _BadLength | _CutShort | None:
        """One record as an item (None: not a document, skipped silently), or what is wrong with its length."""
        offset = rec.stream_pos
        length = rec.content_length
        if length > self.config.max_record_bytes:
            item = warc_too_large(rec, self.name, offset, length, self.config)
        else:
            payload = rec.reader.read()
            short = len(payload) < length
            bad = self._check_length(offset, length, payload, short)
            if bad is not None:
                return bad
            item = warc_item(rec, payload, self.name, offset, self.config)
        self.last_start = offset
        return item

    def _check_length(self, offset: int, length: int, payload: bytes, short: bool) -> _BadLength | _CutShort | None:
        """Whether the record at `offset` overstates its length, or the file ends inside it."""
        if short or _WARC_BOUNDARY in payload or (not self.gz and payload.endswith((b"\r", b"\r\n"))):
            # signs of a body that runs into the next record (or, uncompressed, into the closing
            # CRLFCRLF: a quarter of real WET bodies end in CRLF, so for gzip, where the check
            # decompresses the member again, a body 1-4 bytes too long is let through: it only gains
            # trailing whitespace): check it
            here = self.f.tell()
            overstated, nxt = overstated_length(self.f, offset, self.gz, self.check_limit)
            self.f.seek(here)  # FastWARC reads on from where it was
            if overstated:
                where = f"{self.name}@offset {offset}"
                return _BadLength(
                    Unreadable(where, "bad_content_length", f"Content-Length {length} runs past the end of the record"),
                    nxt,
                )
        if short:
            # the data ends inside this record: the file was cut short
            return _CutShort(Unreadable(
                f"{self.name}@offset {offset}",
                "truncated_gzip" if self.gz else "truncated_record",
                f"payload has {len(payload)} of {length} bytes",
            ))
        return None

    def _overstated_last(self) -> _BadLength | None:
        """After an error: whether it is the next record read from inside the last one (only that one is bad)."""
        if self.last_start is None:
            return None
        overstated, nxt = overstated_length(self.f, self.last_start, self.gz, self.check_limit)
        if not overstated:
            return None
        self._drop_held_at(self.last_start)
        where = f"{self.name}@offset {self.last_start}"
        detail = "Content-Length runs past the end of the record"
        return _BadLength(Unreadable(where, "bad_content_length", detail), nxt)

    def _resync(self, exc: Exception) -> Iterator[Item]:
        """After an error: note the bad region and move `start` to the next place a record can start."""
        reason = "corrupt_gzip" if "compress" in str(exc).lower() else "not_warc"
        bad_at = self.start
        if self.last_start is not None:
            end = record_end(self.f, self.last_start, self.gz)
            if end is None:
                # the last record's own member fails its CRC check (FastWARC notices only when it moves
                # on): its payload cannot be trusted, so it is not yielded
                bad_at, reason = self.last_start, "corrupt_gzip"
                self._drop_held_at(self.last_start)
            else:
                bad_at = end
        if self.pending is None:
            self.pending = Unreadable(f"{self.name}@offset {bad_at}", reason, str(exc))
        nxt = find_next_start(self.f, bad_at + 1, self.gz)
        if nxt is not None:
            self.start = nxt
            return _AGAIN
        # the bad region runs to the end of the file: nothing left to check
        yield from self._flush()
        return _STOP

    def _skip_bad_length(self, bad: _BadLength) -> Iterator[Item]:
        yield from self._flush()
        yield bad.unreadable
        if bad.resume_at is None:
            return _STOP
        self.start = bad.resume_at
        return _AGAIN

    def _finish(self) -> Iterator[Item]:
        """After a clean end: check that the gzip stream decodes to its end, then yield what is held."""
        if self.gz:
            problem = self._gzip_tail_problem()
            if problem is not None:
                bad, member_at = problem
                if self.held is not None and self.held[0] != member_at:
                    yield self.held[1]
                if self.pending is not None:
                    yield self.pending
                yield bad
                return
        yield from self._flush()

    def _gzip_tail_problem(self) -> tuple[Unreadable, int] | None:
        # FastWARC's offsets are member starts in multi-member files (Common Crawl: one member per
        # record); for a single-member file they are not, and the check decompresses from `start`.
        tail_from = self.last_start if self.last_start is not None else self.start
        self.f.seek(tail_from)
        if self.f.read(3) != GZIP_MEMBER_MAGIC:
            tail_from = self.start
        problem = gzip_problem(self.f, tail_from)
        if problem is None:
            return None
        reason, member_at = problem
        detail = "the gzip stream does not decode to its end"
        return Unreadable(f"{self.name}@offset {member_at}", reason, detail), member_at

    def _hold(self, offset: int, item: Item) -> Iterator[Item]:
        """Yield what was held (and the bad region before it), then hold `item`."""
        if self.held is not None:
            yield self.held[1]
        if self.pending is not None:
            yield self.pending
            self.pending = None
        self.held = (offset, item)

    def _flush(self) -> Iterator[Item]:
        """Yield the held item, then the bad region not yet reported."""
        if self.held is not None:
            yield self.held[1]
            self.held = None
        if self.pending is not None:
            yield self.pending
            self.pending = None

    def _drop_held_at(self, offset: int) -> None:
        if self.held is not None and self.held[0] == offset:
            self.held = None
