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
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from urllib3.exceptions import MaxRetryError

from pipeline.errors import InputError
from pipeline.http import DEFAULT_BASE_URL, RETRY_STATUSES, DownloadConfig, DownloadError, thread_session
from formats.manifest import MANIFEST_NAME, OMIT_IF_NONE, config_dict, load_manifest, read_json
from pipeline.readers import gzip_problem
from pipeline.sources import CRAWL_ID_RE, DEFAULT_TEXT_FIELD, resolve_source
from pipeline.stage import Executor, LocalExecutor, Progress, ShardStats, ShardTask, report_progress, run_stage

log = logging.getLogger(__name__)

#: SOURCE when none is given and no earlier download exists (keep in step with the Makefile).
DEFAULT_SOURCE = "CC-MAIN-2024-51"
#: NUM_FILES when none is given: two WET files (~150 MB, ~70k documents) make a quick first corpus.
DEFAULT_NUM_FILES = 2
RAW_DIR = "raw"
FILES_DIR = "files"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class DownloadResult:
    """One file: where it came from, where it is, its size and checksum, whether it was already there."""

    url: str
    path: Path
    bytes: int
    sha256: str
    skipped: bool = False


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
    session = thread_session(config)
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

STAGE = "download"


@dataclass(frozen=True)
class DownloadStageConfig:
    """What the download stage lists: its recorded config (how files are fetched is not part of it)."""

    source: str
    """The SOURCE as given (crawl id, URL list, folder, glob, file or URL)."""
    num_files: int | None
    """WET files taken from a crawl id (None for other sources, which are taken whole)."""
    base_url: str | None
    """Where remote files come from (None for a local source)."""
    text_field: str | None = field(default=None, metadata=OMIT_IF_NONE)
    """JSONL key holding the text, when not "text" (a folder's JSONL files without it are skipped)."""


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / RAW_DIR


def fetch_shard(task: ShardTask, stage_dir: Path, config: DownloadStageConfig, fetch: DownloadConfig) -> ShardStats:
    """Stage function: fetch one remote file (`task.inputs = (url,)`) into stage_dir/files/..., or
    describe one local file (`task.inputs = (path,)`) in place. A file holds no counted documents yet."""
    (where,) = task.inputs
    stats = ShardStats()
    if config.base_url is None:
        p = Path(where)
        stats.extra = {"files": 1, "bytes": p.stat().st_size, "local": 1}
        return stats
    dest = local_path_for(where, stage_dir / FILES_DIR, fetch.base_url)
    result = _fetch_one(where, dest, fetch, on_bytes=report_progress)
    stats.outputs = [{"path": str(dest.relative_to(stage_dir)), "rows": 0, "bytes": result.bytes,
                      "sha256": result.sha256}]
    stats.extra = {"files": 1, "bytes": result.bytes, "downloaded": int(not result.skipped),
                   "fetched_bytes": 0 if result.skipped else result.bytes}
    return stats


def _task_name(url_or_path: str, index: int, remote: bool, out: Path, base_url: str) -> str:
    """A shard name for a file: its path under raw/files (remote), or its position and name (local)."""
    if remote:
        return str(local_path_for(url_or_path, out / FILES_DIR, base_url).relative_to(out / FILES_DIR)).replace("/", "--")
    return f"{index:05d}-{Path(url_or_path).name}"


