"""Readers: real Common Crawl files read right, and every kind of damage skipped without losing neighbours."""

from __future__ import annotations

import gzip
import json
import random
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.readers import REASONS, SUPPORTED_SUFFIXES, ReaderConfig, Unreadable, read_file

# --- helpers ---------------------------------------------------------------------------------------


def wet_record(text: bytes, url: str = "http://example.org/", rid: str | None = None) -> bytes:
    """One WET `conversion` record, uncompressed, as Common Crawl writes it."""
    rid = rid or str(uuid.uuid4())
    head = (
        "WARC/1.0\r\nWARC-Type: conversion\r\n"
        f"WARC-Target-URI: {url}\r\nWARC-Date: 2024-05-18T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{rid}>\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(text)}\r\n\r\n"
    ).encode()
    return head + text + b"\r\n\r\n"


WARCINFO = (
    b"WARC/1.0\r\nWARC-Type: warcinfo\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000000>\r\n"
    b"Content-Type: application/warc-fields\r\nContent-Length: 14\r\n\r\nsoftware: test\r\n\r\n"
)


def good_text(i: int) -> bytes:
    rng = random.Random(i)
    return " ".join(f"word{rng.randint(0, 9999)}" for _ in range(300)).encode()


def wet_file(path: Path, payloads: list[bytes]) -> list[str]:
    """Write a WET file, one gzip member per record (warcinfo first); return the record ids."""
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(payloads))]
    members = [gzip.compress(WARCINFO)] + [
        gzip.compress(wet_record(p, f"http://example.org/{i}", rid)) for i, (p, rid) in enumerate(zip(payloads, ids))
    ]
    path.write_bytes(b"".join(members))
    return ids


def split(items) -> tuple[list[Document], list[Unreadable]]:
    docs = [i for i in items if isinstance(i, Document)]
    bad = [i for i in items if isinstance(i, Unreadable)]
    assert len(docs) + len(bad) == len(items)
    return docs, bad


def read_all(path, config: ReaderConfig = ReaderConfig()) -> list:
    return list(read_file(path, config))


def sequence(items) -> list[str]:
    """Documents by id, unreadables by reason, in order."""
    return [i.reason if isinstance(i, Unreadable) else i.id for i in items]


# --- real Common Crawl files -----------------------------------------------------------------------


def test_crawl_dev_reads_every_record_once_with_unique_ids_and_labelled_urls(shared_data):
    files = sorted((shared_data / "crawl-dev").glob("*.warc.wet.gz"))
    assert len(files) == 6
    docs = []
    for f in files:
        d, bad = split(read_all(f))
        assert bad == []
        assert all(doc.source == f.name for doc in d)
        docs += d
    assert len(docs) == 13_139
    assert len({d.id for d in docs}) == 13_139
    labels = [json.loads(line) for line in (shared_data / "crawl-dev" / "labels.jsonl").read_text().splitlines()]
    assert Counter((d.source, d.url) for d in docs) == Counter((lab["shard"], lab["uri"]) for lab in labels)
    assert all(d.text.strip() and isinstance(d.meta["offset"], int) and d.meta["warc_date"] for d in docs)


def test_crawl_dev_ids_are_warc_record_ids_without_urn_wrapping(shared_data):
    first = next(i for i in read_file(shared_data / "crawl-dev" / "crawl-00000.warc.wet.gz"))
    assert first.id == "ef9b116a-42e5-4256-9875-ef2453fb9595"  # <urn:uuid:ef9b...> in the file
    assert first.url == "http://4ec72a6041.example.org/bf44e8b0"
    assert first.text.startswith("Sophie Marguerite Oxholm née Bech")


def test_real_warc_html_responses_become_nonempty_text(shared_data):
    docs, bad = split(read_all(shared_data / "web" / "cc-main-2020-34-excerpt.warc.gz"))
    assert bad == [] and len(docs) == 16  # 16 pages; request/metadata/warcinfo records are not documents
    assert all(d.text.strip() and d.url.startswith("http") for d in docs)
    assert len({d.id for d in docs}) == 16
    assert not any("</div>" in d.text or "<body" in d.text for d in docs)  # text, not markup
    [page] = read_all(shared_data / "web" / "cc-main-2024-22-one-page.warc.gz")
    assert page.url == "https://an.wikipedia.org/wiki/Escopete"
    assert "Escopete" in page.text and "<div" not in page.text and "</" not in page.text


def test_real_wet_page_carries_identified_language(shared_data):
    [page] = read_all(shared_data / "web" / "cc-main-2024-22-one-page.warc.wet.gz")
    assert page.url == "https://an.wikipedia.org/wiki/Escopete"
    assert page.meta["language"] == "spa" and "Escopete" in page.text


