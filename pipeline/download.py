"""Download input files over HTTP, resumably and verified, and record them in `DATA/raw/manifest.json`.

Common Crawl serves files of 60-1,000 MB from a CDN that throttles (HTTP 503, 429) and drops
connections under load. So every transfer: retries with exponential backoff (urllib3 handles refused
connections and 429/5xx answers, honouring Retry-After; our loop handles connections dropped in the
middle of the body); resumes a partial file (`<name>.part`) with an HTTP Range request, starting again
from byte 0 when a server ignores Range; checks integrity before the file gets its final name (the gzip
stream must decode to its very end, every member, so a cut or damaged download is deleted and fetched
again); and renames the finished file into place atomically. A file at its final name is therefore
always complete, and a rerun skips it.

For a local SOURCE nothing is copied: the manifest lists the local files where they are.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
import urllib3
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from pipeline.errors import ConfigError, InputError, PipelineError, StageConfigChanged
from pipeline.manifest import FORMAT_VERSION, MANIFEST_NAME, read_json, write_json_atomic
from pipeline.readers import gzip_problem

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://data.commoncrawl.org"
#: SOURCE when none is given and no earlier download exists (keep in step with the Makefile).
DEFAULT_SOURCE = "CC-MAIN-2024-51"
#: NUM_FILES when none is given: two WET files (~150 MB, ~70k documents) make a quick first corpus.
DEFAULT_NUM_FILES = 2
RAW_DIR = "raw"
FILES_DIR = "files"
#: HTTP answers worth retrying: rate limiting and server-side trouble.
RETRY_STATUSES = (429, 500, 502, 503, 504)
_CHUNK_BYTES = 1 << 20
_USER_AGENT = "crawlgpt-download/0.1 (+https://github.com/; research data pipeline)"


class DownloadError(PipelineError):
    """A file could not be downloaded (not found, or still failing after every retry)."""


@dataclass(frozen=True)
class DownloadConfig:
    """How files are fetched. None of these change what is downloaded, only how."""

    workers: int = 4
    """Parallel transfers. Common Crawl asks for few parallel connections; more mostly earns 503s."""
    retries: int = 5
    """Retries per file after the first attempt (for 429/5xx, refused or dropped connections, bad gzip)."""
    backoff_s: float = 1.0
    """Base of the exponential backoff between retries: waits backoff_s * 2**(n-1) seconds."""
    backoff_max_s: float = 60.0
    """Longest single wait between retries."""
    connect_timeout_s: float = 10.0
    """Seconds to wait for a connection."""
    read_timeout_s: float = 60.0
    """Seconds to wait for the next bytes of a response before treating the connection as dropped."""
    base_url: str = DEFAULT_BASE_URL
    """Where Common Crawl paths (crawl-data/...) are fetched from; tests point it at a loopback server."""
    verify_gzip: bool = True
    """Decompress each downloaded .gz file to its end before accepting it (about 1 s per 100 MB)."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("workers", f"must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise ConfigError("retries", f"must be 0 or more, got {self.retries}")
        if self.backoff_s < 0:
            raise ConfigError("backoff_s", f"must be 0 or more, got {self.backoff_s}")
        if not re.match(r"^https?://", self.base_url):
            raise ConfigError("base_url", f"must start with http:// or https://, got {self.base_url!r}")


@dataclass(frozen=True)
class DownloadResult:
    """One file: where it came from, where it is, its size and checksum, whether it was already there."""

    url: str
    path: Path
    bytes: int
    sha256: str
    skipped: bool = False


# --- HTTP session ----------------------------------------------------------------------------------

_local = threading.local()


def make_session(config: DownloadConfig) -> requests.Session:
    """A session whose adapter retries refused connections and 429/5xx answers with backoff.

    Dropped connections in the middle of a body are not covered by urllib3's Retry; `_fetch_one`
    handles those by resuming with a Range request.
    """
    retry = Retry(
        total=config.retries,
        connect=config.retries,
        read=config.retries,
        status=config.retries,
        other=0,
        backoff_factor=config.backoff_s,
        backoff_max=config.backoff_max_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,  # the last answer comes back to us, so the error can name its status
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=max(4, config.workers))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = _USER_AGENT
    return session


