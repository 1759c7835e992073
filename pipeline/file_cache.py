"""Objects built from files (a tokenizer, a fastText model, a filter chain), built once per process and
built again when one of their files changes size or modification time: a long-lived process (tests
running shards in-process, a Ray worker) must not keep using a model retrained at the same path."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable

from formats.manifest import file_key


class FileCache:
    """Values keyed by `extra` and the identity (path, size, mtime) of the files they were built from."""

    def __init__(self, keep_one: bool = False):
        self.keep_one = keep_one
        """Keep only the newest value (a large model or chain: the old one is dropped before the new is built)."""
        self._values: dict[tuple, Any] = {}

    def get(self, paths: Iterable[str], build: Callable[[], Any], extra: tuple[Hashable, ...] = ()) -> Any:
        """The value for these files (and `extra`), calling `build` when there is none yet."""
        key = (*extra, *(file_key(p) for p in paths))
        if key not in self._values:
            if self.keep_one:
                self._values.clear()
            self._values[key] = build()
        return self._values[key]