def test_real_wat_file_yields_no_documents_only_counted_metadata(shared_data):
    items = read_all(shared_data / "web" / "cc-main-2024-22-one-page.warc.wat.gz")
    assert [(type(i), i.reason) for i in items] == [(Unreadable, "wat_metadata")]


def test_reading_twice_gives_the_same_ids(shared_data):
    f = shared_data / "web" / "cc-main-2020-34-excerpt.warc.gz"
    assert [d.id for d in read_file(f)] == [d.id for d in read_file(f)]


# --- damaged WARC/WET files -------------------------------------------------------------------------


@pytest.fixture()
def wet(tmp_path) -> tuple[Path, list[str]]:
    path = tmp_path / "good.warc.wet.gz"
    ids = wet_file(path, [good_text(i) for i in range(20)])
    return path, ids


def test_truncated_gzip_yields_records_before_the_cut_then_truncated_gzip(wet, tmp_path):
    path, ids = wet
    data = path.read_bytes()
    cut = tmp_path / "cut.warc.wet.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    items = read_all(cut)
    docs, bad = split(items)
    assert [d.id for d in docs] == ids[: len(docs)] and 5 < len(docs) < 20
    assert [b.reason for b in bad] == ["truncated_gzip"] and isinstance(items[-1], Unreadable)
    assert bad[0].location.startswith("cut.warc.wet.gz@offset ")


def test_any_cut_point_yields_an_exact_prefix_of_documents(wet, tmp_path):
    """Invariant: wherever a download stops, no partial document is ever yielded."""
    path, ids = wet
    data = path.read_bytes()
    rng = random.Random(0)
    cut = tmp_path / "cut.warc.wet.gz"
    for n in sorted(rng.sample(range(1, len(data)), 40)):
        cut.write_bytes(data[:n])
        docs, bad = split(read_all(cut))
        assert [d.id for d in docs] == ids[: len(docs)]
        assert all(d.text == good_text(i).decode() for i, d in enumerate(docs))
        assert [b.reason for b in bad] in ([], ["truncated_gzip"])


def test_random_damage_never_raises_and_never_yields_an_altered_document(wet, tmp_path):
    """Invariant under flipped, deleted and inserted bytes: every document yielded is an original record,
    byte for byte (gzip CRCs are checked before a record from a damaged member is yielded)."""
    path, ids = wet
    data = path.read_bytes()
    originals = {rid: good_text(i).decode() for i, rid in enumerate(ids)}
    rng = random.Random(3)
    damaged = tmp_path / "damaged.warc.wet.gz"
    for trial in range(300):
        d = bytearray(data)
        at = rng.randrange(len(d))
        if trial % 3 == 0:
            d[at] ^= rng.randrange(1, 256)
        elif trial % 3 == 1:
            del d[at: at + rng.randint(1, 2000)]
        else:
            d[at:at] = rng.randbytes(rng.randint(1, 500))
        damaged.write_bytes(bytes(d))
        docs, bad = split(read_all(damaged))
        assert all(originals.get(doc.id) == doc.text for doc in docs), trial
        assert len({doc.id for doc in docs}) == len(docs)
        assert {b.reason for b in bad} <= set(REASONS)


def test_not_warc_bytes_are_reported_once_and_neighbours_kept(wet, tmp_path):
    path, ids = wet
    data = path.read_bytes()
    member_5 = _member_offsets(data)[6]  # offsets include the warcinfo member first
    bad_path = tmp_path / "mixed.warc.wet.gz"
    bad_path.write_bytes(data[:member_5] + gzip.compress(b"<html>not a warc record</html>\n") + data[member_5:])
    assert sequence(read_all(bad_path)) == ids[:5] + ["not_warc"] + ids[5:]


def test_garbage_between_members_is_corrupt_gzip_and_neighbours_kept(wet, tmp_path):
    path, ids = wet
    data = path.read_bytes()
    at = _member_offsets(data)[11]
    bad_path = tmp_path / "garbage.warc.wet.gz"
    bad_path.write_bytes(data[:at] + bytes(random.Random(1).randrange(256) for _ in range(5000)) + data[at:])
    items = read_all(bad_path)
    assert sequence(items) == ids[:10] + ["corrupt_gzip"] + ids[10:]
    assert items[10].location == f"garbage.warc.wet.gz@offset {at}"


