"""Small corpora the tokenizer, shard and CLI tests share."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import zstandard

from formats.manifest import output_record
from pipeline.documents import Document, read_documents, write_documents
from pipeline.stage import ShardStats, ShardTask, run_stage

WORDS = ("the of and to in a is that was for on with as by it at from his an were are which this be or had "
         "tokenizer shard corpus crawl document river mountain history village century language music").split()
EXTRA = ["日本語のテキスト", "emoji 😀🎉 here", "naïve café – déjà vu", "tab\tand\r\nnewline", "3.14159 and 1234567"]


def copy_docs(task: ShardTask, stage_dir: Path, config: dict) -> ShardStats:
    """A stand-in corpus stage: copies its input documents unchanged."""
    docs = list(read_documents(task.inputs[0]))
    out = stage_dir / f"{task.name}.parquet"
    write_documents(out, docs)
    return ShardStats(docs_in=len(docs), kept=len(docs), outputs=[output_record(out, len(docs), stage_dir)])


def make_corpus(root: Path, shards: dict[str, list[Document]]) -> Path:
    """A finished corpus stage (Parquet shards + manifest) at root/corpus, as `make corpus` leaves it."""
    tasks = []
    for name, docs in shards.items():
        src = root / "raw" / f"{name}.parquet"
        write_documents(src, docs)
        tasks.append(ShardTask(name, (str(src),)))
    run_stage("corpus", root / "corpus", {"test": True}, tasks, copy_docs)
    return root / "corpus"


def finished_stage(root: Path, name: str, shards: dict[str, list[Document]]) -> Path:
    """A finished stage folder root/NAME holding `shards` (shard name -> documents), as a stage leaves it."""
    tasks = []
    for shard, docs in shards.items():
        write_documents(root / f"in-{name}" / f"{shard}.parquet", docs)
        tasks.append(ShardTask(shard, (str(root / f"in-{name}" / f"{shard}.parquet"),)))
    run_stage(name, root / name, {"test": name}, tasks, copy_docs)
    return root / name


def synthetic_docs(n: int, seed: int, prefix: str) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 120))]
        text = " ".join(words).capitalize() + ". " + rng.choice(EXTRA)
        docs.append(Document(id=f"{prefix}-{i}", text=text))
    return docs


def read_reference(shared_data: Path) -> list[str]:
    path = shared_data / "reference" / "reference-dev.jsonl.zst"
    if not path.exists():
        pytest.skip(f"{path} not found")
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    return [json.loads(line)["text"] for line in io.TextIOWrapper(raw, encoding="utf-8")]
