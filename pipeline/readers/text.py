"""Plain text (.txt): one document per file (a paragraph is too small to judge quality or language)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.documents import Document
from pipeline.readers.common import UTF8_BOM, Item, ReaderConfig, Unreadable


def read_text(path: Path, config: ReaderConfig, name: str) -> Iterator[Item]:
    size = path.stat().st_size
    if size > config.max_record_bytes:
        yield Unreadable(name, "too_large", f"{size} bytes > {config.max_record_bytes}")
        return
    data = path.read_bytes()
    if b"\x00" in data:
        yield Unreadable(name, "nul_bytes")
        return
    try:
        text = data.removeprefix(UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Unreadable(name, "invalid_utf8", str(exc))
        return
    if not text.strip():
        yield Unreadable(name, "empty_record")
        return
    yield Document(id=name, text=text, url="", source=name, meta={})
