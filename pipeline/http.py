"""HTTP fetching with retries: the config, a session whose adapter retries, and `fetch_bytes`.

Shared by `pipeline.sources` (a crawl's path listing) and `pipeline.download` (the files themselves),
so that neither imports the other's stage code (no import cycle).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NameResolutionError
from urllib3.util.retry import Retry

from pipeline.errors import ConfigError, PipelineError

DEFAULT_BASE_URL = "https://data.commoncrawl.org"
#: HTTP answers worth retrying: rate limiting and server-side trouble.
RETRY_STATUSES = (429, 500, 502, 503, 504)
_USER_AGENT = "crawlgpt-download/0.1 (+https://github.com/; research data pipeline)"
#: The bundled development crawl, offered as a local SOURCE when the network cannot be reached.
_SHARED_CRAWL = Path("../shared/data/crawl-dev")

log = logging.getLogger(__name__)


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


# --- HTTP session ----------------------------------------------------------------------------------

_local = threading.local()


class OneLineRetry(Retry):
    """urllib3's Retry, except that a name that does not resolve is not retried (no network, or a wrong
    host: waiting will not fix it) and that each retry logs one short line of ours (urllib3's own
    warning, a full exception repr per retry, is silenced in `make_session`)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if isinstance(error, NameResolutionError):
            raise MaxRetryError(_pool, url, error) from error
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        where = f"{_pool.scheme}://{_pool.host}:{_pool.port}" if _pool is not None else ""
        why = f"HTTP {response.status}" if response is not None and error is None else _short(error)
        log.warning("%s%s: %s; retry %d of %d in %.1fs", where, url or "", why, len(retry.history),
                    len(retry.history) + (retry.total or 0), retry.get_backoff_time())
        return retry


def _short(error: BaseException | None) -> str:
    """A one-line reason for a failed connection: the innermost message, without pool and object reprs."""
    if error is None:
        return "no answer"
    reason = getattr(error, "reason", None) or error
    text = str(reason).split(": ", 1)[-1] if ": " in str(reason) else str(reason)
    return f"{type(error).__name__} ({text[:120]})"


def unresolved_host(exc: BaseException) -> str | None:
    """The host name whose look-up failed somewhere in `exc`'s chain of causes, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NameResolutionError):
            return getattr(exc, "_host", None) or getattr(getattr(exc, "conn", None), "host", None) or "the server"
        if isinstance(exc, MaxRetryError) and exc.reason is not None:
            exc = exc.reason
            continue
        nested = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = nested or exc.__cause__ or exc.__context__
    return None


def unreachable_message(url: str, host: str | None = None) -> str:
    """One line: the crawl could not be reached, and how to run on local files instead."""
    host = host if host and host != "the server" else urlsplit(url).hostname or url
    shared = f", e.g. SOURCE={_SHARED_CRAWL} (the bundled development crawl)" if _SHARED_CRAWL.is_dir() else ""
    return (f"cannot reach {host}: the name does not resolve (no network or no DNS here?), so {url} cannot be "
            f"fetched. To run on local files instead: SOURCE='path/to/*.warc.wet.gz'{shared}.")


def make_session(config: DownloadConfig) -> requests.Session:
    """A session whose adapter retries refused connections and 429/5xx answers with backoff.

    Dropped connections in the middle of a body are not covered by urllib3's Retry; `_fetch_one`
    handles those by resuming with a Range request.
    """
    retry = OneLineRetry(
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
    # urllib3 logs a warning with a full exception repr for each retry; OneLineRetry logs one line instead.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=max(4, config.workers))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = _USER_AGENT
    return session


def thread_session(config: DownloadConfig) -> requests.Session:
    """One session per thread (requests sessions are not documented as thread-safe)."""
    key = (config.retries, config.backoff_s, config.backoff_max_s, config.workers)
    if getattr(_local, "key", None) != key:
        _local.session = make_session(config)
        _local.key = key
    return _local.session


def fetch_bytes(url: str, config: DownloadConfig, what: str = "") -> bytes:
    """GET a small file (a path listing) into memory, with the same retries; DownloadError on failure."""
    session = thread_session(config)
    try:
        resp = session.get(url, timeout=(config.connect_timeout_s, config.read_timeout_s))
    except requests.RequestException as exc:
        host = unresolved_host(exc)
        if host is not None:
            raise DownloadError(unreachable_message(url, host)) from exc
        reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else exc
        raise DownloadError(f"cannot fetch {url}: {_short(reason)} after {config.retries} retries. "
                            "Check the network and the URL.") from exc
    if resp.status_code == 404:
        raise DownloadError(f"{url} not found (HTTP 404){what}")
    if resp.status_code != 200:
        raise DownloadError(f"cannot fetch {url}: HTTP {resp.status_code} after {config.retries} retries")
    return resp.content