def run_download(
    source: str | None,
    num_files: int | None,
    data_dir: str | Path,
    config: DownloadConfig = DownloadConfig(),
    force: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    executor: Executor | None = None,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> dict:
    """The download stage: resolve SOURCE, fetch what is remote, write `DATA/raw/manifest.json` last.

    One task per file, run by `pipeline.stage.run_stage` (`config.workers` processes by default).
    `source`/`num_files` None mean "as last time" (from the existing manifest), else the defaults
    (DEFAULT_SOURCE, DEFAULT_NUM_FILES): so `make tokenizer` after `make corpus SOURCE=x` goes on with x.
    The resolved file list is recorded in the manifest, so a rerun of the same request needs no network
    when every file is in place. Returns the manifest plus a `run` entry (files downloaded and skipped
    in this run, bytes fetched) that is printed but not written.
    A manifest made for another SOURCE or NUM_FILES is refused unless `force`: the files downstream
    stages were built from would change under them. With `force`, the list is replaced; files already
    downloaded stay under raw/files/ as a cache (delete the folder to reclaim the space).
    """
    out = raw_dir(data_dir)
    previous = load_manifest(out) if (out / MANIFEST_NAME).exists() else None
    source, num_files = choose_source(source, num_files, previous)
    if text_field == DEFAULT_TEXT_FIELD and previous is not None \
            and previous.get("config", {}).get("source") == source:  # as last time unless given again
        text_field = previous.get("config", {}).get("text_field") or DEFAULT_TEXT_FIELD
    recorded = _recorded_request(previous, source, num_files, config)
    if recorded is not None:
        kind, urls, paths = recorded  # the same request as last time: no need to fetch the listing again
    else:
        # text_field: a JSONL file of a folder or glob whose first record lacks it is not a document file.
        src = resolve_source(source, num_files, config=config, text_field=text_field)
        kind, urls, paths = src.kind, list(src.urls), [str(p.resolve()) for p in src.paths]
    remote = bool(urls)
    stage_config = DownloadStageConfig(source=source, num_files=num_files if kind == "crawl" else None,
                                       base_url=config.base_url if remote else None,
                                       text_field=None if text_field == DEFAULT_TEXT_FIELD else text_field)
    items = urls if remote else paths
    tasks = [ShardTask(_task_name(x, i, remote, out, config.base_url), (x,)) for i, x in enumerate(items)]
    seen: dict[str, str] = {}
    for t in tasks:
        if t.name in seen:
            raise InputError(f"URLs {seen[t.name]} and {t.inputs[0]} map to the same file; rename one")
        seen[t.name] = t.inputs[0]
    run = {"downloaded": 0, "skipped": 0, "local": 0 if remote else len(items), "fetched_bytes": 0}

    def count(receipt: dict) -> None:
        run["downloaded"] += receipt["extra"].get("downloaded", 0)
        run["fetched_bytes"] += receipt["extra"].get("fetched_bytes", 0)

    def finalize(stage_dir: Path, manifest: dict) -> dict:
        by_name = {s["shard"]: s for s in manifest["shards"]}
        files = []
        for t in tasks:
            shard = by_name[t.name]
            if remote:
                o = shard["outputs"][0]
                files.append({"path": str((stage_dir / o["path"]).resolve()), "url": t.inputs[0],
                              "bytes": o["bytes"], "sha256": o["sha256"]})
            else:
                files.append({"path": t.inputs[0], "url": None, "bytes": shard["extra"]["bytes"]})
        manifest["source"] = source
        manifest["source_kind"] = kind
        manifest["files"] = files
        manifest["totals"]["files"] = len(files)
        manifest["totals"]["bytes"] = sum(f["bytes"] for f in files)
        return manifest

    if executor is None or not remote:
        executor = LocalExecutor(workers=config.workers if remote else 1)
    manifest = run_stage(
        STAGE, out, stage_config, tasks, partial(fetch_shard, fetch=config), force=force,
        on_progress=on_progress, finalize=finalize, executor=executor, on_shard=count,
        keep_outputs_on_force=True,
        refusal_hint=(f"It holds the file list of {_describe(previous)}, not {_describe(config_dict(stage_config))}. "
                      "To go on with the files already there, leave SOURCE and NUM_FILES out (or pass the same "
                      "values again). To switch, rerun with --force: the file list is replaced, files already "
                      "downloaded are kept as a cache." if previous else ""),
    )
    run["skipped"] = len(tasks) - run["downloaded"] if remote else 0
    run["elapsed_s"] = manifest.get("elapsed_s", 0.0)
    log.info("download: %d files (%d downloaded, %d already there), %d bytes fetched",
             len(tasks), run["downloaded"], run["skipped"], run["fetched_bytes"])
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


def _recorded_request(previous: dict | None, source: str, num_files: int,
                      config: DownloadConfig) -> tuple[str, list[str], list[str]] | None:
    """(kind, urls, paths) recorded by the previous manifest if it answers this very crawl request.

    Only a crawl id is worth remembering (its listing is a network request); local folders and globs
    are listed again, so new or removed files are seen.
    """
    if previous is None or not CRAWL_ID_RE.match(source):
        return None
    want = {"source": source, "num_files": num_files, "base_url": config.base_url}
    if previous.get("config") != want or previous.get("source_kind") != "crawl":
        return None
    return "crawl", [f["url"] for f in previous.get("files", [])], []


def _describe(stage_config: dict | None) -> str:
    stage_config = (stage_config or {}).get("config", stage_config) or {}
    text = f"SOURCE={stage_config.get('source')!r}"
    if stage_config.get("num_files") is not None:
        text += f" NUM_FILES={stage_config['num_files']}"
    return text


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
