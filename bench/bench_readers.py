"""Reading speed of WET files: our reader (FastWARC) against warcio and datatrove's WarcReader.

Reads every WET file of ../shared/data/crawl-dev (13,139 records) in one process and reports documents
per second and MB/s of compressed input. Peers: bare warcio (the loop most pipelines write: iterate,
read, decode UTF-8) and datatrove's WarcReader (warcio plus its per-record checks), run with
.venv-bench/bin/python when that environment exists.
Run: .venv/bin/python bench/bench_readers.py [--data DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator as WarcioIterator

from pipeline.readers import Unreadable, read_file

REPO = Path(__file__).resolve().parents[1]


def read_ours(files: list[Path]) -> int:
    n = 0
    for p in files:
        for item in read_file(p):
            if not isinstance(item, Unreadable):
                n += 1
    return n


def read_warcio(files: list[Path]) -> int:
    n = 0
    for p in files:
        with open(p, "rb") as f:
            for rec in WarcioIterator(f):
                if rec.rec_type != "conversion":
                    continue
                text = rec.content_stream().read().decode("utf-8")
                _ = (rec.rec_headers.get_header("WARC-Record-ID"), rec.rec_headers.get_header("WARC-Target-URI"), text)
                n += 1
    return n


DATATROVE = """
import sys, time
from datatrove.pipeline.readers import WarcReader
from loguru import logger
logger.remove()
best, n = float("inf"), 0
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    n = sum(1 for _ in WarcReader(sys.argv[1], glob_pattern="*.warc.wet.gz").run())
    best = min(best, time.perf_counter() - t)
print(n, best)
"""


def run_datatrove(data: Path, repeat: int) -> tuple[int, float] | None:
    python = Path(os.environ.get("BENCH_PEER_PYTHON", REPO / ".venv-bench" / "bin" / "python"))
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", DATATROVE, str(data), str(repeat)], capture_output=True, text=True,
                         check=True, cwd="/")
    n, secs = out.stdout.split()
    return int(n), float(secs)


def best_of(fn, files: list[Path], repeat: int) -> tuple[int, float]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn(files)
        best = min(best, time.perf_counter() - t)
    return n, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "crawl-dev")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    files = sorted(args.data.glob("*.warc.wet.gz"))
    if not files:
        raise SystemExit(f"no WET files in {args.data}")
    mb = sum(p.stat().st_size for p in files) / 1e6
    rows = []
    for name, fn in (("crawlgpt read_file (FastWARC)", read_ours), ("warcio ArchiveIterator", read_warcio)):
        n, secs = best_of(fn, files, args.repeat)
        rows.append({"reader": name, "docs": n, "seconds": round(secs, 3), "docs_per_s": round(n / secs),
                     "mb_per_s": round(mb / secs, 1)})
    dt = run_datatrove(args.data, 1)  # slow: one run is enough
    if dt is not None:
        n, secs = dt
        rows.append({"reader": "datatrove WarcReader", "docs": n, "seconds": round(secs, 3),
                     "docs_per_s": round(n / secs), "mb_per_s": round(mb / secs, 1)})
    print(f"{len(files)} WET files, {mb:.1f} MB compressed, best of {args.repeat}, one process")
    print(f"{'reader':32} {'docs':>7} {'seconds':>8} {'docs/s':>9} {'MB/s':>7}")
    for r in rows:
        print(f"{r['reader']:32} {r['docs']:>7,} {r['seconds']:>8.3f} {r['docs_per_s']:>9,} {r['mb_per_s']:>7.1f}")
    for r in rows[1:]:
        print(f"speed-up over {r['reader']}: {r['seconds'] / rows[0]['seconds']:.1f}x")
    out = REPO / "bench" / "results" / "readers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"files": len(files), "mb": round(mb, 1), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
