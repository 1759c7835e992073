"""An unreachable Ray head is a one-line crawlgpt error within the connect timeout, never minutes of
Ray's own retries (no Ray is started here)."""

from __future__ import annotations

import socket
import time

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from pipeline.ray_executor import RayConnectError, RayExecutor, check_reachable, head_endpoint  # noqa: E402


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing listens there


def test_head_endpoints_of_the_address_forms():
    assert head_endpoint("10.0.0.5:6380") == ("10.0.0.5", 6380)
    assert head_endpoint("headnode") == ("headnode", 6379)
    assert head_endpoint("ray://10.0.0.5") == ("10.0.0.5", 10001)
    assert head_endpoint("[::1]:7000") == ("::1", 7000)
    assert head_endpoint("auto") is None
    with pytest.raises(RayConnectError, match="not host:port"):
        head_endpoint("host:port")


def test_an_unreachable_head_fails_fast_without_starting_ray():
    start, joined = time.monotonic(), ray.is_initialized()  # an earlier test may share a session cluster
    with pytest.raises(RayConnectError, match=r"cannot reach the Ray head at 127\.0\.0\.1:\d+ .*ray start --head"):
        RayExecutor(address=f"127.0.0.1:{closed_port()}", connect_timeout_s=2).connect()
    assert time.monotonic() - start < 10 and ray.is_initialized() == joined


def test_a_listening_port_passes_the_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=2)


def test_a_stage_command_with_an_unreachable_ray_address_prints_one_line(tmp_path):
    from cli import main
    from corpus_fixtures import make_corpus, synthetic_docs

    joined = ray.is_initialized()  # an earlier test may share a session cluster
    make_corpus(tmp_path, {"a": synthetic_docs(5, 1, "a")})
    (tmp_path / "bench.jsonl").write_text('{"text": "a b c d e f g h i j k l m n o"}\n')
    result = CliRunner().invoke(main, ["decontaminate", "--data", str(tmp_path), "--benchmark",
                                       str(tmp_path / "bench.jsonl"), "--executor", "ray", "--ray-address",
                                       f"127.0.0.1:{closed_port()}"])
    assert result.exit_code == 1 and "cannot reach the Ray head" in result.output, result.output
    assert "Traceback" not in result.output and ray.is_initialized() == joined