def test_damaged_member_loses_only_its_record(wet, tmp_path):
    path, ids = wet
    data = bytearray(path.read_bytes())
    offsets = _member_offsets(bytes(data))
    for i in range(offsets[8] + 20, offsets[8] + 60):  # inside record 7's deflate data
        data[i] ^= 0xFF
    bad_path = tmp_path / "flipped.warc.wet.gz"
    bad_path.write_bytes(bytes(data))
    assert sequence(read_all(bad_path)) == ids[:7] + ["corrupt_gzip"] + ids[8:]


def test_file_of_garbage_bytes_is_not_warc(tmp_path):
    p = tmp_path / "junk.warc.gz"
    p.write_bytes(b"this is plainly not a WARC file\n" * 100)
    assert [(i.reason, i.location) for i in read_all(p)] == [("not_warc", "junk.warc.gz@offset 0")]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"caf\xe9 au lait, not utf-8", "invalid_utf8"),
        (b"text with a \x00 NUL byte", "nul_bytes"),
        (b"", "empty_record"),
        (b"   \n\n  ", "empty_record"),
    ],
)
def test_bad_wet_record_is_skipped_with_reason_and_neighbours_kept(tmp_path, payload, reason):
    p = tmp_path / "bad.warc.wet.gz"
    ids = wet_file(p, [good_text(0), good_text(1), payload, good_text(3)])
    items = read_all(p)
    assert sequence(items) == [ids[0], ids[1], reason, ids[3]]
    assert items[2].location.startswith("bad.warc.wet.gz@offset ")


def test_record_over_max_record_bytes_is_too_large(tmp_path):
    p = tmp_path / "big.warc.wet.gz"
    big = b"x" * (20 * 1024 * 1024)  # 20 MB, over the 10 MB default
    ids = wet_file(p, [good_text(0), big, good_text(2)])
    assert sequence(read_all(p)) == [ids[0], "too_large", ids[2]]
    assert ReaderConfig().max_record_bytes == 10_000_000


def test_max_record_bytes_is_configurable(tmp_path):
    p = tmp_path / "small.warc.wet.gz"
    ids = wet_file(p, [b"short text", good_text(1)])
    assert sequence(read_all(p, ReaderConfig(max_record_bytes=100))) == [ids[0], "too_large"]


def test_uncompressed_warc_cut_short_is_truncated_record(tmp_path):
    p = tmp_path / "plain.warc.wet"
    records = [wet_record(good_text(i), rid=str(uuid.UUID(int=i + 1))) for i in range(3)]
    p.write_bytes(WARCINFO + b"".join(records)[:-100])
    assert sequence(read_all(p)) == [str(uuid.UUID(int=1)), str(uuid.UUID(int=2)), "truncated_record"]


def test_single_member_gzip_warc_reads_and_detects_a_cut_trailer(tmp_path):
    raw = WARCINFO + b"".join(wet_record(good_text(i), rid=str(uuid.UUID(int=i + 1))) for i in range(3))
    whole = tmp_path / "one.warc.wet.gz"
    whole.write_bytes(gzip.compress(raw))
    assert len(split(read_all(whole))[0]) == 3
    whole.write_bytes(gzip.compress(raw)[:-4])  # only the gzip trailer (CRC, size) is missing
    assert sequence(read_all(whole))[-1] == "truncated_gzip"


def overstated_records(n: int, bad: int, extra: int) -> tuple[list[bytes], list[str]]:
    """WARCINFO + n WET records whose record `bad` announces `extra` bytes more than its body holds."""
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    recs = [WARCINFO]
    for i, rid in enumerate(ids):
        r = wet_record(good_text(i), f"http://example.org/{i}", rid)
        if i == bad:
            n_bytes = len(good_text(i))
            r = r.replace(f"Content-Length: {n_bytes}".encode(), f"Content-Length: {n_bytes + extra}".encode())
        recs.append(r)
    return recs, ids


@pytest.mark.parametrize("extra", [1, 3, 4, 5, 10, 300, 5_000, 50_000])
@pytest.mark.parametrize("compressed", [False, True])
def test_overstated_content_length_costs_only_its_own_record(tmp_path, extra, compressed):
    recs, ids = overstated_records(6, bad=2, extra=extra)
    p = tmp_path / ("x.warc.wet.gz" if compressed else "x.warc.wet")
    p.write_bytes(b"".join(gzip.compress(r) for r in recs) if compressed else b"".join(recs))
    items = read_all(p)
    if compressed and extra <= 4:
        # read into its own closing CRLFCRLF only: kept, with at most that whitespace added, nothing lost
        assert sequence(items) == ids
        assert items[2].text.rstrip() == good_text(2).decode() and len(items[2].text) <= len(good_text(2)) + 4
        return
    assert sequence(items) == ids[:2] + ["bad_content_length"] + ids[3:]
    name, _, offset = items[2].location.partition("@offset ")
    assert name == p.name
    offset = int(offset)
    if compressed:
        assert offset == _member_offsets(p.read_bytes())[3]  # warcinfo is member 0
    else:
        assert offset == len(b"".join(recs[:3]))
    assert not any("WARC/1.0" in d.text for d in split(items)[0])


