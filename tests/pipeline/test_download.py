"""The download stage against a loopback HTTP server: retries, resume, integrity, atomic placement."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.download import (
    DEFAULT_NUM_FILES,
    DEFAULT_SOURCE,
    DownloadConfig,
    choose_source,
    DownloadError,
    download,
    load_raw_files,
    local_path_for,
    run_download,
)
from pipeline.errors import ConfigError, InputError, StageConfigChanged

CRAWL = "CC-MAIN-2099-01"


def gzip_members(n_members: int, seed: int = 0, member_bytes: int = 50_000) -> bytes:
    """A multi-member gzip file like a Common Crawl WET file, of incompressible-ish text."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    out = b""
    for _ in range(n_members):
        text = " ".join(rng.choice(words) for _ in range(member_bytes // 6))
        out += gzip.compress(text.encode(), mtime=0)  # deterministic: the header would hold the current time
    return out



def fast(server, **kw) -> DownloadConfig:
    """Tiny backoff so retry tests take milliseconds."""
    kw.setdefault("retries", 3)
    return DownloadConfig(backoff_s=0.001, backoff_max_s=0.01, read_timeout_s=5, base_url=server.url, **kw)


def serve_crawl(server, n_files: int) -> list[bytes]:
    files = [gzip_members(3, seed=i) for i in range(n_files)]
    paths = [f"crawl-data/{CRAWL}/segments/1/wet/{CRAWL}-{i:05d}.warc.wet.gz" for i in range(n_files)]
    for p, data in zip(paths, files):
        server.add(p, data)
    server.add(f"crawl-data/{CRAWL}/wet.paths.gz", gzip.compress(("\n".join(paths) + "\n").encode()))
    return files


def test_downloads_file_to_cc_path_with_matching_bytes_and_sha256(server, tmp_path):
    data = gzip_members(4)
    url = server.add(f"crawl-data/{CRAWL}/x.warc.wet.gz", data)
    [res] = download([url], tmp_path, fast(server))
    assert res.path == tmp_path / "crawl-data" / CRAWL / "x.warc.wet.gz"
    assert res.path.read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.bytes == len(data) and not res.skipped


def test_retries_after_503s_then_succeeds(server, tmp_path):
    data = gzip_members(2)
    url = server.add("a.warc.wet.gz", data, fail_503=2)
    [res] = download([url], tmp_path, fast(server, retries=3))
    assert res.path.read_bytes() == data
    assert len(server.requests_for("a.warc.wet.gz")) == 3


def test_persistent_503_ends_with_error_naming_url_and_no_file(server, tmp_path):
    url = server.add("b.warc.wet.gz", gzip_members(1), fail_503=100)
    with pytest.raises(DownloadError, match=r"b\.warc\.wet\.gz.*HTTP 503"):
        download([url], tmp_path, fast(server, retries=2))
    assert len(server.requests_for("b.warc.wet.gz")) == 3  # first try + 2 retries, not 3 x 3
    assert not local_path_for(url, tmp_path, server.url).exists()


def test_404_error_names_the_url(server, tmp_path):
    url = server.url + "/missing/file.warc.wet.gz"
    with pytest.raises(DownloadError) as err:
        download([url], tmp_path, fast(server))
    assert url in str(err.value) and "404" in str(err.value)
    assert len(server.requests) == 1  # a 404 is not retried


def test_resumes_partial_file_with_range_request(server, tmp_path):
    data = gzip_members(4)
    url = server.add("c.warc.wet.gz", data)
    dest = local_path_for(url, tmp_path, server.url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    half = len(data) // 2
    dest.with_name(dest.name + ".part").write_bytes(data[:half])
    [res] = download([url], tmp_path, fast(server))
    assert server.requests_for("c.warc.wet.gz") == [f"bytes={half}-"]
    assert res.path.read_bytes() == data
    assert not dest.with_name(dest.name + ".part").exists()


def test_connection_dropped_mid_file_resumes_from_where_it_stopped(server, tmp_path):
    data = gzip_members(4)
    url = server.add("d.warc.wet.gz", data, drop_after_bytes=30_000, drop_times=1)
    received = []
    [res] = download([url], tmp_path, fast(server), on_bytes=received.append)
    assert server.requests_for("d.warc.wet.gz") == [None, "bytes=30000-"]
    assert res.path.read_bytes() == data
    assert sum(received) == len(data)  # nothing fetched twice


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = gzip_members(3)
    url = server.add("e.warc.wet.gz", data, ignore_range=True)
    dest = local_path_for(url, tmp_path, server.url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_name(dest.name + ".part").write_bytes(data[:1000])
    [res] = download([url], tmp_path, fast(server))
    assert server.requests_for("e.warc.wet.gz") == ["bytes=1000-"]
    assert res.path.read_bytes() == data  # not the first 1000 bytes twice


def test_truncated_gzip_download_is_deleted_retried_then_a_clear_error(server, tmp_path):
    data = gzip_members(3)
    url = server.add("f.warc.wet.gz", data[: len(data) - 100])  # the server itself has a cut file
    with pytest.raises(DownloadError, match=r"f\.warc\.wet\.gz.*truncated_gzip"):
        download([url], tmp_path, fast(server, retries=2))
    assert len(server.requests_for("f.warc.wet.gz")) == 3
    dest = local_path_for(url, tmp_path, server.url)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_gzip_check_can_be_turned_off(server, tmp_path):
    cut = gzip_members(3)[:-100]
    url = server.add("g.warc.wet.gz", cut)
    [res] = download([url], tmp_path, fast(server, verify_gzip=False))
    assert res.path.read_bytes() == cut


def test_a_failed_transfer_leaves_no_file_at_the_final_name(server, tmp_path):
    data = gzip_members(3)
    url = server.add("h.warc.wet.gz", data, drop_after_bytes=10_000, drop_times=100)
    with pytest.raises(DownloadError, match="h.warc.wet.gz"):
        download([url], tmp_path, fast(server, retries=1))
    dest = local_path_for(url, tmp_path, server.url)
    assert not dest.exists()
    part = dest.with_name(dest.name + ".part")
    assert part.exists() and data.startswith(part.read_bytes())  # kept for the next run to resume


def test_complete_files_are_skipped_without_a_request(server, tmp_path):
    data = gzip_members(2)
    url = server.add("i.warc.wet.gz", data)
    download([url], tmp_path, fast(server))
    n = len(server.requests)
    [res] = download([url], tmp_path, fast(server))
    assert res.skipped and len(server.requests) == n
    assert res.sha256 == hashlib.sha256(data).hexdigest()


def test_parallel_downloads_return_results_in_input_order(server, tmp_path):
    urls = [server.add(f"p/{i}.warc.wet.gz", gzip_members(1, seed=i)) for i in range(6)]
    results = download(urls, tmp_path, fast(server, workers=3))
    assert [r.url for r in results] == urls
    assert all(r.path.read_bytes() == gzip_members(1, seed=i) for i, r in enumerate(results))


def test_config_rejects_bad_values_naming_the_option():
    with pytest.raises(ConfigError, match="workers"):
        DownloadConfig(workers=0)
    with pytest.raises(ConfigError, match="base_url"):
        DownloadConfig(base_url="ftp://x")


# --- the stage ---------------------------------------------------------------------------------------


def test_crawl_id_stage_downloads_first_num_files_and_writes_manifest(server, tmp_path):
    files = serve_crawl(server, 3)
    m = run_download(CRAWL, 2, tmp_path, fast(server))
    assert m["stage"] == "download" and m["source"] == CRAWL
    assert [f["bytes"] for f in m["files"]] == [len(files[0]), len(files[1])]
    assert [f["sha256"] for f in m["files"]] == [hashlib.sha256(d).hexdigest() for d in files[:2]]
    assert all(f["url"].startswith(server.url + f"/crawl-data/{CRAWL}/") for f in m["files"])
    on_disk = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert on_disk["files"] == m["files"] and "run" not in on_disk
    assert load_raw_files(tmp_path) == [tmp_path.resolve() / "raw" / "files" / f["url"].split("/", 3)[3]
                                        for f in m["files"]]
    assert m["run"]["downloaded"] == 2 and m["run"]["fetched_bytes"] == len(files[0]) + len(files[1])


def test_rerun_skips_complete_files_and_keeps_manifest_identical(server, tmp_path):
    serve_crawl(server, 2)
    run_download(CRAWL, 2, tmp_path, fast(server))
    before = (tmp_path / "raw" / "manifest.json").read_bytes()
    m = run_download(CRAWL, 2, tmp_path, fast(server))
    assert m["run"]["skipped"] == 2 and m["run"]["fetched_bytes"] == 0
    assert (tmp_path / "raw" / "manifest.json").read_bytes() == before


def test_rerun_of_a_complete_crawl_needs_no_network(server, tmp_path):
    serve_crawl(server, 2)
    first = run_download(CRAWL, 2, tmp_path, fast(server))
    server.files.clear()  # every request would now be a 404
    n = len(server.requests)
    again = run_download(CRAWL, 2, tmp_path, fast(server))
    assert len(server.requests) == n and again["files"] == first["files"] and again["run"]["skipped"] == 2


def test_a_deleted_file_is_fetched_again_on_rerun(server, tmp_path):
    serve_crawl(server, 2)
    first = run_download(CRAWL, 2, tmp_path, fast(server))
    Path(first["files"][1]["path"]).unlink()
    again = run_download(CRAWL, 2, tmp_path, fast(server))
    assert again["files"] == first["files"] and again["run"]["downloaded"] == 1


def test_omitted_source_and_num_files_continue_with_the_previous_ones(server, tmp_path):
    serve_crawl(server, 3)
    run_download(CRAWL, 3, tmp_path, fast(server))
    m = run_download(None, None, tmp_path, fast(server))
    assert m["source"] == CRAWL and len(m["files"]) == 3
    assert choose_source(None, None, None) == (DEFAULT_SOURCE, DEFAULT_NUM_FILES)
    assert choose_source("x", None, {"config": {"source": "y", "num_files": 7}}) == ("x", DEFAULT_NUM_FILES)


def test_changed_num_files_is_refused_without_force_then_replaced_with_force(server, tmp_path):
    serve_crawl(server, 3)
    run_download(CRAWL, 1, tmp_path, fast(server))
    with pytest.raises(StageConfigChanged, match=r"NUM_FILES=1.*NUM_FILES=3.*--force"):
        run_download(CRAWL, 3, tmp_path, fast(server))
    m = run_download(CRAWL, 3, tmp_path, fast(server), force=True)
    assert len(m["files"]) == 3 and m["run"]["skipped"] == 1


def test_wrong_crawl_id_says_the_id_is_probably_wrong(server, tmp_path):
    with pytest.raises(DownloadError, match=r"wet\.paths\.gz not found \(HTTP 404\).*crawl id CC-MAIN-2099-02 is probably wrong"):
        run_download("CC-MAIN-2099-02", 1, tmp_path, fast(server))
    assert not (tmp_path / "raw" / "manifest.json").exists()


def test_local_source_lists_files_in_place_without_copying(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "b.jsonl").write_text('{"text": "b"}\n')
    (src / "a.txt").write_text("a document")
    m = run_download(str(src), 2, tmp_path / "data")
    assert [f["path"] for f in m["files"]] == [str((src / "a.txt").resolve()), str((src / "b.jsonl").resolve())]
    assert all(f["url"] is None for f in m["files"])
    assert not (tmp_path / "data" / "raw" / "files").exists()
    assert load_raw_files(tmp_path / "data") == [(src / "a.txt").resolve(), (src / "b.jsonl").resolve()]


def test_load_raw_files_before_download_names_the_make_target(tmp_path):
    with pytest.raises(InputError, match="make download"):
        load_raw_files(tmp_path)


def test_load_raw_files_detects_a_file_changed_since(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("a document")
    run_download(str(src), 1, tmp_path / "data")
    (src / "a.txt").write_text("a longer document now")
    with pytest.raises(InputError, match="changed since"):
        load_raw_files(tmp_path / "data")


def test_cli_downloads_and_prints_summary(server, tmp_path):
    from cli import main

    serve_crawl(server, 2)
    args = ["download", "--source", CRAWL, "--num-files", "2", "--data", str(tmp_path), "--base-url", server.url,
            "--retries", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "downloaded now" in result.output and "2" in result.output
    again = CliRunner().invoke(main, args)
    assert "already complete (skipped)" in again.output
    refused = CliRunner().invoke(main, args[:4] + ["1"] + args[5:])
    assert refused.exit_code != 0 and "--force" in refused.output
    as_before = CliRunner().invoke(main, ["download", "--data", str(tmp_path), "--base-url", server.url])
    assert as_before.exit_code == 0 and CRAWL in as_before.output


def test_one_failing_file_stops_the_others_and_keeps_finished_ones(server, tmp_path):
    good = server.add("ok.warc.wet.gz", gzip_members(1))
    missing = server.url + "/gone.warc.wet.gz"
    with pytest.raises(DownloadError, match="gone.warc.wet.gz"):
        download([good, missing], tmp_path, fast(server, workers=1))
    assert local_path_for(good, tmp_path, server.url).exists()


# --- outside input never chooses a path outside the download folder -----------------------------

ESCAPES = [
    "%2e%2e/%2e%2e/%2e%2e/escape/evil.warc.wet.gz",  # encoded
    ".%2e/.%2e/escape/evil.warc.wet.gz",  # mixed
    "%2E%2e/escape/evil.warc.wet.gz",  # upper and lower case
    "%252e%252e/%252e%252e/escape/evil.warc.wet.gz",  # double-encoded
    "a/..%2f..%2f..%2fescape/evil.warc.wet.gz",  # encoded slash
    "a/..%5c..%5c..%5cescape/evil.warc.wet.gz",  # encoded backslash
    "a/..\\..\\escape/evil.warc.wet.gz",  # raw backslash
    "C:%5cescape/evil.warc.wet.gz",  # drive letter
    "%2fetc/escape/evil.warc.wet.gz",  # encoded absolute path
    "x%00/evil.warc.wet.gz",  # NUL
    "..%2e/.../evil.warc.wet.gz",  # dots only
]


@pytest.mark.parametrize("tail", ESCAPES)
@pytest.mark.parametrize("base", ["http://h.example", "https://data.commoncrawl.org"])
def test_local_name_of_a_hostile_url_stays_inside_the_folder(tmp_path, tail, base):
    out = tmp_path / "raw" / "files"
    p = local_path_for(f"{base}/{tail}", out)
    assert out.resolve() in p.resolve().parents
    assert all(part not in ("", ".", "..") and "\\" not in part and "\0" not in part and ":" not in part
               for part in p.relative_to(out).parts)
    assert p.name == "evil.warc.wet.gz"


def test_url_naming_only_dots_is_refused(tmp_path):
    with pytest.raises(InputError, match="cannot make a file name"):
        local_path_for("https://data.commoncrawl.org/%2e%2e/.%2e/", tmp_path)


def test_a_symlink_inside_the_folder_cannot_lead_outside(tmp_path):
    out, outside = tmp_path / "files", tmp_path / "outside"
    (out / "h.example").mkdir(parents=True)
    outside.mkdir()
    (out / "h.example" / "link").symlink_to(outside)
    with pytest.raises(InputError, match="outside"):
        local_path_for("http://h.example/link/evil.warc.wet.gz", out)


def test_traversal_url_is_downloaded_inside_and_an_outside_file_is_not_taken_as_done(server, tmp_path):
    data = gzip_members(1)
    server.add("../../escape/evil.warc.wet.gz", data)  # what requests sends for the encoded form
    out = tmp_path / "deep" / "raw" / "files"
    outside = tmp_path / "deep" / "escape" / "evil.warc.wet.gz"  # where the old naming wrote it
    outside.parent.mkdir(parents=True)
    outside.write_bytes(b"not this")
    [res] = download([server.url + "/%2e%2e/%2e%2e/escape/evil.warc.wet.gz"], out, fast(server))
    assert not res.skipped and out.resolve() in res.path.resolve().parents
    assert res.path.read_bytes() == data
    assert outside.read_bytes() == b"not this"


def test_lid_model_url_download_stays_in_the_models_folder(server, tmp_path):
    from pipeline.filters.models import fetch_model

    server.add("../../escape/lid.bin", b"model bytes")
    models = tmp_path / "data" / "models"
    path = fetch_model(server.url + "/.%2e/%2e%2e/escape/lid.bin", models, "--lid-model")
    assert models.resolve() in path.resolve().parents
    assert not (tmp_path / "escape").exists()
