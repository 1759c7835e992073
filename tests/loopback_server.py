"""A loopback HTTP file server for download tests (no network): Range requests, and scripted trouble.

Each served file can be told to answer 503 the first N times, drop the connection after K bytes the
first N times, ignore Range headers, or be missing (404). Every request is logged with its Range header
so tests can assert that a resume really asked for the missing bytes.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    """One file and how the server misbehaves when asked for it."""

    data: bytes
    fail_503: int = 0
    """Answer 503 to this many requests first."""
    drop_after_bytes: int | None = None
    """Close the connection after sending this many body bytes ..."""
    drop_times: int = 0
    """... on this many requests first."""
    ignore_range: bool = False
    """Answer 200 with the whole file even when a Range is asked for."""


@dataclass
class LoopbackServer:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, data: bytes, **trouble) -> str:
        """Serve `data` at `path` (leading slash optional); return its URL."""
        path = "/" + path.lstrip("/")
        self.files[path] = Served(data, **trouble)
        return self.url + path

    def requests_for(self, path: str) -> list[str | None]:
        path = "/" + path.lstrip("/")
        return [rng for p, rng in self.requests if p == path]


def start_server() -> tuple[LoopbackServer, ThreadingHTTPServer]:
    state = LoopbackServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            rng = self.headers.get("Range")
            with state._lock:
                state.requests.append((self.path, rng))
                served = state.files.get(self.path)
                if served is not None and served.fail_503 > 0:
                    served.fail_503 -= 1
                    fail = True
                else:
                    fail = False
                drop = False
                if served is not None and served.drop_times > 0 and served.drop_after_bytes is not None:
                    served.drop_times -= 1
                    drop = True
            if served is None:
                self._answer(404, b"not found")
                return
            if fail:
                self._answer(503, b"slow down", {"Retry-After": "0"})
                return
            data, start = served.data, 0
            m = re.match(r"bytes=(\d+)-$", rng or "")
            if m and not served.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    self._answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                status = 206
                extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            else:
                status, extra = 200, {}
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if drop:
                self.wfile.write(body[: served.drop_after_bytes])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            """A client that hangs up early (the point of some tests) is not an error worth printing."""
            import sys

            if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                super().handle_error(request, client_address)

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return state, server
