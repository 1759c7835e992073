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

from pipeline.errors import InputError

log = logging.getLogger(__name__)

#: The first four bytes of every fastText .bin/.ftz file (FASTTEXT_FILEFORMAT_MAGIC_INT32 in fastText).
FASTTEXT_MAGIC = 793712314

_LOADED: dict[tuple[str, int, int], Any] = {}


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def fetch_model(url: str, cache_dir: str | Path, option: str) -> Path:
    """Download `url` once into `cache_dir` and return the local path.

    Uses the download stage's fetcher (retries, resume of a cut transfer, rename only when complete),
    so an interrupted download never leaves a truncated model that a later run would trust.
    """
    from pipeline.download import DownloadConfig, DownloadError, download

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
    """Raise InputError unless `path` is a readable file that starts like a fastText model."""
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


def load_fasttext(path: str | Path, option: str) -> Any:
    """Load (once per process) the fastText model at `path`; InputError if it is not one."""
    path = Path(path)
    check_fasttext_file(path, option)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    model = _LOADED.get(key)
    if model is None:
        from fasttext.FastText import _FastText  # the class behind fasttext.load_model, minus its warning

        try:
            model = _FastText(model_path=os.fspath(path))
        except (ValueError, RuntimeError, MemoryError) as exc:
            raise InputError(f"{option}: {path} could not be loaded as a fastText model ({exc}). Retrain or re-download it.") from exc
        _LOADED[key] = model
    return model
