"""Token shard format and reader: round trips, zero-copy windows, and errors that name `make shards`."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from formats.token_shards import (
    TokenShardError,
    TokenShards,
    dtype_for_vocab,
    open_shard,
    write_shard,
    write_token_shards,
)

VOCAB = 1000
EOT = 999


def make_docs(n: int, seed: int = 0, max_len: int = 60, vocab: int = VOCAB, eot: int = EOT) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(0, eot, rng.integers(0, max_len)), eot).astype(np.int64) for _ in range(n)]


@pytest.fixture
def shard_dir(tmp_path):
    docs = make_docs(600)
    # ~2 KB per file: many files, so windows and documents cross file boundaries.
    write_token_shards(tmp_path, {"train": docs[:500], "val": docs[500:]}, vocab_size=VOCAB, eot_id=EOT,
                       tokenizer_hash="h" * 64, max_shard_bytes=2000)
    return tmp_path, docs


def test_windows_anywhere_equal_the_concatenation_of_documents(shard_dir):
    d, docs = shard_dir
    ds = TokenShards(d, "train")
    flat = np.concatenate(docs[:500])
    assert ds.num_tokens == len(flat) and ds.num_documents == 500
    assert len(ds.files) > 5
    rng = np.random.default_rng(1)
    for _ in range(500):
        length = int(rng.integers(0, 300))
        start = int(rng.integers(0, len(flat) - length + 1))
        np.testing.assert_array_equal(ds.window(start, length), flat[start : start + length])
    np.testing.assert_array_equal(ds.window(0, len(flat)), flat)  # every file at once
    np.testing.assert_array_equal(ds.window(len(flat) - 1, 1), [EOT])


def test_documents_round_trip_in_order_and_end_with_eot(shard_dir):
    d, docs = shard_dir
    for split, expected in (("train", docs[:500]), ("val", docs[500:])):
        ds = TokenShards(d, split)
        assert ds.num_documents == len(expected)
        for i, doc in enumerate(expected):
            got = ds.document(i)
            np.testing.assert_array_equal(got, doc)
            assert got[-1] == ds.eot_id == EOT
        np.testing.assert_array_equal(ds.document_lengths(), [len(x) for x in expected])


def test_window_inside_one_shard_is_a_view_of_the_memory_map(shard_dir):
    d, _ = shard_dir
    ds = TokenShards(d, "train")
    w = ds.window(3, 10)
    assert not w.flags.owndata  # no copy: a view into the mapped file
    assert not w.flags.writeable  # the map is read-only
    assert ds.dtype == np.uint16 and w.dtype == np.uint16


def test_pickling_reopens_the_files_instead_of_copying_tokens(shard_dir):
    import pickle

    d, _ = shard_dir
    ds = TokenShards(d, "train")
    blob = pickle.dumps(ds)
    assert len(blob) < 1000  # a path and a few facts, not the tokens
    again = pickle.loads(blob)
    assert again.num_tokens == ds.num_tokens
    np.testing.assert_array_equal(again.window(100, 500), ds.window(100, 500))


def test_out_of_range_window_and_document_raise_index_error(shard_dir):
    d, _ = shard_dir
    ds = TokenShards(d, "val")
    with pytest.raises(IndexError):
        ds.window(ds.num_tokens - 5, 6)
    with pytest.raises(IndexError):
        ds.window(-1, 2)
    with pytest.raises(IndexError):
        ds.document(ds.num_documents)


def test_dtype_is_uint16_up_to_65536_ids_then_uint32(tmp_path):
    assert dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.uint32
    docs = [np.array([70000, 5, 65537], dtype=np.int64), np.array([65537])]
    write_token_shards(tmp_path, {"train": docs, "val": docs}, vocab_size=70001, eot_id=65537, tokenizer_hash="x")
    ds = TokenShards(tmp_path, "train")
    assert ds.dtype == np.uint32
    np.testing.assert_array_equal(ds.window(0, 4), [70000, 5, 65537, 65537])


def test_schema_metadata_describes_the_shard(shard_dir):
    d, _ = shard_dir
    path = next((d / "train").glob("*.arrow"))
    with pa.memory_map(str(path)) as src:
        reader = pa.ipc.open_file(src)
        meta = {k.decode(): v.decode() for k, v in reader.schema.metadata.items()}
        table = reader.read_all()
    assert meta["crawlgpt.format_version"] == "1"
    assert meta["crawlgpt.vocab_size"] == str(VOCAB)
    assert meta["crawlgpt.eot_id"] == str(EOT)
    assert meta["crawlgpt.dtype"] == "uint16"
    assert meta["crawlgpt.tokenizer_hash"] == "h" * 64
    assert int(meta["crawlgpt.num_documents"]) == table.num_rows
    assert int(meta["crawlgpt.num_tokens"]) == sum(len(x) for x in table.column("tokens").to_pylist())


def test_writer_refuses_ids_outside_vocab_and_documents_without_eot(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_shard(tmp_path / "a.arrow", [np.array([5, VOCAB, EOT])], vocab_size=VOCAB, eot_id=EOT, tokenizer_hash="x")
    with pytest.raises(ValueError, match="65537 is outside"):  # would wrap to 1 as uint16
        write_shard(tmp_path / "w.arrow", [np.array([65537, 0])], vocab_size=65536, eot_id=0, tokenizer_hash="x")
    with pytest.raises(ValueError, match="-1 is outside"):
        write_shard(tmp_path / "n.arrow", [np.array([-1, 0])], vocab_size=65536, eot_id=0, tokenizer_hash="x")
    with pytest.raises(ValueError, match="end with the end-of-text"):
        write_shard(tmp_path / "b.arrow", [np.array([5, 6])], vocab_size=VOCAB, eot_id=EOT, tokenizer_hash="x")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


# --- errors that name the command to rerun ---------------------------------------------------------


def test_missing_manifest_names_make_shards(tmp_path):
    with pytest.raises(TokenShardError, match="make shards"):
        TokenShards(tmp_path, "train")


def test_wrong_tokenizer_or_vocab_is_refused(shard_dir):
    d, _ = shard_dir
    with pytest.raises(TokenShardError, match="tokenizer.*make shards"):
        TokenShards(d, "train", expect_tokenizer_hash="0" * 64)
    with pytest.raises(TokenShardError, match="vocab size 1000, expected 2048"):
        TokenShards(d, "train", expect_vocab_size=2048)
    assert TokenShards(d, "train", expect_vocab_size=VOCAB, expect_tokenizer_hash="h" * 64).num_documents == 500


def test_truncated_shard_is_detected(shard_dir):
    d, _ = shard_dir
    path = sorted((d / "train").glob("*.arrow"))[2]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(TokenShardError, match=rf"{path.name}.*truncated.*make shards"):
        TokenShards(d, "train")


def test_missing_shard_is_detected(shard_dir):
    d, _ = shard_dir
    path = sorted((d / "train").glob("*.arrow"))[1]
    path.unlink()
    with pytest.raises(TokenShardError, match=rf"{path.name}.*missing.*make shards"):
        TokenShards(d, "train")


def test_corrupted_bytes_fail_the_checksum(shard_dir):
    d, _ = shard_dir
    path = sorted((d / "train").glob("*.arrow"))[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TokenShardError, match="sha256.*make shards"):
        TokenShards(d, "train")


def test_shard_from_another_run_is_detected_by_its_metadata(shard_dir, tmp_path_factory):
    d, docs = shard_dir
    # A shard written with another tokenizer, dropped in place of a listed one, manifest patched to match.
    victim = sorted((d / "train").glob("*.arrow"))[0]
    rec = write_shard(victim, docs[:3], vocab_size=VOCAB, eot_id=EOT, tokenizer_hash="other")
    manifest = json.loads((d / "manifest.json").read_text())
    entry = manifest["splits"]["train"][0]
    entry.update(bytes=rec["bytes"], sha256=rec["sha256"])
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TokenShardError, match="tokenizer_hash='other'.*make shards"):
        TokenShards(d, "train")


def test_a_file_that_is_not_arrow_is_reported_as_corrupt(tmp_path):
    p = tmp_path / "x.arrow"
    p.write_bytes(b"not an arrow file at all")
    with pytest.raises(TokenShardError, match="truncated or corrupt"):
        open_shard(p)


def test_memory_stays_flat_over_many_window_reads(tmp_path):
    psutil = pytest.importorskip("psutil")
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(0, 60000, 5000), 60001) for _ in range(400)]  # 2M tokens, 4 MB
    write_token_shards(tmp_path, {"train": docs, "val": docs[:1]}, vocab_size=60002, eot_id=60001,
                       tokenizer_hash="x", max_shard_bytes=1 << 20)
    ds = TokenShards(tmp_path, "train")
    proc = psutil.Process(os.getpid())
    total = 0

    def read_many(n: int) -> None:
        nonlocal total
        starts = rng.integers(0, ds.num_tokens - 1025, n)
        for s in starts:
            total += int(ds.window(int(s), 1025)[-1])

    read_many(20_000)  # touch every page once
    before = proc.memory_info().rss
    read_many(100_000)
    grown = proc.memory_info().rss - before
    assert grown < 8 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 100k window reads"


def test_a_manifest_listing_a_shard_outside_the_folder_is_refused(shard_dir, tmp_path_factory):
    d, _ = shard_dir
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    m = json.loads((d / "manifest.json").read_text())
    first = m["splits"]["train"][0]["path"]
    os.replace(d / first, elsewhere / "x.arrow")
    m["splits"]["train"][0]["path"] = os.path.relpath(elsewhere / "x.arrow", d)
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TokenShardError, match="not a file inside"):
        TokenShards(d, "train", verify_checksums=False)
