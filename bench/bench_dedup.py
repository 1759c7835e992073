"""Benchmark: dedup precision, recall, speed and memory on ../shared/data/crawl-dev, against datatrove.

Input: every one of the 13,139 records of the six crawl-dev WET files (read with pipeline.readers),
written as a finished upstream stage (DATA/filtered) without any filtering, so that both tools see the
same 13,139 documents; the 1,200 junk pages are kept on purpose (many are boilerplate duplicates of
each other, as in a real crawl) and their removals are counted in their own column. The 8x corpus for
the memory-growth measurement repeats the crawl 8 times; replica r > 0 appends a replica tag to every
word ("river" -> "riverqb"), so replicas are not duplicates of one another while each keeps the crawl's
own duplicate structure (same duplicate rate, same cluster shapes, 8x the documents and band keys).

Measured:
1. quality, from `labels.jsonl` (`cluster` = URI of the original, `edit` = word edit rate):
   - recall per edit-rate bin: a labelled copy is caught when it ends in the same cluster as its
     original (so exactly one of them is kept); shown next to the copies' true word-3-gram and 5-gram
     Jaccard similarity with their original;
   - precision: a removal is correct when the document and its cluster's kept representative are in the
     same labelled cluster; otherwise it is listed with its best true 3-gram Jaccard similarity to
     another member of its cluster, and counts as a natural near duplicate (Wikipedia template
     articles, licence text, two editions of a book; junk pages counted apart) when that similarity is
     at least NATURAL_MIN_JACCARD, and as a false positive when it is below;
2. speed: wall time of the whole stage (`crawlgpt dedup`, all four phases, reading and writing Parquet)
   with 1 and 2 workers, vs datatrove's four MinHash stages (signature, buckets, cluster, filter; default
   MinhashConfig: 5-grams, 14 bands x 8 rows) run by LocalPipelineExecutor on the same Parquet files with
   the same 2 workers, in the peer environment (BENCH_PEER_PYTHON, default .venv-bench/bin/python);
3. the floor: datasketch alone hashing the same word 3-gram shingles, `MinHash.bulk` in a bare loop
   over precomputed shingles (a) as bytes with datasketch's default hash, the plain way to use it, and
   (b) as our pre-hashed uint32 arrays, i.e. only the permutations our stage asks datasketch for;
4. memory, at 1x and 8x the crawl: peak RSS summed over the process tree (main process + workers,
   sampled every 20 ms) per phase, which is dominated by each process's fixed ~150-300 MB of imported
   libraries; and, to see what grows with the corpus, the working memory of one task of each phase
   (peak of numpy/Python allocations by tracemalloc + peak of Arrow's memory pool) measured in a fresh
   process: one signature shard, one partition (of 8), the cluster task.

Usage: .venv/bin/python bench/bench_dedup.py [--workers 2] [--skip-peer] [--skip-8x]
Prints tables and writes bench/results/dedup.json; `--plot` also redraws docs/dedup-scurve.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.dedup.config import DedupConfig, candidate_probability  # noqa: E402
from pipeline.dedup.normalize import normalize_texts, word_hashes  # noqa: E402
from pipeline.dedup.show import jaccard, shingle_set  # noqa: E402
from pipeline.dedup.signatures import _identity, shingle_hashes  # noqa: E402
from pipeline.documents import DocumentWriter  # noqa: E402
from formats.manifest import load_manifest, output_record  # noqa: E402
from pipeline.stage import ShardStats, ShardTask, format_table, run_stage, stage_documents  # noqa: E402

SHARED = Path(os.environ.get("CRAWLGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
CRAWL = SHARED / "crawl-dev"
RESULTS = REPO / "bench" / "results"
WORK = RESULTS / "work" / "dedup"
PEER_PYTHON = os.environ.get("BENCH_PEER_PYTHON", str(REPO / ".venv-bench" / "bin" / "python"))
NATURAL_MIN_JACCARD = 0.5
BINS = [("exact", 0.0, 0.0), ("1-2 %", 0.0, 0.02), ("2-4 %", 0.02, 0.04), ("4-6 %", 0.04, 0.06),
        ("6-8 %", 0.06, 0.08), ("1-5 %", 0.0, 0.05), ("5-8 %", 0.05, 0.08)]
REPLICA_TAGS = "abcdefghijklmnop"


# --- input: crawl-dev as a finished upstream stage ----------------------------------------------------


def _convert_shard(task: ShardTask, stage_dir: Path, config: dict) -> ShardStats:
    """One WET file -> one document shard; replica r > 0 tags every word and every id with r."""
    from pipeline.readers import Unreadable, read_file

    wet, replica = task.inputs[0], int(task.name.rsplit("-r", 1)[1])
    tag = "q" + REPLICA_TAGS[replica]
    word = re.compile(r"(\w+)")
    stats = ShardStats()
    out = stage_dir / f"{task.name}.parquet"
    with DocumentWriter(out) as writer:
        for item in read_file(wet):
            stats.docs_in += 1
            if isinstance(item, Unreadable):
                stats.unreadable[item.reason] += 1
                continue
            if replica:
                item.id = f"{item.id}-r{replica}"
                item.text = word.sub(lambda m: m.group(1) + tag, item.text)
            item.meta["replica"] = replica
            writer.write(item)
            stats.kept += 1
    stats.outputs = [output_record(out, stats.kept, stage_dir)]
    return stats


def build_input(scale: int, workers: int) -> Path:
    data = WORK / f"x{scale}"
    tasks = [
        ShardTask(f"{p.name.split('.')[0]}-r{r}", (str(p),))
        for r in range(scale)
        for p in sorted(CRAWL.glob("*.warc.wet.gz"))
    ]
    run_stage("filter", data / "filtered", {"bench": "all records", "scale": scale}, tasks, _convert_shard,
              workers=workers)
    return data


# --- memory: peak RSS of a process tree, per phase -----------------------------------------------------


class TreeMonitor:
    """Samples the summed RSS of a process and its descendants; labels samples with `phase_of()`."""

    def __init__(self, pid: int, phase_of, interval_s: float = 0.02):
        self.proc = psutil.Process(pid)
        self.phase_of = phase_of
        self.interval_s = interval_s
        self.peak: dict[str, int] = defaultdict(int)
        self.cpu: dict[int, float] = {}  # pid -> last seen user + system seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        self.cpu[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            phase = self.phase_of()
            self.peak[phase] = max(self.peak[phase], rss)
            self.peak["total"] = max(self.peak["total"], rss)
            time.sleep(self.interval_s)

    def stop(self) -> tuple[dict[str, int], float]:
        """(peak RSS per phase, CPU seconds summed over every process seen)."""
        self._stop.set()
        self._thread.join()
        return dict(self.peak), sum(self.cpu.values())


def run_ours(data: Path, workers: int, config: DedupConfig) -> dict:
    """`crawlgpt dedup` from scratch in a subprocess: wall time, manifest, peak memory per phase."""
    shutil.rmtree(data / "dedup", ignore_errors=True)
    shutil.rmtree(data / "corpus", ignore_errors=True)
    phases = [("signatures", data / "dedup" / "signatures"), ("partitions", data / "dedup" / "partitions"),
              ("clusters", data / "dedup" / "clusters"), ("apply", data / "corpus")]

    def phase_of() -> str:
        for name, folder in phases:
            if not (folder / "manifest.json").exists():
                return name
        return "apply"

    cmd = [sys.executable, "-m", "cli", "dedup", "--data", str(data), "--workers", str(workers),
           "--ngram", str(config.ngram), "--num-perm", str(config.num_perm), "--bands", str(config.bands),
           "--rows", str(config.rows), "--threshold", str(config.threshold), "--partitions", str(config.partitions)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monitor = TreeMonitor(proc.pid, phase_of)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    peak, cpu = monitor.stop()
    if proc.returncode != 0:
        raise SystemExit(f"crawlgpt dedup failed:\n{out}\n{err}")
    manifest = load_manifest(data / "corpus")
    return {"wall_s": wall, "cpu_s": cpu, "stage_s": manifest["elapsed_s"], "peak_rss": peak, "manifest": manifest}


def our_prediction(data: Path) -> tuple[dict[str, str], set[str]]:
    """(id -> cluster for every document in a cluster, removed ids) from DATA/dedup and DATA/corpus."""
    members = {}
    for path in sorted((data / "dedup" / "clusters").glob("*.parquet")):
        t = pq.read_table(path, columns=["id", "cluster"])
        members.update(zip(t["id"].to_pylist(), t["cluster"].to_pylist()))
    removed = set()
    for path in sorted((data / "corpus" / "rejected").glob("*.parquet")):
        removed.update(pq.read_table(path, columns=["id"])["id"].to_pylist())
    return members, removed


# --- working memory of one task per phase ------------------------------------------------------------


def probe_working_memory(data: Path) -> dict:
    """Run one task of each phase in this process; peak tracemalloc + Arrow pool bytes of each."""
    import tracemalloc

    from pipeline.dedup.buckets import partition_name, partition_shard
    from pipeline.dedup.clusters import cluster_shard
    from pipeline.dedup.config import ClusterConfig

    config = DedupConfig()
    sig_dir = data / "dedup" / "signatures"
    sig_files = tuple(str(sig_dir / f"{p.stem}.parquet") for p in stage_documents(data / "filtered"))
    edge_files = tuple(sorted(str(p) for p in (data / "dedup" / "partitions").glob("part-*.parquet")))
    out = WORK / "probe"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from pipeline.dedup.signatures import signature_shard

    first_input = str(stage_documents(data / "filtered")[0])
    probes = {
        "signatures (one shard)": lambda: signature_shard(ShardTask("probe", (first_input,)), out,
                                                          config.signature_config()),
        "partitions (one of 8)": lambda: partition_shard(ShardTask(partition_name(0), sig_files), out,
                                                         config.partition_config()),
        "clusters (the one task)": lambda: cluster_shard(ShardTask("clusters", edge_files + sig_files), out,
                                                         ClusterConfig(len(edge_files), len(sig_files))),
    }
    result = {}
    pools = []  # every proxy pool stays alive: buffers allocated from it are freed through it
    tracemalloc.start()
    for name, run in probes.items():
        pool = pa.proxy_memory_pool(pa.default_memory_pool())
        pools.append(pool)
        pa.set_memory_pool(pool)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        stats = run()
        peak = tracemalloc.get_traced_memory()[1] - base
        result[name] = {"python_numpy_bytes": peak, "arrow_bytes": pool.max_memory(),
                        "extra": {k: v for k, v in stats.extra.items() if isinstance(v, int)}}
    return result


# --- datatrove ---------------------------------------------------------------------------------------

PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    def main():
        src, out, workers, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        cfg = MinhashConfig()
        read = lambda: JsonlReader(src, glob_pattern="*.jsonl")
        stages = {
            "signatures": LocalPipelineExecutor(
                [read(), MinhashDedupSignature(output_folder=f"{out}/sigs", config=cfg)],
                tasks=files, workers=workers, logging_dir=f"{out}/logs/1"),
            "buckets": LocalPipelineExecutor(
                [MinhashDedupBuckets(input_folder=f"{out}/sigs", output_folder=f"{out}/buckets", config=cfg)],
                tasks=cfg.num_buckets, workers=workers, logging_dir=f"{out}/logs/2"),
            "clusters": LocalPipelineExecutor(
                [MinhashDedupCluster(input_folder=f"{out}/buckets", output_folder=f"{out}/remove", config=cfg,
                                     save_cluster_id=True)],
                tasks=1, workers=1, logging_dir=f"{out}/logs/3"),
            "filter": LocalPipelineExecutor(
                [read(), MinhashDedupFilter(input_folder=f"{out}/remove", load_cluster_ids=True,
                                            exclusion_writer=JsonlWriter(f"{out}/removed", compression=None)),
                 JsonlWriter(f"{out}/kept", compression=None)],
                tasks=files, workers=workers, logging_dir=f"{out}/logs/4"),
        }
        times = {}
        for name, executor in stages.items():
            t0 = time.perf_counter()
            executor.run()
            times[name] = time.perf_counter() - t0
            open(f"{out}/phase", "w").write(name)
        json.dump(times, open(f"{out}/times.json", "w"))

    if __name__ == "__main__":  # the executor starts workers with forkserver, which re-imports this file
        main()
    """
)