def test_overstated_length_of_the_last_gzip_record_is_not_called_truncated(tmp_path):
    recs, ids = overstated_records(3, bad=2, extra=10)
    p = tmp_path / "x.warc.wet.gz"
    p.write_bytes(b"".join(gzip.compress(r) for r in recs))
    assert sequence(read_all(p)) == ids[:2] + ["bad_content_length"]


def _member_offsets(data: bytes) -> list[int]:
    """Start offsets of the gzip members of `data`."""
    import zlib

    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        pos = len(data) - len(d.unused_data)
    return offsets


# --- JSONL -----------------------------------------------------------------------------------------


def jsonl_lines() -> list[bytes]:
    return [
        json.dumps({"text": "first document", "id": "doc-a", "url": "http://a"}).encode(),
        b'{"text": "this line is cut',
        json.dumps({"title": "no text here"}).encode(),
        b'{"text": "caf\xe9"}',
        json.dumps({"text": "has a \u0000 NUL"}).encode(),
        json.dumps({"text": "  "}).encode(),
        b"",
        json.dumps({"text": "last document", "lang": "en"}).encode(),
    ]


def test_jsonl_bad_lines_are_skipped_with_reasons_and_good_lines_kept(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_bytes(b"\n".join(jsonl_lines()) + b"\n")
    items = read_all(p)
    assert sequence(items) == ["doc-a", "bad_json", "missing_text", "invalid_utf8", "nul_bytes", "empty_record",
                               "docs.jsonl:8"]
    assert items[1].location == "docs.jsonl@line 2"
    assert items[0].url == "http://a" and items[-1].meta == {"lang": "en"} and items[-1].text == "last document"


def test_jsonl_text_field_is_configurable(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"content": "hello", "text": 3}) + "\n")
    assert [d.text for d in read_all(p, ReaderConfig(text_field="content"))] == ["hello"]
    assert sequence(read_all(p)) == ["missing_text"]


def test_jsonl_gz_and_zst_read_like_plain(tmp_path):
    data = b"\n".join(jsonl_lines()) + b"\n"
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (tmp_path / "d.jsonl").write_bytes(data)
    expect = [r.replace("d.jsonl", "FILE") for r in sequence(read_all(tmp_path / "d.jsonl"))]
    assert expect[-1] == "FILE:8"
    for name in ("d.jsonl.gz", "d.jsonl.zst"):
        assert [r.replace(name, "FILE") for r in sequence(read_all(tmp_path / name))] == expect


def _many_lines(n: int) -> tuple[bytes, list[str]]:
    rng = random.Random(2)
    rows = [{"id": f"r{i}", "text": " ".join(str(rng.random()) for _ in range(30))} for i in range(n)]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows), [r["id"] for r in rows]


@pytest.mark.parametrize("suffix, reason", [(".jsonl.gz", "truncated_gzip"), (".jsonl.zst", "truncated_zstd")])
def test_truncated_compressed_jsonl_yields_lines_before_the_cut(tmp_path, suffix, reason):
    data, ids = _many_lines(5000)
    blob = gzip.compress(data) if suffix == ".jsonl.gz" else zstandard.ZstdCompressor().compress(data)
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(blob[: len(blob) // 2])
    items = read_all(p)
    docs, bad = split(items)
    assert [d.id for d in docs] == ids[: len(docs)] and len(docs) > 1000
    assert [b.reason for b in bad[-1:]] == [reason] and items[-1] is bad[-1]
    assert [b.reason for b in bad[:-1]] in ([], ["bad_json"])  # at most the one line the cut went through


def test_jsonl_line_over_max_record_bytes_is_too_large_and_next_line_kept(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_bytes(
        json.dumps({"text": "a"}).encode() + b"\n"
        + json.dumps({"text": "x" * 3000}).encode() + b"\n"
        + json.dumps({"text": "c"}).encode() + b"\n"
    )
    assert sequence(read_all(p, ReaderConfig(max_record_bytes=1000))) == ["big.jsonl:1", "too_large", "big.jsonl:3"]


# --- Parquet, text, empty files, errors ------------------------------------------------------------


def test_parquet_rows_become_documents_and_null_text_is_missing_text(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["one", None, "three"], "id": ["a", "b", "c"], "score": [1, 2, 3]}), p)
    items = read_all(p, ReaderConfig(text_field="body"))
    assert sequence(items) == ["a", "missing_text", "c"]
    assert items[2].meta == {"score": 3} and items[2].source == "t.parquet"


def test_parquet_without_the_text_column_is_an_input_error_listing_columns(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["one"]}), p)
    with pytest.raises(InputError, match=r"no column 'text' \(columns: body\)"):
        read_all(p)


