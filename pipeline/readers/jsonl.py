"""JSONL (plain, .gz, .zst): one document per non-blank line; the text field is configurable."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import zstandard

from pipeline.readers.common import CHUNK_BYTES, UTF8_BOM, Item, ReaderConfig, Unreadable, make_document


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


def read_jsonl(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
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
                if line_no == 1 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]  # a byte-order mark some editors write: not content
                where = f"{name}@line {line_no}"
                if len(line) > limit and not line.endswith(b"\n"):
                    while line and not line.endswith(b"\n"):  # skip the rest of the oversized line
                        line = stream.readline(CHUNK_BYTES)
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
    return make_document(text, obj, name, f"{name}:{line_no}", where, config)