def _thread_session(config: DownloadConfig) -> requests.Session:
    """One session per thread (requests sessions are not documented as thread-safe)."""
    key = (config.retries, config.backoff_s, config.backoff_max_s, config.workers)
    if getattr(_local, "key", None) != key:
        _local.session = make_session(config)
        _local.key = key
    return _local.session


def fetch_bytes(url: str, config: DownloadConfig, what: str = "") -> bytes:
    """GET a small file (a path listing) into memory, with the same retries; DownloadError on failure."""
    session = _thread_session(config)
    try:
        resp = session.get(url, timeout=(config.connect_timeout_s, config.read_timeout_s))
    except requests.RequestException as exc:
        raise DownloadError(f"cannot fetch {url}: {exc} (after {config.retries} retries)") from exc
    if resp.status_code == 404:
        raise DownloadError(f"{url} not found (HTTP 404){what}")
    if resp.status_code != 200:
        raise DownloadError(f"cannot fetch {url}: HTTP {resp.status_code} after {config.retries} retries")
    return resp.content


# --- one file --------------------------------------------------------------------------------------


def local_path_for(url: str, out_dir: Path, base_url: str = DEFAULT_BASE_URL) -> Path:
    """Where `url` is stored under `out_dir`: its Common Crawl path (crawl-data/...) if it lives under
    `base_url`, else `<host>/<path>`. Keeping the path keeps names unique (WET names repeat a segment
    number only within their segment folder) and lets anyone map a file back to its URL.

    A URL comes from outside (a URL list, a crawl listing, an option), so it must never choose a path
    outside `out_dir`: see `safe_relative_parts`. InputError if nothing usable is left of the URL.
    """
    base = base_url.rstrip("/") + "/"
    if url.startswith(base):
        rel = url[len(base):]
    else:
        parts = urlsplit(url)
        rel = f"{parts.hostname or 'host'}/{parts.path}"
    clean = safe_relative_parts(rel)
    if not clean:
        raise InputError(f"cannot make a file name from URL {url}")
    return inside(out_dir, out_dir.joinpath(*clean), f"the file name made from URL {url}")


def safe_relative_parts(rel: str) -> list[str]:
    """The segments of a URL path, percent-decoded, made safe to use as folder and file names.

    Decoding happens *before* the segments are judged, so an encoded `%2e%2e` cannot become `..` after it.
    Backslashes count as separators; segments that are empty, `.`, `..` or only dots are dropped; every
    character outside [A-Za-z0-9._-] (NUL, `:` of a drive letter, `%` of a double encoding) becomes `_`.
    """
    decoded = unquote(rel).replace("\\", "/")
    clean = []
    for seg in decoded.split("/"):
        seg = re.sub(r"[^A-Za-z0-9._-]", "_", seg)
        if seg.strip("."):
            clean.append(seg)
    return clean


def inside(folder: Path, path: Path, what: str) -> Path:
    """`path` if it resolves (symbolic links followed) to a place inside `folder`, else InputError."""
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise InputError(f"{what} ({path}) points outside {folder}; refusing to write there")
    return path


def download(
    urls: Iterable[str],
    out_dir: str | Path,
    config: DownloadConfig = DownloadConfig(),
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[DownloadResult], None] | None = None,
) -> list[DownloadResult]:
    """Download every URL into `out_dir` (at most `config.workers` at a time); return results in input order.

    Files already at their final name are skipped (only complete, verified files ever get that name).
    `on_bytes(n)` is called from worker threads as bytes arrive; `on_file(result)` when a file is done.
    Raises DownloadError naming the URL for a 404 or a file that still fails after every retry; the other
    transfers are cancelled, and what they fetched so far stays in `.part` files for the next run.
    """
    out_dir = Path(out_dir)
    url_list = list(dict.fromkeys(urls))  # drop repeats, keep order
    targets = [local_path_for(u, out_dir, config.base_url) for u in url_list]  # each checked to be inside
    seen: dict[Path, str] = {}
    for u, t in zip(url_list, targets):
        if t in seen:
            raise InputError(f"URLs {seen[t]} and {u} map to the same file {t}; rename one")
        seen[t] = u
    results: list[DownloadResult | None] = [None] * len(url_list)
    stop = threading.Event()  # set on the first failure (or Ctrl-C): running transfers stop at their next chunk
    with cf.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="download") as pool:
        futures = {
            pool.submit(_fetch_one, u, t, config, on_bytes, stop): i
            for i, (u, t) in enumerate(zip(url_list, targets))
        }
        try:
            for fut in cf.as_completed(futures):
                res = fut.result()
                results[futures[fut]] = res
                if on_file is not None:
                    on_file(res)
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise
    return [r for r in results if r is not None]


