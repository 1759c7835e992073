"""Finding, fetching, checking and caching fastText models (language ID and quality classifiers).

A model that is missing or is not a fastText model ends the run at once with an `InputError` saying
which file and what to do: a filter that silently kept (or dropped) everything would be worse than no
filter. Models are loaded once per process and cached, so a worker pays the load once, not per shard.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Any

from pipeline.download import DownloadConfig, DownloadError, download
from pipeline.errors import InputError
from pipeline.file_cache import FileCache

log = logging.getLogger(__name__)

#: The first four bytes of every fastText .bin/.ftz file (FASTTEXT_FILEFORMAT_MAGIC_INT32 in fastText).
FASTTEXT_MAGIC = 793712314

_LOADED = FileCache()


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def fetch_model(url: str, cache_dir: str | Path, option: str) -> Path:
    """Download `url` once into `cache_dir` and return the local path.

    Uses the download stage's fetcher (retries, resume of a cut transfer, rename only when complete),
    so an interrupted download never leaves a truncated model that a later run would trust.
    """
    try:
        (result,) = download([url], Path(cache_dir), DownloadConfig(workers=1, retries=3))
    except DownloadError as exc:
        raise InputError(
            f"{option}: could not download {url}: {exc}. Check the URL and the network, or download the "
            "file yourself and pass its path."
        ) from exc
    return result.path


def resolve_model(spec: str | Path, cache_dir: str | Path, option: str) -> Path:
    """A local path for a model given as a path or an http(s) URL (downloaded into `cache_dir`)."""
    spec = str(spec)
    path = fetch_model(spec, cache_dir, option) if is_url(spec) else Path(spec).expanduser()
    check_fasttext_file(path, option)
    return path.resolve()


def check_fasttext_file(path: str | Path, option: str) -> None:
    """Raise InputError unless `path` is a complete fastText model file (checked without loading it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option}: model file {path} does not exist. Pass the path (or URL) of a fastText model.")
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4 or struct.unpack("<i", head)[0] != FASTTEXT_MAGIC:
        raise InputError(
            f"{option}: {path} is not a fastText model (expected a .bin or .ftz file written by fastText, "
            f"first bytes {head!r}). Pass a fastText model, or retrain it."
        )
    problem = fasttext_file_problem(path)
    if problem is not None:
        raise InputError(f"{option}: {path} is a fastText model file but {problem}. Download or train it again.")


def load_fasttext(path: str | Path, option: str) -> Any:
    """Load (once per process) the fastText model at `path`; InputError if it is not one."""
    path = Path(path)
    check_fasttext_file(path, option)
    return _LOADED.get([str(path.resolve())], lambda: _load_fasttext(path, option))


def _load_fasttext(path: Path, option: str) -> Any:
    from fasttext.FastText import _FastText  # the class behind fasttext.load_model, minus its warning

    try:
        return _FastText(model_path=os.fspath(path))
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise InputError(f"{option}: {path} could not be loaded as a fastText model ({exc}). Retrain or re-download it.") from exc


# --- structure check -----------------------------------------------------------------------------
#
# fastText (v0.9, file format version 12) writes: magic, version (int32 each); 12 int32 args and one
# double; the dictionary (sizes, then per entry a NUL-terminated word, an int64 count, an int8 type,
# then pruned-index pairs); a bool "input quantised" and the input matrix; a bool "output quantised" and
# the output matrix. A dense matrix is int64 m, int64 n, m*n float32; a quantised one is bool qnorm,
# int64 m, int64 n, int32 codesize, the codes, a product quantiser (4 int32, 256*dim float32) and, with
# qnorm, m norm codes and a second quantiser. Walking those sizes tells a complete model from a cut
# one without loading it: fastText itself can spend minutes on a truncated file before failing.

_KSUB = 256  # product-quantiser centroids per sub-quantiser (fastText's nbits = 8)


class _Cursor:
    def __init__(self, f, size: int):
        self.f, self.size, self.pos = f, size, 0

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise EOFError
        self.pos += n
        self.f.seek(self.pos)

    def unpack(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise EOFError
        data = self.f.read(n)
        self.pos += n
        return struct.unpack(fmt, data)


def _skip_pq(c: _Cursor) -> None:
    dim, _nsubq, _dsub, _lastdsub = c.unpack("<iiii")
    c.skip(4 * dim * _KSUB)


def _skip_matrix(c: _Cursor, quantised: bool) -> None:
    if not quantised:
        m, n = c.unpack("<qq")
        c.skip(4 * m * n)
        return
    (qnorm,) = c.unpack("<?")
    m, _n = c.unpack("<qq")
    (codesize,) = c.unpack("<i")
    c.skip(codesize)
    _skip_pq(c)
    if qnorm:
        c.skip(m)
        _skip_pq(c)


def _skip_dictionary(c: _Cursor) -> None:
    size, _nwords, _nlabels = c.unpack("<iii")
    _ntokens, prune_size = c.unpack("<qq")
    chunk = b""
    start = 0  # where the next entry starts in `chunk`
    for _ in range(size):
        while (end := chunk.find(b"\0", start)) < 0 or end + 10 > len(chunk):
            more = c.f.read(1 << 16)
            if not more:
                raise EOFError
            chunk = chunk[start:] + more
            start = 0
        # the word, its NUL, an int64 count and an int8 type
        c.pos += end + 10 - start
        start = end + 10
    c.f.seek(c.pos)
    if prune_size > 0:
        c.skip(8 * prune_size)


def fasttext_file_problem(path: str | Path) -> str | None:
    """None if the file's sections add up to exactly its size, else what is wrong (truncated, extra
    bytes, an unknown version)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        c = _Cursor(f, size)
        try:
            magic, version = c.unpack("<ii")
            if magic != FASTTEXT_MAGIC:
                return "not a fastText model"
            if version != 12:
                return None  # an older format: leave the judgement to fastText
            c.skip(12 * 4 + 8)  # args
            _skip_dictionary(c)
            (quant_input,) = c.unpack("<?")
            _skip_matrix(c, quant_input)
            (quant_output,) = c.unpack("<?")
            _skip_matrix(c, quant_input and quant_output)
        except (EOFError, struct.error, MemoryError):
            return f"truncated (the file ends before its sections do; {size} bytes)"
    if c.pos != size:
        return f"damaged ({size - c.pos} bytes after the last section)"
    return None