def test_damaged_parquet_is_bad_parquet(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["one"] * 100}), p)
    p.write_bytes(p.read_bytes()[:-20])
    assert sequence(read_all(p)) == ["bad_parquet"]


def test_text_file_is_one_document(tmp_path):
    p = tmp_path / "essay.txt"
    p.write_text("Para one.\n\nPara two.\n")
    [doc] = read_all(p)
    assert (doc.id, doc.text, doc.source) == ("essay.txt", "Para one.\n\nPara two.\n", "essay.txt")
    p.write_bytes(b"caf\xe9")
    assert sequence(read_all(p)) == ["invalid_utf8"]
    p.write_bytes(b"bin\x00ary")
    assert sequence(read_all(p)) == ["nul_bytes"]


@pytest.mark.parametrize("name", ["e.warc.wet.gz", "e.warc", "e.jsonl", "e.jsonl.gz", "e.parquet", "e.txt"])
def test_empty_file_is_empty_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"")
    assert [(i.reason, i.location) for i in read_all(p)] == [("empty_file", name)]


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_file(tmp_path / "nope.jsonl")


def test_unsupported_suffix_is_an_input_error_listing_supported_ones(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("a,b\n")
    with pytest.raises(InputError, match=r"unsupported file type; supported suffixes: .*\.warc\.wet\.gz.*\.jsonl\.zst"):
        read_file(p)


def test_every_reason_code_is_documented():
    import inspect

    import pipeline.readers as readers

    source = inspect.getsource(readers)
    used = {m for m in REASONS if f'"{m}"' in source.replace(f'"{m}": "', "")}
    assert used == set(REASONS)  # no documented code is dead
    assert set(SUPPORTED_SUFFIXES) >= {".warc.gz", ".warc.wet.gz", ".warc.wat.gz", ".warc", ".jsonl", ".jsonl.gz",
                                       ".jsonl.zst", ".parquet", ".txt"}


def test_a_damaged_parquet_page_costs_only_its_row_group_and_every_row_is_counted(tmp_path):
    p = tmp_path / "t.parquet"
    rng = random.Random(0)
    texts = [" ".join(f"w{rng.randint(0, 99999)}" for _ in range(50)) for _ in range(300)]
    pq.write_table(pa.table({"text": texts, "id": [f"d{i}" for i in range(300)]}), p, row_group_size=50)
    col = pq.ParquetFile(p).metadata.row_group(2).column(0)  # the text column of rows 100-149
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(p.read_bytes())
    for k in range(start + col.total_compressed_size // 2, start + col.total_compressed_size // 2 + 40):
        data[k] ^= 0x5A
    p.write_bytes(bytes(data))
    items = read_all(p)
    docs, bad = split(items)
    assert len(items) == 300  # every row is accounted for
    assert [d.id for d in docs] == [f"d{i}" for i in range(300) if not 100 <= i < 150]
    assert [b.location for b in bad] == [f"t.parquet@row {i}" for i in range(100, 150)]
    assert {b.reason for b in bad} == {"bad_parquet"} and "row group 2" in bad[0].detail


def test_a_deeply_nested_json_line_is_bad_json_and_the_next_line_kept(tmp_path):
    p = tmp_path / "deep.jsonl"
    deep = b'{"text": "x", "m": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    p.write_bytes(deep + b"\n" + json.dumps({"text": "after", "id": "ok"}).encode() + b"\n")
    items = read_all(p)
    assert sequence(items) == ["bad_json", "ok"]
    assert items[0].location == "deep.jsonl@line 1" and "nested too deeply" in items[0].detail


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_utf8_byte_order_mark_before_the_first_jsonl_line_is_accepted(tmp_path, suffix):
    p = tmp_path / f"bom{suffix}"
    data = b"\xef\xbb\xbf" + json.dumps({"text": "first", "id": "a"}).encode() + b"\n" + json.dumps({"text": "second", "id": "b"}).encode()
    p.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    items = read_all(p)
    assert sequence(items) == ["a", "b"] and items[0].text == "first"


def test_a_utf8_byte_order_mark_is_not_part_of_a_text_file(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbfHello there.")
    [doc] = read_all(p)
    assert doc.text == "Hello there."
