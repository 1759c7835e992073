"""One reader of JSON and JSONL record files, and one check of outside text, for every reader of
instruction, preference, classification, reward-score and benchmark files.

What can be wrong with such a file is the same everywhere, so it is handled once, here, as a one-line
error that names the file, the line (or array item) and the fix:
- bytes that are not UTF-8 (the line and byte offset are named);
- a line or file that is not JSON;
- a record nested deeper than `MAX_DEPTH` levels (the parser's own limit is Python's recursion limit,
  and every later recursive walk, such as hashing the record, would hit it again);
- a string holding a lone UTF-16 surrogate (`"\\ud800"`): valid JSON, but no UTF-8 encoding exists,
  so the tokenizer or a hash would fail on it later.
What each record must hold is the caller's business (a missing field is its error or counted skip).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from formats.errors import FormatError

#: Records nested deeper than this are refused (instruction, preference and benchmark records are
#: 3 to 4 levels deep; 64 leaves room for any real metadata).
MAX_DEPTH = 64
RECORD_FORMATS = ("auto", "json", "jsonl")

# A JSON escape of a UTF-16 surrogate half: only such text can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class RecordFileError(FormatError, ValueError):
    """A JSON/JSONL file that cannot be read as records: the message names where and the fix."""


def surrogate_at(text: str) -> int | None:
    """The index of the first lone surrogate in text (none can be encoded as UTF-8), or None.

    A command-line argument or line of input with bytes that are not UTF-8 reaches Python as such
    surrogates (`surrogateescape`), so this check also finds non-UTF-8 bytes in argv."""
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


def _check_value(value: Any, where: str, error: Callable[[str], Exception]) -> None:
    """Refuse a record nested deeper than MAX_DEPTH or holding a lone surrogate (an iterative walk)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error(f"{where}: is nested deeper than {MAX_DEPTH} levels; a record is an object of strings, "
                        f"lists and objects a few levels deep")
        if isinstance(item, str):
            at = surrogate_at(item)
            if at is not None:
                raise error(f"{where}: a string holds the lone surrogate \\u{ord(item[at]):04x} (half of a UTF-16 "
                            f"pair, which UTF-8 cannot encode); fix the escape in the file")
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _nesting_may_exceed(text: str) -> bool:
    return text.count("[") + text.count("{") > MAX_DEPTH


def parse_record(text: str, where: str, error: Callable[[str], Exception] = RecordFileError,
                 fix: str = "each line of a JSONL file must be one JSON object") -> Any:
    """One JSON value from text, checked as the module doc says."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{where}: is not valid JSON ({err.msg}, column {err.colno}); {fix}") from None
    except RecursionError:
        raise error(f"{where}: is nested deeper than Python can parse; a record is an object a few levels "
                    f"deep") from None
    if _nesting_may_exceed(text) or _SURROGATE_ESCAPE.search(text):
        _check_value(value, where, error)
    return value


def decode_utf8(data: bytes, name: str, error: Callable[[str], Exception] = RecordFileError) -> str:
    """data as text, or an error naming the line and byte offset of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{name}:{line}: is not UTF-8 text (byte offset {err.start}: 0x{data[err.start]:02x}); "
                    f"convert it, e.g. `iconv -f latin1 -t utf-8`") from None


def read_records(path: str | Path, fmt: str = "auto", error: Callable[[str], Exception] = RecordFileError,
                 ) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSON array file or a JSONL file (blank lines skipped).

    fmt: json (one array), jsonl (one value per line), or auto (an array when the first non-blank
    character is `[`). where is `path:line` for JSONL, `path item N` for an array. Records are not
    checked to be objects: that, and their fields, are the caller's to judge."""
    if fmt not in RECORD_FORMATS:
        raise ValueError(f"fmt must be one of {RECORD_FORMATS}, got {fmt!r}")
    path = Path(path)
    text = decode_utf8(path.read_bytes(), str(path), error)
    if fmt == "json" or (fmt == "auto" and text.lstrip().startswith("[")):
        whole = _parse_array(text, path, error)
        for i, record in enumerate(whole):
            yield f"{path} item {i}", record
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{path}:{lineno}", parse_record(line, f"{path}:{lineno}", error)


def _parse_array(text: str, path: Path, error: Callable[[str], Exception]) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: is not valid JSON ({err.msg}, column {err.colno}); a .json file holds "
                    f"one JSON array of records, a .jsonl file one record per line") from None
    except RecursionError:
        raise error(f"{path}: is nested deeper than Python can parse; a record is an object a few levels deep") from None
    if not isinstance(value, list):
        raise error(f"{path}: holds a JSON {type(value).__name__}, not a list of records; a .json file holds one "
                    f"JSON array of records, a .jsonl file one record per line")
    if _nesting_may_exceed(text) or _SURROGATE_ESCAPE.search(text):
        for i, record in enumerate(value):
            _check_value(record, f"{path} item {i}", error)
    return value


def read_text_lines(data: bytes, name: str, error: Callable[[str], Exception] = RecordFileError) -> list[str]:
    """The lines of a text file or of standard input, refused with the line named if not UTF-8."""
    return decode_utf8(data, name, error).splitlines()