def export_jsonl(data: Path) -> Path:
    """The same document shards as JSONL (id, text, url): the peer environment has no pyarrow."""
    out = data / "jsonl"
    shards = stage_documents(data / "filtered")
    if out.is_dir() and len(list(out.glob("*.jsonl"))) == len(shards):
        return out
    out.mkdir(exist_ok=True)
    for path in shards:
        t = pq.read_table(path, columns=["id", "text", "url"])
        with open(out / f"{path.stem}.jsonl", "w", encoding="utf-8") as f:
            for row in t.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def run_datatrove(data: Path, workers: int) -> dict:
    out = WORK / "datatrove"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = out / "run_datatrove.py"
    script.write_text(PEER_SCRIPT)
    src = export_jsonl(data)
    files = len(list(src.glob("*.jsonl")))
    order = ["signatures", "buckets", "clusters", "filter"]

    def phase_of() -> str:
        done = (out / "phase").read_text() if (out / "phase").exists() else None
        return order[min(order.index(done) + 1, 3)] if done else order[0]

    cmd = [PEER_PYTHON, str(script), str(src), str(out), str(workers), str(files)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monitor = TreeMonitor(proc.pid, phase_of)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    peak, cpu = monitor.stop()
    if proc.returncode != 0:
        raise SystemExit(f"datatrove failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    members, removed = {}, set()
    for folder, is_removed in (("kept", False), ("removed", True)):
        for path in sorted((out / folder).glob("*.jsonl")):
            for line in open(path, encoding="utf-8"):
                row = json.loads(line)
                doc_id, meta = row["id"], row.get("metadata") or {}
                cluster = meta.get("minhash_cluster_id", -1)
                if cluster is not None and cluster != -1:
                    members[doc_id] = f"dt{cluster}"
                if is_removed:
                    removed.add(doc_id)
    times = json.loads((out / "times.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "phase_s": times, "peak_rss": peak, "members": members,
            "removed": removed}


# --- quality -----------------------------------------------------------------------------------------


def load_truth(data: Path) -> tuple[dict, dict]:
    """(id -> label dict with replica, url), and texts needed later are read on demand."""
    labels = {}
    for line in open(CRAWL / "labels.jsonl", encoding="utf-8"):
        r = json.loads(line)
        labels[r["uri"]] = r
    docs = {}
    for path in stage_documents(data / "filtered"):
        t = pq.read_table(path, columns=["id", "url", "meta"])
        for doc_id, url, meta in zip(t["id"].to_pylist(), t["url"].to_pylist(), t["meta"].to_pylist()):
            docs[doc_id] = {"label": labels[url], "replica": json.loads(meta)["replica"], "url": url}
    return docs, labels


def read_texts(data: Path, ids: set[str]) -> dict[str, str]:
    out = {}
    for path in stage_documents(data / "filtered"):
        t = pq.read_table(path, columns=["id", "text"], filters=[("id", "in", sorted(ids))])
        out.update(zip(t["id"].to_pylist(), t["text"].to_pylist()))
    return out


def label_cluster(doc: dict) -> tuple[int, str]:
    return doc["replica"], doc["label"].get("cluster", doc["label"]["uri"])


def evaluate(data: Path, docs: dict, members: dict[str, str], removed: set[str]) -> dict:
    """Recall per edit bin, precision with the natural near duplicates listed (see module docstring)."""
    by_key = {(d["replica"], d["url"]): i for i, d in docs.items()}
    clusters = defaultdict(list)
    for doc_id, c in members.items():
        clusters[c].append(doc_id)

    recall = {}
    for name, lo, hi in BINS:
        caught = total = 0
        for doc_id, d in docs.items():
            e = d["label"].get("edit")
            if e is None or not ((e == 0) if name == "exact" else (lo < e <= hi)):
                continue
            orig = by_key[(d["replica"], d["label"]["cluster"])]
            total += 1
            caught += doc_id in members and members.get(orig) == members[doc_id]
        recall[name] = {"caught": caught, "copies": total, "recall": caught / total if total else None}

    verdicts = Counter()
    unlabelled = []
    for doc_id in removed:
        c = members.get(doc_id)
        others = [m for m in clusters.get(c, []) if m != doc_id]
        kept = [m for m in clusters.get(c, []) if m not in removed]
        mine = label_cluster(docs[doc_id])
        if any(label_cluster(docs[m]) == mine for m in others) and docs[doc_id]["label"].get("cluster"):
            verdicts["labelled_copy"] += 1  # a labelled copy (or original) of another member of its cluster
            continue
        unlabelled.append((doc_id, kept[0] if kept else None, others))
    need = {x for d, r, others in unlabelled for x in [d, *others[:200]]}
    texts = read_texts(data, need)
    ngram = 3
    listed = []
    for doc_id, rep, others in unlabelled:
        mine = shingle_set(texts[doc_id], ngram)
        best, best_with = 0.0, None
        for other in others[:200]:
            j = jaccard(mine, shingle_set(texts[other], ngram))
            if j > best:
                best, best_with = j, other
            if best >= 0.999:
                break
        junk = docs[doc_id]["label"]["kind"] == "junk"
        verdict = ("junk_duplicate" if junk else "natural_near_duplicate") if best >= NATURAL_MIN_JACCARD \
            else "false_positive"
        verdicts[verdict] += 1
        if not junk:
            listed.append({
                "id": doc_id, "verdict": verdict, "best_jaccard_3gram": round(best, 3), "with": best_with,
                "representative": rep, "src": docs[doc_id]["label"]["src"],
                "start": texts[doc_id][:70].replace("\n", " "),
                "with_start": texts[best_with][:70].replace("\n", " ") if best_with else "",
            })
    n_removed = len(removed)
    fp = verdicts["false_positive"]
    return {
        "removed": n_removed,
        "verdicts": dict(verdicts),
        "precision": 1 - fp / n_removed if n_removed else 1.0,
        "precision_labelled_only": verdicts["labelled_copy"] / n_removed if n_removed else 1.0,
        "recall": recall,
        "unlabelled_removals": sorted(listed, key=lambda r: (r["verdict"], -r["best_jaccard_3gram"])),
    }


def copy_jaccards(data: Path, docs: dict) -> dict:
    """True word 3-gram and 5-gram Jaccard similarity of each labelled copy with its original, per bin."""
    by_key = {(d["replica"], d["url"]): i for i, d in docs.items()}
    pairs = [(i, by_key[(d["replica"], d["label"]["cluster"])]) for i, d in docs.items()
             if d["label"].get("edit") is not None and d["replica"] == 0]
    texts = read_texts(data, {x for p in pairs for x in p})
    out = {}
    for name, lo, hi in BINS:
        js = {3: [], 5: []}
        for copy, orig in pairs:
            e = docs[copy]["label"]["edit"]
            if (e == 0) if name == "exact" else (lo < e <= hi):
                for n in js:
                    js[n].append(jaccard(shingle_set(texts[copy], n), shingle_set(texts[orig], n)))
        out[name] = {f"{n}gram": {"mean": float(np.mean(v)), "p5": float(np.percentile(v, 5)),
                                  "min": float(np.min(v))} for n, v in js.items() if v}
    return out


# --- the floor ---------------------------------------------------------------------------------------


def floor_times(data: Path, config: DedupConfig, limit_docs: int | None = None) -> dict:
    """datasketch alone: MinHash.bulk over precomputed shingles (bytes, default hash; and our uint32)."""
    from datasketch import MinHash

    t_bytes = t_arrays = c_bytes = c_arrays = 0.0
    docs = 0
    for path in stage_documents(data / "filtered"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000, columns=["text"]):
            normalized = normalize_texts(batch.column("text"))
            shingles_bytes = []
            for text in normalized.to_pylist():
                w = text.split()
                grams = [" ".join(w[i : i + config.ngram]) for i in range(max(1, len(w) - config.ngram + 1))]
                shingles_bytes.append([g.encode() for g in grams if g])
            hashed, offsets = shingle_hashes(word_hashes(normalized), config.ngram)
            arrays = [[hashed[a:b]] for a, b in zip(offsets[:-1], offsets[1:]) if b > a]
            t0, c0 = time.perf_counter(), time.process_time()
            MinHash.bulk([s for s in shingles_bytes if s], num_perm=config.num_perm, seed=config.seed)
            t1, c1 = time.perf_counter(), time.process_time()
            MinHash.bulk(arrays, num_perm=config.num_perm, seed=config.seed, hashfunc=_identity, scheme="affine32")
            t2, c2 = time.perf_counter(), time.process_time()
            t_bytes += t1 - t0
            t_arrays += t2 - t1
            c_bytes += c1 - c0
            c_arrays += c2 - c1
            docs += batch.num_rows
            if limit_docs and docs >= limit_docs:
                break
    return {"docs": docs, "bulk_bytes_s": t_bytes, "bulk_uint32_s": t_arrays,
            "bulk_bytes_cpu_s": c_bytes, "bulk_uint32_cpu_s": c_arrays}


# --- the S-curve figure --------------------------------------------------------------------------------


def estimate_at_least(threshold: float, num_perm: int, s: np.ndarray) -> np.ndarray:
    """P(MinHash estimate >= threshold | Jaccard s): the binomial tail over num_perm permutations."""
    k_min = int(np.ceil(threshold * num_perm - 1e-9))
    s = np.clip(s, 1e-12, 1 - 1e-12)
    out = np.zeros_like(s)
    for k in range(k_min, num_perm + 1):
        log_term = (math.lgamma(num_perm + 1) - math.lgamma(k + 1) - math.lgamma(num_perm - k + 1)
                    + k * np.log(s) + (num_perm - k) * np.log1p(-s))
        out += np.exp(log_term)
    return np.clip(out, 0, 1)


def plot_scurve(config: DedupConfig, jaccards: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = np.linspace(0, 1, 501)
    ours = candidate_probability(s, config.bands, config.rows)
    verified = ours * estimate_at_least(config.threshold, config.num_perm, s)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(s, ours, label=f"ours: P(candidate), {config.bands} bands x {config.rows} rows")
    ax.plot(s, verified, label=f"ours: P(candidate and estimate >= {config.threshold}), {config.num_perm} perms")
    ax.plot(s, candidate_probability(s, 14, 8), "--", label="datatrove default: 14 bands x 8 rows (no verification)")
    ax.axvline(config.threshold, color="grey", lw=0.8, ls=":")
    if jaccards:
        colors = plt.cm.viridis(np.linspace(0.1, 0.9, 4))
        for (name, c) in zip(["1-2 %", "2-4 %", "4-6 %", "6-8 %"], colors):
            j3, j5 = jaccards[name]["3gram"], jaccards[name]["5gram"]
            ax.axvspan(j3["p5"], j3["mean"], ymin=0.075, ymax=0.125, color=c, alpha=0.85,
                       label=f"copies {name}: 3-gram J (p5..mean)")
            ax.axvspan(j5["p5"], j5["mean"], ymin=0.02, ymax=0.07, color=c, alpha=0.45, hatch="///")
        ax.text(0.02, 0.135, "hatched: the same copies' 5-gram J", transform=ax.transAxes, fontsize=7)
    ax.set_xlabel(f"Jaccard similarity (ours: word {config.ngram}-grams; datatrove: word 5-grams)")
    ax.set_ylabel("probability")
    ax.set_title("LSH S-curves")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main --------------------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def run_probe(data: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--probe", str(data)], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-peer", action="store_true", help="do not run datatrove")
    ap.add_argument("--skip-8x", action="store_true", help="do not measure the 8x corpus")
    ap.add_argument("--plot", action="store_true", help="redraw docs/dedup-scurve.png")
    ap.add_argument("--report-only", action="store_true", help="print and plot bench/results/dedup.json again")
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # internal: working memory of DATA
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe_working_memory(args.probe)))
        return
    if args.report_only:
        results = json.loads((RESULTS / "dedup.json").read_text())
        if args.plot:
            plot_scurve(DedupConfig(**results["config"]), results["copy_jaccard"], REPO / "docs" / "dedup-scurve.png")
        report(results)
        return
    if not CRAWL.is_dir():
        raise SystemExit(f"crawl-dev not found at {CRAWL} (set CRAWLGPT_SHARED_DATA)")
    config = DedupConfig()
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"config": config.__dict__, "workers": args.workers, "natural_min_jaccard": NATURAL_MIN_JACCARD}

    data1 = build_input(1, args.workers)
    docs1, _ = load_truth(data1)
    n1 = len(docs1)
    results["docs"] = n1
    jaccards = copy_jaccards(data1, docs1)
    results["copy_jaccard"] = jaccards

    runs = {}
    runs["ours_1w"] = run_ours(data1, 1, config)
    runs["ours"] = run_ours(data1, args.workers, config)
    members, removed = our_prediction(data1)
    results["ours"] = {
        "wall_s_1_worker": runs["ours_1w"]["wall_s"], "stage_s_1_worker": runs["ours_1w"]["stage_s"],
        "cpu_s_1_worker": runs["ours_1w"]["cpu_s"],
        "wall_s": runs["ours"]["wall_s"], "stage_s": runs["ours"]["stage_s"], "cpu_s": runs["ours"]["cpu_s"],
        "phase_s": runs["ours"]["manifest"]["dedup"]["phase_elapsed_s"],
        "phase_s_1_worker": runs["ours_1w"]["manifest"]["dedup"]["phase_elapsed_s"],
        "peak_rss": runs["ours"]["peak_rss"], "peak_rss_1_worker": runs["ours_1w"]["peak_rss"],
        "pairs": runs["ours"]["manifest"]["dedup"]["pairs"],
        "histogram": runs["ours"]["manifest"]["dedup"]["cluster_size_histogram"],
        "quality": evaluate(data1, docs1, members, removed),
    }
    floor = floor_times(data1, config)
    results["floor"] = floor
    results["working_memory_1x"] = run_probe(data1)

    if not args.skip_peer:
        dt = run_datatrove(data1, args.workers)
        results["datatrove"] = {
            "wall_s": dt["wall_s"], "cpu_s": dt["cpu_s"], "phase_s": dt["phase_s"], "peak_rss": dt["peak_rss"],
            "quality": evaluate(data1, docs1, dt["members"], dt["removed"]),
        }
    if not args.skip_8x:
        data8 = build_input(8, args.workers)
        r8 = run_ours(data8, args.workers, config)
        docs8, _ = load_truth(data8)
        m8, rm8 = our_prediction(data8)
        q8 = evaluate(data8, docs8, m8, rm8)
        results["working_memory_8x"] = run_probe(data8)
        results["ours_8x"] = {"docs": len(docs8), "wall_s": r8["wall_s"], "stage_s": r8["stage_s"],
                              "phase_s": r8["manifest"]["dedup"]["phase_elapsed_s"], "peak_rss": r8["peak_rss"],
                              "precision": q8["precision"], "recall": {k: v["recall"] for k, v in q8["recall"].items()}}

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dedup.json").write_text(json.dumps(results, indent=2, default=str))
    if args.plot:
        plot_scurve(config, jaccards, REPO / "docs" / "dedup-scurve.png")
    report(results)


def report(r: dict) -> None:
    n = r["docs"]
    ours = r["ours"]
    dt = r.get("datatrove")
    print(f"\ndedup benchmark: {n:,} crawl-dev records, {r['workers']} workers, config {r['config']}")
    rows = []
    for name, _, _ in BINS:
        j = r["copy_jaccard"][name]
        row = [name, ours["quality"]["recall"][name]["copies"],
               f"{j['3gram']['mean']:.2f} (p5 {j['3gram']['p5']:.2f})", f"{j['5gram']['mean']:.2f}",
               f"{ours['quality']['recall'][name]['recall']:.4f}"]
        if dt:
            row.append(f"{dt['quality']['recall'][name]['recall']:.4f}")
        rows.append(row)
    print()
    print(format_table(rows, ["recall by edit rate", "copies", "true J 3-gram", "true J 5-gram", "ours"]
                       + (["datatrove"] if dt else [])))
    rows = []
    for key in ("removed", "labelled_copy", "natural_near_duplicate", "junk_duplicate", "false_positive"):
        row = [key.replace("_", " ")]
        for q in [ours["quality"]] + ([dt["quality"]] if dt else []):
            row.append(q["removed"] if key == "removed" else q["verdicts"].get(key, 0))
        rows.append(row)
    rows.append(["precision"] + [f"{q['precision']:.4f}" for q in [ours["quality"]] + ([dt["quality"]] if dt else [])])
    print()
    print(format_table(rows, ["removals", "ours"] + (["datatrove"] if dt else [])))
    floor = r["floor"]
    rows = [
        ["ours, 1 worker (crawlgpt dedup, all phases)", f"{ours['wall_s_1_worker']:.1f}",
         f"{ours['cpu_s_1_worker']:.1f}", f"{n / ours['wall_s_1_worker']:,.0f}", mib(ours["peak_rss_1_worker"]["total"])],
        [f"ours, {r['workers']} workers", f"{ours['wall_s']:.1f}", f"{ours['cpu_s']:.1f}", f"{n / ours['wall_s']:,.0f}",
         mib(ours["peak_rss"]["total"])],
    ]
    if dt:
        rows.append([f"datatrove 4 MinHash stages, {r['workers']} workers", f"{dt['wall_s']:.1f}", f"{dt['cpu_s']:.1f}",
                     f"{n / dt['wall_s']:,.0f}", mib(dt["peak_rss"]["total"])])
    rows.append(["floor: MinHash.bulk over bytes shingles", f"{floor['bulk_bytes_s']:.1f}",
                 f"{floor['bulk_bytes_cpu_s']:.1f}", f"{floor['docs'] / floor['bulk_bytes_s']:,.0f}", "-"])
    rows.append(["floor: MinHash.bulk over uint32 shingles", f"{floor['bulk_uint32_s']:.1f}",
                 f"{floor['bulk_uint32_cpu_s']:.1f}", f"{floor['docs'] / floor['bulk_uint32_s']:,.0f}", "-"])
    print()
    print(format_table(rows, ["speed", "wall s", "CPU s", "docs/s", "peak MiB"]))
    print(f"\nours (1 worker) / floor over bytes: wall {ours['wall_s_1_worker'] / floor['bulk_bytes_s']:.2f}x, "
          f"CPU {ours['cpu_s_1_worker'] / floor['bulk_bytes_cpu_s']:.2f}x; / floor over uint32: wall "
          f"{ours['wall_s_1_worker'] / floor['bulk_uint32_s']:.2f}x, CPU {ours['cpu_s_1_worker'] / floor['bulk_uint32_cpu_s']:.2f}x"
          + (f"\ndatatrove / ours ({r['workers']} workers): wall {dt['wall_s'] / ours['wall_s']:.1f}x, "
             f"CPU {dt['cpu_s'] / ours['cpu_s']:.1f}x" if dt else ""))
    if "ours_8x" in r:
        r8 = r["ours_8x"]
        rows = []
        for phase in ("signatures", "partitions", "clusters", "apply", "total"):
            rows.append([phase, mib(ours["peak_rss"].get(phase, 0)), mib(r8["peak_rss"].get(phase, 0))])
        print()
        print(format_table(rows, ["peak RSS, process tree", f"1x ({n:,} docs) MiB", f"8x ({r8['docs']:,}) MiB"]))
        print("(1x runs every phase in one process; 8x starts 2 workers per parallel phase, each with ~170 MB "
              "of imported libraries)")
        rows = []
        w1, w8 = r["working_memory_1x"], r["working_memory_8x"]
        for name in w1:
            a = w1[name]["python_numpy_bytes"] + w1[name]["arrow_bytes"]
            b = w8[name]["python_numpy_bytes"] + w8[name]["arrow_bytes"]
            rows.append([name, mib(a), mib(b), f"{(b - a) / max(r8['docs'] - n, 1):,.0f}"])
        print()
        print(format_table(rows, ["working memory of one task", "1x MiB", "8x MiB", "growth bytes/doc"]))
        print(f"8x: {r8['wall_s']:.1f}s ({r8['docs'] / r8['wall_s']:,.0f} docs/s), precision {r8['precision']:.4f}, "
              f"recall {r8['recall']}")
    print()
    print("unlabelled removals (ours), excluding junk pages:")
    for u in ours["quality"]["unlabelled_removals"][:60]:
        print(f"  {u['verdict']:<24} J3={u['best_jaccard_3gram']:.3f} {u['src']:<5} {u['start'][:50]!r} ~ "
              f"{u['with_start'][:50]!r}")


if __name__ == "__main__":
    main()