def _fetch_one(
    url: str,
    dest: Path,
    config: DownloadConfig,
    on_bytes: Callable[[int], None] | None,
    stop: threading.Event | None = None,
) -> DownloadResult:
    if dest.exists():
        log.debug("%s already complete, skipping", dest)
        return DownloadResult(url, dest, dest.stat().st_size, _sha256(dest), skipped=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = _thread_session(config)
    problem = ""
    for attempt in range(config.retries + 1):
        if attempt:
            wait = min(config.backoff_max_s, config.backoff_s * 2 ** (attempt - 1))
            log.warning("%s: %s; retry %d of %d in %.1fs", url, problem, attempt, config.retries, wait)
            if (stop or threading.Event()).wait(wait):
                raise DownloadError(f"{url}: stopped because another transfer failed; rerun to resume")
        try:
            complete = _transfer(session, url, part, config, on_bytes, stop)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if exc.args and isinstance(exc.args[0], MaxRetryError):
                # urllib3 already retried connecting `retries` times with backoff: do not multiply that
                raise DownloadError(
                    f"cannot download {url}: cannot connect ({exc.args[0].reason}) after {config.retries} "
                    "retries. Check the network and the URL."
                ) from exc
            problem = f"connection failed ({type(exc).__name__}: {exc})"
            continue  # keep the .part file: the next attempt resumes it
        if stop is not None and stop.is_set():
            raise DownloadError(f"{url}: stopped because another transfer failed; rerun to resume")
        if not complete:
            problem = "the connection closed before the file was complete"
            continue
        if config.verify_gzip and dest.name.endswith(".gz"):
            with open(part, "rb") as f:
                bad = gzip_problem(f)
            if bad is not None:
                reason, at = bad
                problem = f"downloaded file fails the gzip check ({reason} at byte {at}); deleted it"
                part.unlink(missing_ok=True)
                continue
        sha = _sha256(part, fsync=True)
        size = part.stat().st_size
        os.replace(part, dest)
        log.info("downloaded %s (%d bytes)", url, size)
        return DownloadResult(url, dest, size, sha)
    raise DownloadError(
        f"cannot download {url}: {problem} (gave up after {config.retries} retries). "
        "Rerun to resume; check the network, or lower --workers if the server is throttling."
    )


def _transfer(
    session: requests.Session,
    url: str,
    part: Path,
    config: DownloadConfig,
    on_bytes: Callable[[int], None] | None,
    stop: threading.Event | None = None,
) -> bool:
    """One attempt: append to `part` from where it stops. True if the whole body arrived.

    Raises DownloadError for answers that retrying will not fix (404, other 4xx, 5xx that urllib3 has
    already retried), and requests' connection errors for the caller to retry.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    # Accept-Encoding identity: we want the file's bytes, not a re-compressed transfer of them
    headers["Accept-Encoding"] = "identity"
    timeout = (config.connect_timeout_s, config.read_timeout_s)
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        status = resp.status_code
        if status == 416 and have:
            # Range not satisfiable: the part file is already as long as the remote file (or longer,
            # if the remote changed). Let the integrity check decide; if it fails, it is fetched anew.
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total is None or total == have:
                return True
            part.unlink(missing_ok=True)
            return False
        if status == 404:
            raise DownloadError(f"{url} not found (HTTP 404); check the URL or SOURCE")
        if status in RETRY_STATUSES:
            raise DownloadError(f"cannot download {url}: HTTP {status} after {config.retries} retries")
        if status not in (200, 206):
            raise DownloadError(f"cannot download {url}: HTTP {status} {resp.reason}")
        mode = "ab"
        if status == 200:
            if have:
                log.info("%s: server ignored the Range request; starting again from byte 0", url)
            mode, have = "wb", 0
        else:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != have:
                log.info("%s: server answered Range %s for byte %d; starting again", url, start, have)
                part.unlink(missing_ok=True)
                return False
        expected = _expected_total(resp, have)
        got = have
        # Read the raw bytes (no Content-Encoding decoding: we want the file as served) with read1, which
        # returns what has arrived: when a connection drops, every byte received is already in `part`.
        raw = resp.raw
        with open(part, mode) as f:
            try:
                while chunk := raw.read1(_CHUNK_BYTES):
                    if stop is not None and stop.is_set():
                        return False
                    f.write(chunk)
                    got += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            except urllib3.exceptions.HTTPError as exc:  # IncompleteRead, ProtocolError, ReadTimeoutError
                raise requests.ConnectionError(exc) from exc
    if expected is not None and got < expected:
        return False
    return True


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _content_range_total(value: str | None) -> int | None:
    m = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _expected_total(resp: requests.Response, have: int) -> int | None:
    """The full file size the server announced (Content-Range total, or offset + Content-Length)."""
    if resp.status_code == 206:
        total = _content_range_total(resp.headers.get("Content-Range"))
        if total is not None:
            return total
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _sha256(path: Path, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb+" if fsync else "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


# --- the download stage ----------------------------------------------------------------------------


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / RAW_DIR


def run_download(
    source: str | None,
    num_files: int | None,
    data_dir: str | Path,
    config: DownloadConfig = DownloadConfig(),
    force: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[DownloadResult], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    text_field: str = "text",
) -> dict:
    """The download stage: resolve SOURCE, fetch what is remote, write `DATA/raw/manifest.json` last.

    `source`/`num_files` None mean "as last time" (from the existing manifest), else the defaults
    (DEFAULT_SOURCE, DEFAULT_NUM_FILES): so `make tokenizer` after `make corpus SOURCE=x` goes on with x.
    Returns the manifest plus a `run` entry (files downloaded and skipped in this run, bytes fetched)
    that is printed but not written, so the manifest of an unchanged input stays byte-identical.
    A manifest made for another SOURCE or NUM_FILES is refused unless `force`: the files downstream
    stages were built from would change under them. With `force`, the manifest is replaced; files
    already downloaded stay under raw/files/ as a cache (delete the folder to reclaim the space).
    """
    from pipeline.sources import CRAWL_ID_RE, resolve_source  # here: sources uses this module's fetch_bytes

    out = raw_dir(data_dir)
    previous = _load_previous(out)
    source, num_files = choose_source(source, num_files, previous)
    if previous is not None and not force and CRAWL_ID_RE.match(source):
        again = _unchanged_crawl(previous, source, num_files, config)
        if again is not None:
            return again  # every file of the same crawl request is in place: no network needed
    src = resolve_source(source, num_files, config=config, text_field=text_field)
    stage_config = {"source": source, "num_files": src.num_files, "base_url": config.base_url if src.urls else None}
    if text_field != "text":  # only then: the file list of every earlier download stays valid
        stage_config["text_field"] = text_field
    if previous is not None and previous.get("config") != stage_config and not force:
        old = previous.get("config", {})
        raise StageConfigChanged(
            f"{out} holds the file list of {_describe(old)}, not {_describe(stage_config)}. To go on with "
            "the files already there, leave SOURCE and NUM_FILES out (or pass the same values again). To "
            "switch, rerun with --force (make ... FORCE=1): the file list is replaced, files already "
            "downloaded are kept as a cache. Or use another DATA folder."
        )
    if on_plan is not None:
        on_plan(len(src.urls))
    start = time.monotonic()
    files: list[dict] = []
    downloaded = skipped = fetched_bytes = 0
    if src.urls:
        counted = [0]
        lock = threading.Lock()

        def count(n: int) -> None:
            with lock:
                counted[0] += n
            if on_bytes is not None:
                on_bytes(n)

        results = download(src.urls, out / FILES_DIR, config, on_bytes=count, on_file=on_file)
        for r in results:
            files.append({"path": str(r.path.resolve()), "url": r.url, "bytes": r.bytes, "sha256": r.sha256})
            skipped += r.skipped
            downloaded += not r.skipped
        fetched_bytes = counted[0]
    else:
        for p in src.paths:
            files.append({"path": str(p.resolve()), "url": None, "bytes": p.stat().st_size})
    manifest = {
        "stage": "download",
        "format_version": FORMAT_VERSION,
        "source": source,
        "source_kind": src.kind,
        "config": stage_config,
        "files": files,
        "totals": {"files": len(files), "bytes": sum(f["bytes"] for f in files)},
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    run = {
        "downloaded": downloaded,
        "skipped": skipped,
        "local": 0 if src.urls else len(files),
        "fetched_bytes": fetched_bytes,
        "elapsed_s": round(time.monotonic() - start, 3),
    }
    log.info("download: %d files (%d downloaded, %d already there), %d bytes fetched",
             len(files), downloaded, skipped, fetched_bytes)
    return {**manifest, "run": run}


def choose_source(source: str | None, num_files: int | None, previous: dict | None) -> tuple[str, int]:
    """SOURCE and NUM_FILES to use: as given, else as recorded in the previous manifest, else defaults."""
    old = (previous or {}).get("config", {})
    if source is None:
        source = old.get("source") or DEFAULT_SOURCE
        if old.get("source"):
            log.info("continuing with SOURCE=%s from the existing raw/manifest.json", source)
    if num_files is None:
        same = old.get("source") == source and old.get("num_files") is not None
        num_files = old["num_files"] if same else DEFAULT_NUM_FILES
    return source, num_files


def _unchanged_crawl(previous: dict, source: str, num_files: int, config: DownloadConfig) -> dict | None:
    """The previous manifest (plus a `run` entry) if it is for this very crawl request and every file
    it lists is still in place with its recorded size; else None."""
    want = {"source": source, "num_files": num_files, "base_url": config.base_url}
    if previous.get("config") != want:
        return None
    files = previous.get("files", [])
    for entry in files:
        p = Path(entry["path"])
        if not p.is_file() or p.stat().st_size != entry["bytes"]:
            return None
    log.info("download: all %d files of %s already complete", len(files), source)
    run = {"downloaded": 0, "skipped": len(files), "local": 0, "fetched_bytes": 0, "elapsed_s": 0.0}
    return {**previous, "run": run}


def _describe(stage_config: dict) -> str:
    text = f"SOURCE={stage_config.get('source')!r}"
    if stage_config.get("num_files") is not None:
        text += f" NUM_FILES={stage_config['num_files']}"
    return text


def _load_previous(out: Path) -> dict | None:
    p = out / MANIFEST_NAME
    if not p.exists():
        return None
    try:
        return read_json(p)
    except ValueError:
        return None


def load_raw_files(data_dir: str | Path) -> list[Path]:
    """The input files of the pipeline, from `DATA/raw/manifest.json` (downloaded or local).

    Raises InputError naming `make download` when the stage has not run, or when a listed file has
    gone missing or changed size since.
    """
    out = raw_dir(data_dir)
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.exists():
        raise InputError(f"{manifest_path} not found: the download stage has not run. Run `make download` first.")
    manifest = read_json(manifest_path)
    paths = []
    for entry in manifest.get("files", []):
        p = Path(entry["path"])
        if not p.is_file():
            raise InputError(f"{p} is listed in {manifest_path} but is missing; run `make download` again.")
        if p.stat().st_size != entry["bytes"]:
            raise InputError(
                f"{p} has {p.stat().st_size} bytes but {manifest_path} recorded {entry['bytes']}; "
                "it changed since the download stage ran. Run `make download` again."
            )
        paths.append(p)
    return paths
