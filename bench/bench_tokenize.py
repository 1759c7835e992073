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
import resource
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
from formats.manifest import output_record  # noqa: E402

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


def measure(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads and of every child process it waited for)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, time.process_time() - c0 + children


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The fastest wall time and the lowest CPU time over repeats (the machine may be shared)."""
    return min(r[0] for r in runs), min(r[1] for r in runs)


# Run by the peer environment's python. The __main__ guard matters: datatrove's executor starts its
# workers with a forkserver that re-imports this script, which must not start another executor.
DATATROVE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    def main():
        from datatrove.executor.local import LocalPipelineExecutor
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.pipeline.tokens import DocumentTokenizer

        src, out, logs, tok, workers, tasks = sys.argv[1:7]
        ex = LocalPipelineExecutor(
            pipeline=[
                JsonlReader(src, text_key="text", id_key="id", compression=None),
                # its defaults, except no shuffling (crawlgpt does not shuffle either)
                DocumentTokenizer(out, tokenizer_name_or_path=tok, eos_token="<|endoftext|>", shuffle_documents=False),
            ],
            tasks=int(tasks), workers=int(workers), logging_dir=logs, skip_completed=False,
        )
        t0 = time.perf_counter()
        ex.run()
        print(json.dumps({"seconds": time.perf_counter() - t0}))

    if __name__ == "__main__":
        main()
    """
)


