"""Benchmark: tokenizer training and tokenize-and-pack throughput, against the floor and datatrove.

Corpus: `DATA/corpus` if a curated corpus exists there (`make corpus`), else the ideal curation of
../shared/data/crawl-dev built from its labels (good English documents, one per duplicate cluster),
written as a corpus stage under bench/results/work/.

Measured, on the same documents, the same tokenizer.json and the same number of cores:
1. training: `train_tokenizer` (streams Parquet, hashes, holds out, pads) vs `Tokenizer.train_from_iterator`
   called directly on the same texts already in memory (overhead target <= 10 %);
2. packing: `make_shards` (read Parquet, encode, pack, write Arrow, checksums, manifest) vs the floor,
   `Tokenizer.encode_batch_fast` alone on texts already in memory (target <= 1.3x its time), and vs
   datatrove's `DocumentTokenizer` run by its `LocalPipelineExecutor` in the peer environment
   (BENCH_PEER_PYTHON, default .venv-bench/bin/python) on a JSONL export of the same documents
   (target: >= 2x its throughput).

Usage: .venv/bin/python bench/bench_tokenize.py [--data DATA] [--workers N] [--repeat R]
Prints a table and writes bench/results/tokenize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.documents import Document, DocumentWriter  # noqa: E402
from pipeline.stage import ShardStats, ShardTask, format_table, run_stage, stage_documents  # noqa: E402
from pipeline.manifest import output_record  # noqa: E402

SHARED = Path(os.environ.get("CRAWLGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"
WORK = RESULTS / "work" / "tokenize"


# --- corpus: the ideal curation of crawl-dev --------------------------------------------------------


def _ideal_corpus_shard(task: ShardTask, stage_dir: Path, config: dict) -> ShardStats:
    """Keep the labelled-good English records of one WET file, one per duplicate cluster."""
    from fastwarc import ArchiveIterator, WarcRecordType

    wet, labels_path = task.inputs
    keep = set()
    for line in open(labels_path, encoding="utf-8"):
        r = json.loads(line)
        if r["lang"] == "en" and r["kind"] == "good" and r.get("cluster", r["uri"]) == r["uri"]:
            keep.add(r["uri"])
    stats = ShardStats()
    out = stage_dir / f"{task.name}.parquet"
    with open(wet, "rb") as f, DocumentWriter(out) as writer:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.conversion):
            stats.docs_in += 1
            uri = rec.headers.get("WARC-Target-URI")
            if uri in keep:
                text = rec.reader.read().decode("utf-8", "replace")
                writer.write(Document(id=rec.record_id, text=text, url=uri, source=Path(wet).name))
                stats.kept += 1
            else:
                stats.dropped["not_ideal"] += 1
    stats.outputs = [output_record(out, writer.rows, stage_dir)]
    return stats


def corpus_dir(data: Path | None) -> Path:
    if data is not None and (data / "corpus" / "manifest.json").exists():
        return data / "corpus"
    crawl = SHARED / "crawl-dev"
    if not crawl.is_dir():
        sys.exit(f"no corpus: neither {data}/corpus nor {crawl} exists")
    out = WORK / "corpus"
    tasks = [ShardTask(p.name.split(".")[0], (str(p), str(crawl / "labels.jsonl")))
             for p in sorted(crawl.glob("*.warc.wet.gz"))]
    run_stage("corpus", out, {"ideal": "crawl-dev labels"}, tasks, _ideal_corpus_shard, workers=1)
    return out


# --- helpers ---------------------------------------------------------------------------------------


def load_texts(corpus: Path) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    ids, texts = [], []
    for p in stage_documents(corpus):
        t = pq.read_table(p, columns=["id", "text"])
        ids += t.column("id").to_pylist()
        texts += t.column("text").to_pylist()
    return ids, texts


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


DATATROVE_SCRIPT = textwrap.dedent(
    """
    import sys, time, json
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    src, out, logs, tok, workers, tasks = sys.argv[1:7]
    ex = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(src, text_key="text", id_key="id", compression=None),
            DocumentTokenizer(out, local_working_dir=None, tokenizer_name_or_path=tok,
                              eos_token="<|endoftext|>", shuffle_documents=False),
        ],
        tasks=int(tasks), workers=int(workers), logging_dir=logs, skip_completed=False,
    )
    t0 = time.perf_counter()
    ex.run()
    print(json.dumps({"seconds": time.perf_counter() - t0}))
    """
)


def run_datatrove(peer_python: str, ids: list[str], texts: list[str], tokenizer: Path, workers: int,
                  n_files: int) -> float | None:
    """Time datatrove's DocumentTokenizer on a JSONL export (n_files files, one task each)."""
    if not Path(peer_python).exists():
        return None
    base = WORK / "datatrove"
    shutil.rmtree(base, ignore_errors=True)
    src = base / "jsonl"
    src.mkdir(parents=True)
    per = (len(texts) + n_files - 1) // n_files
    for k in range(n_files):
        with open(src / f"part-{k:05d}.jsonl", "w", encoding="utf-8") as f:
            for i in range(k * per, min((k + 1) * per, len(texts))):
                f.write(json.dumps({"id": ids[i], "text": texts[i]}, ensure_ascii=False) + "\n")
    script = base / "run_dt.py"
    script.write_text(DATATROVE_SCRIPT)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="true")
    res = subprocess.run(
        [peer_python, str(script), str(src), str(base / "out"), str(base / "logs"), str(tokenizer),
         str(workers), str(n_files)],
        capture_output=True, text=True, env=env,
    )
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=16384)
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from pipeline.tokenize_stage import ShardsConfig, make_shards
    from pipeline.tokenizer_train import TokenizerConfig, build_tokenizer, make_trainer, train_tokenizer

    corpus = corpus_dir(args.data)
    ids, texts = load_texts(corpus)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"corpus {corpus}: {len(texts):,} documents, {n_bytes / 1e6:.1f} MB of text, {args.workers} workers")

    # 1. tokenizer training: ours (streaming) vs tokenizers directly on the same texts (held-out excluded).
    from pipeline.token_shards import split_of

    cfg = TokenizerConfig(vocab_size=args.vocab_size)
    train_texts = [t for i, t in zip(ids, texts) if split_of(i, cfg.heldout_fraction) == "train"]
    tok_dir = WORK / "tokenizer"

    def ours_train():
        shutil.rmtree(tok_dir, ignore_errors=True)
        train_tokenizer(corpus, tok_dir, cfg)

    def direct_train():
        tok = build_tokenizer(cfg.pattern)
        tok.train_from_iterator(
            (train_texts[i : i + 1024] for i in range(0, len(train_texts), 1024)), trainer=make_trainer(cfg)
        )

    t_direct = best_of(args.repeat, direct_train)
    t_ours = best_of(args.repeat, ours_train)
    tok_path = tok_dir / "tokenizer.json"
    tok_manifest = json.loads((tok_dir / "manifest.json").read_text())

    # 2. tokenize and pack.
    tok = Tokenizer.from_file(str(tok_path))
    total_tokens = 0

    def floor():
        nonlocal total_tokens
        total_tokens = 0
        for i in range(0, len(texts), 1024):
            total_tokens += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i : i + 1024], add_special_tokens=False))

    shards_dir = WORK / "shards"

    def ours_pack():
        shutil.rmtree(shards_dir, ignore_errors=True)
        make_shards(corpus, tok_path, shards_dir, ShardsConfig(), workers=args.workers)

    t_floor = best_of(args.repeat, floor)
    t_pack = best_of(args.repeat, ours_pack)
    shards_manifest = json.loads((shards_dir / "manifest.json").read_text())
    n_files = len(stage_documents(corpus))
    peer = os.environ.get("BENCH_PEER_PYTHON", str(REPO / ".venv-bench" / "bin" / "python"))
    dt_times = [run_datatrove(peer, ids, texts, tok_path, args.workers, n_files) for _ in range(args.repeat)]
    t_dt = min((t for t in dt_times if t is not None), default=None)

    mb = n_bytes / 1e6
    rows = [
        ("train: tokenizers directly (texts in memory)", f"{t_direct:.2f}", f"{sum(len(t.encode()) for t in train_texts) / 1e6 / t_direct:.2f}", "", ""),
        ("train: crawlgpt tokenizer (streamed)", f"{t_ours:.2f}", f"{tok_manifest['training']['bytes'] / 1e6 / t_ours:.2f}", "", f"{100 * (t_ours / t_direct - 1):+.1f}% vs direct"),
        ("pack floor: encode_batch_fast only", f"{t_floor:.2f}", f"{mb / t_floor:.2f}", f"{total_tokens / t_floor:,.0f}", ""),
        ("pack: crawlgpt shards", f"{t_pack:.2f}", f"{mb / t_pack:.2f}", f"{shards_manifest['totals']['extra']['tokens'] / t_pack:,.0f}", f"{t_pack / t_floor:.2f}x floor time"),
    ]
    if t_dt is not None:
        rows.append(("pack: datatrove DocumentTokenizer", f"{t_dt:.2f}", f"{mb / t_dt:.2f}", f"{(total_tokens + len(texts)) / t_dt:,.0f}", f"crawlgpt {t_dt / t_pack:.2f}x faster"))
    print(format_table(rows, ["what", "seconds", "MB/s", "tokens/s", "ratio"]))
    result = {
        "corpus": str(corpus), "documents": len(texts), "text_bytes": n_bytes, "workers": args.workers,
        "cpu_count": os.cpu_count(), "vocab_size": args.vocab_size, "repeat": args.repeat,
        "train_direct_s": t_direct, "train_ours_s": t_ours, "train_overhead": t_ours / t_direct - 1,
        "heldout": tok_manifest["heldout"],
        "pack_floor_s": t_floor, "pack_ours_s": t_pack, "pack_vs_floor": t_pack / t_floor,
        "pack_datatrove_s": t_dt, "speedup_vs_datatrove": (t_dt / t_pack) if t_dt else None,
        "tokens": shards_manifest["totals"]["extra"]["tokens"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tokenize.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
