"""What a SOURCE string resolves to: crawl ids, URL lists, folders, globs, single files, and errors."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from pipeline.download import DownloadConfig, DownloadError
from pipeline.errors import ConfigError, InputError
from pipeline.sources import resolve_source

CRAWL = "CC-MAIN-2099-07"



def config(server) -> DownloadConfig:
    return DownloadConfig(base_url=server.url, retries=1, backoff_s=0.001)


def test_crawl_id_takes_the_first_num_files_of_its_served_wet_paths(server):
    paths = [f"crawl-data/{CRAWL}/segments/s{i}/wet/f{i}.warc.wet.gz" for i in range(5)]
    server.add(f"crawl-data/{CRAWL}/wet.paths.gz", gzip.compress("\n".join(paths).encode()))
    src = resolve_source(CRAWL, 3, config(server))
    assert src.kind == "crawl" and src.num_files == 3
    assert src.urls == tuple(f"{server.url}/{p}" for p in paths[:3])
    assert src.paths == ()
    assert server.requests_for(f"crawl-data/{CRAWL}/wet.paths.gz") == [None]


def test_crawl_id_asking_for_more_files_than_exist_takes_all(server):
    server.add(f"crawl-data/{CRAWL}/wet.paths.gz", gzip.compress(b"crawl-data/a.warc.wet.gz\n"))
    assert len(resolve_source(CRAWL, 10, config(server)).urls) == 1


def test_unknown_crawl_id_error_names_the_listing_and_says_the_id_is_wrong(server):
    with pytest.raises(DownloadError, match=rf"{server.url}/crawl-data/{CRAWL}/wet.paths.gz not found.*probably wrong"):
        resolve_source(CRAWL, 1, config(server))


def test_num_files_below_one_is_a_config_error_naming_the_option(server):
    with pytest.raises(ConfigError, match="num_files"):
        resolve_source(CRAWL, 0, config(server))


def test_url_list_with_comments_and_relative_cc_paths(tmp_path):
    listing = tmp_path / "urls.list"
    listing.write_text(
        "# my files\n\nhttps://example.org/a/x.warc.wet.gz\ncrawl-data/CC-MAIN-2024-51/y.warc.wet.gz\n"
        "/crawl-data/CC-MAIN-2024-51/z.jsonl.zst\nhttps://example.org/a/x.warc.wet.gz\n"
    )
    src = resolve_source(str(listing), 2, DownloadConfig(base_url="http://mirror.test"))
    assert src.kind == "url_list" and src.num_files is None
    assert src.urls == (
        "https://example.org/a/x.warc.wet.gz",
        "http://mirror.test/crawl-data/CC-MAIN-2024-51/y.warc.wet.gz",
        "http://mirror.test/crawl-data/CC-MAIN-2024-51/z.jsonl.zst",
    )


def test_a_txt_file_of_urls_is_a_list_and_a_txt_of_prose_is_a_document(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("https://example.org/x.warc.gz\n")
    prose = tmp_path / "essay.txt"
    prose.write_text("This is an essay, not a list of files.\n")
    assert resolve_source(str(urls), 1).urls == ("https://example.org/x.warc.gz",)
    assert resolve_source(str(prose), 1).paths == (prose,)


def test_cc_listing_file_itself_is_a_url_list(tmp_path):
    listing = tmp_path / "wet.paths.gz"
    listing.write_bytes(gzip.compress(b"crawl-data/C/a.warc.wet.gz\ncrawl-data/C/b.warc.wet.gz\n"))
    src = resolve_source(str(listing), 1)
    assert src.urls == ("https://data.commoncrawl.org/crawl-data/C/a.warc.wet.gz",
                        "https://data.commoncrawl.org/crawl-data/C/b.warc.wet.gz")


def test_url_list_line_that_is_not_a_url_is_named(tmp_path):
    listing = tmp_path / "urls.list"
    listing.write_text("https://example.org/x.warc.gz\nnot a url at all\n")
    with pytest.raises(InputError, match=r"urls\.list:2"):
        resolve_source(str(listing), 1)


def test_url_of_unsupported_type_is_refused(tmp_path):
    listing = tmp_path / "urls.list"
    listing.write_text("https://example.org/page.html\n")
    with pytest.raises(InputError, match=r"page\.html does not name a file of a supported type"):
        resolve_source(str(listing), 1)


def test_directory_lists_supported_files_recursively_sorted_skipping_non_documents(tmp_path, caplog):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    for rel in ("b/2.warc.wet.gz", "a/1.jsonl", "a/0.parquet", "top.txt", "b/x.warc.wat.gz", "a/.hidden.jsonl",
                "notes.md", "b/3.warc.wet.gz.part"):
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "a" / "1.jsonl").write_text(json.dumps({"text": "t"}) + "\n")
    (tmp_path / "labels.jsonl").write_text(json.dumps({"uri": "u", "lang": "en"}) + "\n")
    with caplog.at_level(logging.WARNING):
        src = resolve_source(str(tmp_path), 2)
    rel = [p.relative_to(tmp_path).as_posix() for p in src.paths]
    assert rel == ["a/0.parquet", "a/1.jsonl", "b/2.warc.wet.gz", "top.txt"]
    assert src.kind == "directory" and src.urls == ()
    assert "labels.jsonl" in caplog.text and "WAT" in caplog.text


def test_glob_matches_supported_files_sorted(tmp_path):
    for name in ("b.jsonl.zst", "a.jsonl.zst", "c.csv"):
        (tmp_path / name).write_bytes(b"")
    src = resolve_source(str(tmp_path / "*"), 1)
    assert src.kind == "glob"
    assert [p.name for p in src.paths] == ["a.jsonl.zst", "b.jsonl.zst"]


def test_single_supported_file(tmp_path):
    f = tmp_path / "one.warc.gz"
    f.write_bytes(b"")
    src = resolve_source(str(f), 1)
    assert src.kind == "file" and src.paths == (f,)


def test_single_url():
    src = resolve_source("https://example.org/x/one.warc.wet.gz", 1)
    assert src.kind == "url" and src.urls == ("https://example.org/x/one.warc.wet.gz",)


@pytest.mark.parametrize(
    "source, message",
    [
        ("no/such/thing", r"SOURCE 'no/such/thing' is not a Common Crawl crawl id"),
        ("CC-MAIN-2024-5", r"looks like CC-MAIN-2024-51"),
        ("", r"SOURCE is empty"),
    ],
)
def test_unknown_source_error_names_it(source, message):
    with pytest.raises(InputError, match=message):
        resolve_source(source, 1)


def test_folder_or_glob_without_readable_files_is_an_error_naming_it(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(InputError, match=rf"SOURCE '{tmp_path}' matches no readable file; supported"):
        resolve_source(str(tmp_path), 1)
    with pytest.raises(InputError, match="matches no readable file"):
        resolve_source(str(tmp_path / "*.jsonl"), 1)


def test_crawl_dev_folder_resolves_to_its_six_wet_files(shared_data):
    src = resolve_source(str(shared_data / "crawl-dev"), 2)
    assert [p.name for p in src.paths] == [f"crawl-{i:05d}.warc.wet.gz" for i in range(6)]


def test_a_jsonl_folder_with_another_text_field_is_listed_when_the_field_is_named(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_text(json.dumps({"body": "some text"}) + "\n")
    with pytest.raises(InputError, match=r"1 JSONL file\(s\) skipped.*no 'text' field.*--text-field"):
        resolve_source(str(tmp_path / "docs"), 1)
    src = resolve_source(str(tmp_path / "docs"), 1, text_field="body")
    assert [p.name for p in src.paths] == ["a.jsonl"]
    assert [p.name for p in resolve_source(str(tmp_path / "docs" / "*.jsonl"), 1, text_field="body").paths] == ["a.jsonl"]


def test_download_cli_passes_text_field_to_the_skip_check(tmp_path):
    from click.testing import CliRunner

    from cli import main as cli

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_text(json.dumps({"body": "some text"}) + "\n")
    args = ["download", "--source", str(tmp_path / "docs"), "--data", str(tmp_path / "data")]
    assert CliRunner().invoke(cli, args).exit_code == 1
    result = CliRunner().invoke(cli, [*args, "--text-field", "body"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "data" / "raw" / "manifest.json").read_text())["config"]["text_field"] == "body"


def test_a_deeply_nested_first_jsonl_record_does_not_crash_source_listing(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "deep.jsonl").write_bytes(b'{"m": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n")
    assert [p.name for p in resolve_source(str(tmp_path / "docs"), 1).paths] == ["deep.jsonl"]