def run_datatrove(peer_python: str, tokenizer: Path, workers: int, n_files: int) -> float:
    """Run datatrove's DocumentTokenizer over the JSONL export (n_files files, one task each).

    Returns the CPU seconds of its whole process tree, sampled with psutil: its workers are children
    of a forkserver that is never waited for, so `getrusage(RUSAGE_CHILDREN)` would miss them.
    """
    import psutil

    base = WORK / "datatrove"
    shutil.rmtree(base / "out", ignore_errors=True)
    shutil.rmtree(base / "logs", ignore_errors=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="true")
    proc = subprocess.Popen(
        [peer_python, str(base / "run_dt.py"), str(base / "jsonl"), str(base / "out"), str(base / "logs"),
         str(tokenizer), str(workers), str(n_files)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    root = psutil.Process(proc.pid)
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        try:
            for p in [root] + root.children(recursive=True):
                try:
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"datatrove failed:\n{err[-3000:]}")
    return sum(cpu.values())


def export_jsonl(ids: list[str], texts: list[str], n_files: int) -> None:
    """The same documents as JSONL for datatrove's reader (one file per corpus shard)."""
    base = WORK / "datatrove"
    shutil.rmtree(base, ignore_errors=True)
    (base / "jsonl").mkdir(parents=True)
    per = (len(texts) + n_files - 1) // n_files
    for k in range(n_files):
        with open(base / "jsonl" / f"part-{k:05d}.jsonl", "w", encoding="utf-8") as f:
            for i in range(k * per, min((k + 1) * per, len(texts))):
                f.write(json.dumps({"id": ids[i], "text": texts[i]}, ensure_ascii=False) + "\n")
    (base / "run_dt.py").write_text(DATATROVE_SCRIPT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--skip-peer", action="store_true", help="do not run datatrove")
    ap.add_argument("--only", choices=["train", "pack"], help="run one half of the benchmark")
    args, _ = ap.parse_known_args()  # bench/run.sh passes the same arguments to every benchmark

    from tokenizers import Tokenizer

    from formats.token_shards import split_of
    from pipeline.tokenize_stage import ShardsConfig, make_shards
    from pipeline.tokenizer_train import TokenizerConfig, build_tokenizer, make_trainer, train_tokenizer

    corpus = corpus_dir(args.data)
    ids, texts = load_texts(corpus)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_files = len(stage_documents(corpus))
    print(f"corpus {corpus}: {len(texts):,} documents in {n_files} shards, {n_bytes / 1e6:.1f} MB of text; "
          f"{args.workers} workers on {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")

    cfg = TokenizerConfig(vocab_size=args.vocab_size)
    train_texts = [t for i, t in zip(ids, texts) if split_of(i, cfg.heldout_fraction) == "train"]
    train_bytes = sum(len(t.encode("utf-8")) for t in train_texts)
    tok_dir = WORK / "tokenizer"
    shards_dir = WORK / "shards"
    tok_path = tok_dir / "tokenizer.json"

    def ours_train():
        shutil.rmtree(tok_dir, ignore_errors=True)
        train_tokenizer(corpus, tok_dir, cfg)

    def direct_train():  # the same trainer and pre-tokenizer, texts already in memory, nothing else
        tok = build_tokenizer(cfg.pattern)
        tok.train_from_iterator(
            (train_texts[i : i + 1024] for i in range(0, len(train_texts), 1024)), trainer=make_trainer(cfg)
        )

    runs: dict[str, list] = {k: [] for k in ("direct", "train", "floor", "floor_fast", "pack", "datatrove")}
    for _ in range(args.repeat if args.only != "pack" else 0):  # interleaved: a busy moment hits both sides
        runs["direct"].append(measure(direct_train))
        runs["train"].append(measure(ours_train))
    if not tok_path.exists():
        train_tokenizer(corpus, tok_dir, cfg)
    tok_manifest = json.loads((tok_dir / "manifest.json").read_text())

    tok = Tokenizer.from_file(str(tok_path))
    n_tokens = 0

    def floor():  # Tokenizer.encode_batch alone, texts already in memory (all cores, the library's threads)
        for i in range(0, len(texts), 1024):
            tok.encode_batch(texts[i : i + 1024], add_special_tokens=False)

    def floor_fast():
        nonlocal n_tokens
        n_tokens = 0
        for i in range(0, len(texts), 1024):
            n_tokens += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i : i + 1024], add_special_tokens=False))

    def ours_pack():
        shutil.rmtree(shards_dir, ignore_errors=True)
        make_shards(corpus, tok_path, shards_dir, ShardsConfig(), workers=args.workers)

    peer = os.environ.get("BENCH_PEER_PYTHON", str(REPO / ".venv-bench" / "bin" / "python"))
    with_peer = not args.skip_peer and Path(peer).exists()
    if with_peer:
        export_jsonl(ids, texts, n_files)
    for _ in range(args.repeat if args.only != "train" else 0):
        runs["floor"].append(measure(floor))
        runs["floor_fast"].append(measure(floor_fast))
        runs["pack"].append(measure(ours_pack))
        if with_peer:
            t0 = time.perf_counter()
            dt_cpu = run_datatrove(peer, tok_path, args.workers, n_files)
            runs["datatrove"].append((time.perf_counter() - t0, dt_cpu))
    packed_tokens = dt_tokens = None
    if runs["pack"]:
        packed_tokens = json.loads((shards_dir / "manifest.json").read_text())["totals"]["extra"]["tokens"]
    if runs["datatrove"]:  # same work on both sides: datatrove's .ds files hold the same number of uint16 tokens
        dt_tokens = sum(p.stat().st_size for p in (WORK / "datatrove" / "out").glob("*.ds")) // 2
        if dt_tokens != packed_tokens:
            print(f"warning: datatrove wrote {dt_tokens:,} tokens, crawlgpt {packed_tokens:,}", file=sys.stderr)

    b = {k: best(v) for k, v in runs.items() if v}
    mb = n_bytes / 1e6
    tmb = train_bytes / 1e6

    def row(name, key, mbytes, tokens=None, ratio=""):
        wall, cpu = b[key]
        return (name, f"{wall:.2f}", f"{cpu:.2f}", f"{mbytes / wall:.2f}", f"{tokens / wall:,.0f}" if tokens else "", ratio)

    rows = []
    if "train" in b:
        rows += [
            row("train: tokenizers train_from_iterator directly", "direct", tmb),
            row("train: crawlgpt train_tokenizer (streamed)", "train", tmb, None,
                f"{100 * (b['train'][0] / b['direct'][0] - 1):+.1f}% wall, {100 * (b['train'][1] / b['direct'][1] - 1):+.1f}% CPU"),
        ]
    if "pack" in b:
        rows += [
            row("floor: Tokenizer.encode_batch alone", "floor", mb, n_tokens),
            row("floor: Tokenizer.encode_batch_fast alone", "floor_fast", mb, n_tokens),
            row("pack: crawlgpt shards (read, encode, pack, write)", "pack", mb, packed_tokens,
                f"{b['pack'][0] / b['floor'][0]:.2f}x encode_batch, {b['pack'][0] / b['floor_fast'][0]:.2f}x _fast"),
        ]
    if "datatrove" in b:
        rows.append(row("pack: datatrove DocumentTokenizer", "datatrove", mb, packed_tokens,
                        f"crawlgpt {b['datatrove'][0] / b['pack'][0]:.2f}x faster (CPU {b['datatrove'][1] / b['pack'][1]:.2f}x)"))
    print(format_table(rows, ["what", "wall s", "CPU s", "MB/s", "tokens/s", "ratio"]))
    result = {
        "corpus": str(corpus), "documents": len(texts), "text_bytes": n_bytes, "train_bytes": train_bytes,
        "corpus_shards": n_files, "workers": args.workers, "cpu_count": os.cpu_count(),
        "load_average_end": os.getloadavg()[0], "vocab_size": args.vocab_size, "repeat": args.repeat,
        "tokens": packed_tokens, "datatrove_tokens": dt_tokens, "heldout": tok_manifest["heldout"],
        "runs_wall_cpu_s": runs, "best_wall_cpu_s": b,
        "train_overhead_wall": b["train"][0] / b["direct"][0] - 1 if "train" in b else None,
        "train_overhead_cpu": b["train"][1] / b["direct"][1] - 1 if "train" in b else None,
        "pack_vs_encode_batch": b["pack"][0] / b["floor"][0] if "pack" in b else None,
        "pack_vs_encode_batch_fast": b["pack"][0] / b["floor_fast"][0] if "pack" in b else None,
        "speedup_vs_datatrove": b["datatrove"][0] / b["pack"][0] if "datatrove" in b else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("tokenize.json" if args.only is None else f"tokenize-{args.only}.json")).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
