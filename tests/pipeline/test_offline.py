"""A new user without the network: a host name that does not resolve fails at once, in one line that says how to
run on local files; transient trouble (503, a refused connection) is retried with one short line per retry."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from pipeline.download import DownloadConfig, DownloadError, download, run_download
from test_download import gzip_members

NOWHERE = "http://nonexistent.invalid"  # .invalid never resolves (RFC 2606)


def test_an_unresolvable_crawl_host_fails_at_once_with_the_local_source_hint(tmp_path, caplog):
    config = DownloadConfig(base_url=NOWHERE, retries=5, backoff_s=5.0)  # five slow retries, were they tried
    with caplog.at_level("WARNING"), pytest.raises(DownloadError) as err:
        run_download("CC-MAIN-2024-51", 1, tmp_path, config)
    message = str(err.value)
    assert "\n" not in message
    assert "cannot reach nonexistent.invalid" in message and "SOURCE=" in message
    assert "retry" not in caplog.text.lower() and "NameResolutionError" not in message


def test_an_unresolvable_file_host_fails_at_once_without_retries(tmp_path, caplog):
    config = DownloadConfig(retries=5, backoff_s=5.0)
    with caplog.at_level("WARNING"), pytest.raises(DownloadError, match="cannot reach nonexistent.invalid"):
        download([f"{NOWHERE}/crawl-data/x.warc.wet.gz"], tmp_path, config)
    assert "retry" not in caplog.text.lower()


def test_the_cli_prints_one_line_and_no_traceback(tmp_path):
    from cli import main

    result = CliRunner().invoke(main, ["download", "--data", str(tmp_path), "--source", "CC-MAIN-2024-51",
                                       "--base-url", NOWHERE])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach nonexistent.invalid")
    assert "Traceback" not in result.output


def test_each_retry_of_a_503_is_one_short_line_of_ours(server, tmp_path, caplog):
    url = server.add("a.warc.wet.gz", gzip_members(1), fail_503=2)
    config = DownloadConfig(retries=3, backoff_s=0.001, backoff_max_s=0.01, base_url=server.url)
    with caplog.at_level("WARNING"):
        download([url], tmp_path, config)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.name for r in retries] == ["pipeline.http", "pipeline.http"]
    assert "HTTP 503; retry 1 of 3" in retries[0].getMessage() and "retry 2 of 3" in retries[1].getMessage()
    assert "Retrying (Retry(" not in caplog.text  # urllib3's own warning, a full repr per retry


def test_a_refused_connection_is_retried_then_ends_in_one_line(tmp_path, caplog):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = DownloadConfig(retries=2, backoff_s=0.001, backoff_max_s=0.01, base_url=f"http://127.0.0.1:{port}")
    with caplog.at_level("WARNING"), pytest.raises(DownloadError) as err:
        run_download("CC-MAIN-2024-51", 1, tmp_path, config)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and all("\n" not in m and "Connection" in m for m in retries)
    message = str(err.value)
    assert "\n" not in message and "after 2 retries" in message and "HTTPConnectionPool(" not in message
