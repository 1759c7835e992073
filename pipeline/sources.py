"""What a SOURCE names: a Common Crawl crawl, a list of URLs, or local files.

`resolve_source` turns the one string a user types (`make corpus SOURCE=...`) into the exact list of
files the pipeline reads, in a fixed order, so that the same SOURCE always means the same files:

- a crawl id `CC-MAIN-YYYY-WW`: the first NUM_FILES paths of the crawl's `wet.paths.gz` listing;
- a file listing URLs, one per line (`#` comments and blank lines allowed): http(s) URLs, or Common
  Crawl paths such as `crawl-data/...` that are fetched from the base URL; a Common Crawl listing
  itself (`wet.paths.gz`, `*.paths`) works too;
- a local directory: every supported file under it, recursively, sorted by path;
- a glob (`'data/*.jsonl.zst'`, `**` allowed): the supported files it matches, sorted;
  (in both, WAT files and JSONL files whose first record has no "text" field, such as crawl-dev's
  labels.jsonl, are skipped with a warning: they hold no documents);
- a single local file of a supported type, or a single http(s) URL.

NUM_FILES limits crawl ids only (a crawl has ~90,000 WET files); an explicit list, folder or glob is
taken whole, because the user already chose its files.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zstandard

from pipeline.http import DownloadConfig, fetch_bytes
from pipeline.errors import ConfigError, InputError
from pipeline.readers import SUPPORTED_SUFFIXES, ReaderConfig, file_kind, is_wat

log = logging.getLogger(__name__)

CRAWL_ID_RE = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
_URL_RE = re.compile(r"^https?://\S+$", re.IGNORECASE)
_CC_PATH_RE = re.compile(r"^/?crawl-data/\S+$")
_LISTING_SUFFIXES = (".paths", ".paths.gz")
DEFAULT_TEXT_FIELD = ReaderConfig().text_field
_MAX_LIST_BYTES = 64 << 20  # larger than any real URL list (a whole crawl's wet.paths is ~10 MB)


@dataclass(frozen=True)
class Source:
    """The files a SOURCE stands for: remote `urls` to download, or local `paths` to read in place."""

    spec: str
    """The SOURCE string as given."""
    kind: str
    """One of: crawl, url_list, url, directory, glob, file."""
    urls: tuple[str, ...] = ()
    """Remote files, in order (empty for a local source)."""
    paths: tuple[Path, ...] = ()
    """Local files, in order (empty for a remote source)."""
    num_files: int | None = None
    """The NUM_FILES limit that applied (crawl ids only), else None."""


def resolve_source(
    source: str, num_files: int, config: DownloadConfig | None = None, text_field: str = DEFAULT_TEXT_FIELD
) -> Source:
    """The files SOURCE names (see the module docstring). `config` is a `DownloadConfig` (base URL,
    retries and timeouts used to fetch a crawl's listing); the defaults fetch from Common Crawl.
    `text_field` is the JSONL key holding the text: a JSONL file in a folder or glob whose first record
    lacks it is skipped as not a document file.

    Raises ConfigError for a bad NUM_FILES, InputError naming SOURCE when it is none of the accepted
    forms or matches no file, and DownloadError when a crawl's listing cannot be fetched.
    """
    config = config or DownloadConfig()
    spec = source.strip()
    if not spec:
        raise InputError("SOURCE is empty; give a crawl id (CC-MAIN-YYYY-WW), a URL list, a folder or a glob")
    if CRAWL_ID_RE.match(spec):
        return _resolve_crawl(spec, num_files, config)
    if _URL_RE.match(spec):
        _check_url_suffix(spec, spec)
        return Source(spec, "url", urls=(spec,))
    path = Path(spec).expanduser()
    if path.is_dir():
        return Source(spec, "directory", paths=tuple(_supported_files(sorted(path.rglob("*")), spec, text_field)))
    if path.is_file():
        if _is_listing(path):
            return Source(spec, "url_list", urls=tuple(_read_url_list(path, config.base_url)))
        return Source(spec, "file", paths=(path,))
    if any(c in spec for c in "*?["):
        matches = [Path(p) for p in sorted(globlib.glob(spec, recursive=True))]
        return Source(spec, "glob", paths=tuple(_supported_files(matches, spec, text_field)))
    hint = ""
    if spec.upper().startswith("CC-MAIN"):
        hint = " A crawl id looks like CC-MAIN-2024-51 (year and week, two digits)."
    raise InputError(
        f"SOURCE {spec!r} is not a Common Crawl crawl id (CC-MAIN-YYYY-WW), an existing file or folder, "
        f"a glob that matches files, or an http(s) URL.{hint}"
    )


def _resolve_crawl(crawl_id: str, num_files: int, config: DownloadConfig) -> Source:
    if num_files < 1:
        raise ConfigError("num_files", f"must be at least 1 for a crawl id, got {num_files}")
    base = config.base_url.rstrip("/")
    listing_url = f"{base}/crawl-data/{crawl_id}/wet.paths.gz"
    blob = fetch_bytes(
        listing_url, config,
        what=f": the crawl id {crawl_id} is probably wrong (the list of crawls: https://commoncrawl.org/overview)",
    )
    try:
        text = gzip.decompress(blob).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{listing_url} is not a gzip-compressed list of paths ({exc})") from exc
    paths = [line.strip() for line in text.splitlines() if line.strip()]
    if not paths:
        raise InputError(f"{listing_url} lists no files")
    if num_files > len(paths):
        log.warning("%s has only %d WET files; taking all of them", crawl_id, len(paths))
    chosen = paths[:num_files]
    return Source(crawl_id, "crawl", urls=tuple(f"{base}/{p.lstrip('/')}" for p in chosen), num_files=num_files)


def _is_listing(path: Path) -> bool:
    """A URL list: `*.paths[.gz]`, any file of no supported type, or a .txt whose lines are all URLs."""
    name = path.name.lower()
    if name.endswith(_LISTING_SUFFIXES):
        return True
    kind = file_kind(path)
    if kind is None:
        return True  # read as a list; a line that is not a URL gets an error naming it
    if kind == "text":  # urls.txt: a text "document" made only of URLs is a list, not a document
        return _looks_like_url_list(path)
    return False


def _lines(path: Path) -> list[str]:
    """The lines of a (possibly gzipped) URL list; InputError if it cannot be one."""
    not_data = f"SOURCE {str(path)!r} is not a data file of a supported type ({', '.join(SUPPORTED_SUFFIXES)})"
    if path.stat().st_size > _MAX_LIST_BYTES:
        raise InputError(f"{not_data}, and too large to be a URL list")
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise InputError(f"{not_data}, and not a readable gzipped URL list ({exc})") from exc
    return data.decode("utf-8", errors="replace").splitlines()


def _looks_like_url_list(path: Path) -> bool:
    if path.stat().st_size > _MAX_LIST_BYTES:
        return False
    entries = [ln.strip() for ln in _lines(path) if ln.strip() and not ln.strip().startswith("#")]
    return bool(entries) and all(_URL_RE.match(e) or _CC_PATH_RE.match(e) for e in entries)


def _read_url_list(path: Path, base_url: str) -> list[str]:
    base = base_url.rstrip("/")
    urls = []
    for i, raw in enumerate(_lines(path), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _URL_RE.match(line):
            url = line
        elif " " not in line and "://" not in line:
            url = f"{base}/{line.lstrip('/')}"  # a Common Crawl path (crawl-data/...)
        else:
            raise InputError(
                f"{path}:{i}: {line[:80]!r} is neither an http(s) URL nor a Common Crawl path. (SOURCE is read "
                f"as a URL list because it is not a data file of a supported type: {', '.join(SUPPORTED_SUFFIXES)})"
            )
        _check_url_suffix(url, f"{path}:{i}")
        urls.append(url)
    if not urls:
        raise InputError(f"SOURCE {str(path)!r} lists no URLs (only blank lines or # comments)")
    return list(dict.fromkeys(urls))


def _check_url_suffix(url: str, where: str) -> None:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    if file_kind(name) is None:
        raise InputError(
            f"{where}: {url} does not name a file of a supported type ({', '.join(SUPPORTED_SUFFIXES)})"
        )


def _supported_files(candidates: list[Path], spec: str, text_field: str = DEFAULT_TEXT_FIELD) -> list[Path]:
    """The document files among `candidates`, skipping (with a warning) the ones that hold no text."""
    files, wat, no_field = [], 0, 0
    for p in candidates:
        if p.name.startswith(".") or not p.is_file() or file_kind(p) is None:
            continue
        if is_wat(p):
            wat += 1  # WAT files hold metadata, no text: reading them would only count wat_metadata
            continue
        if file_kind(p) == "jsonl" and not _jsonl_has_text(p, text_field):
            # e.g. crawl-dev/labels.jsonl beside the WET files: metadata, not documents
            log.warning("SOURCE %s: skipping %s: its first record has no %r field (not a document file)",
                        spec, p, text_field)
            no_field += 1
            continue
        files.append(p)
    if wat:
        log.warning("SOURCE %s: skipping %d WAT file(s): page metadata only, no text", spec, wat)
    if not files:
        hint = ""
        if no_field:
            hint = (f" ({no_field} JSONL file(s) skipped because their first record has no {text_field!r} field; "
                    "name the field holding the text with --text-field)")
        raise InputError(
            f"SOURCE {spec!r} matches no readable file{hint}; supported file types: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return files


def _jsonl_has_text(path: Path, text_field: str = DEFAULT_TEXT_FIELD) -> bool:
    """Whether the first non-blank line of a JSONL file is an object with a text field.

    Only a file whose first record parses and lacks the field is judged not to be documents; anything
    unclear is kept, and the reader reports its problems record by record.
    """
    try:
        with open(path, "rb") as raw:
            name = path.name.lower()
            if name.endswith(".gz"):
                head = gzip.GzipFile(fileobj=raw).read(1 << 20)
            elif name.endswith(".zst"):
                head = zstandard.ZstdDecompressor().stream_reader(raw).read(1 << 20)
            else:
                head = raw.read(1 << 20)
    except (OSError, EOFError, zstandard.ZstdError):
        return True
    for line in head.splitlines():
        if line.strip():
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                return True
            return not isinstance(obj, dict) or text_field in obj
    return True
