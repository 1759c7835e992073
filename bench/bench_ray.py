"""Benchmark: `make corpus` on the Ray executor against the local executor, on the dev crawl.

What runs: the commands `make corpus` runs (download of the six crawl-dev WET files as a local SOURCE,
quality-train on ../shared/data/reference/reference-dev.jsonl.zst, filter, dedup), each as its own
`crawlgpt` process, from an empty DATA folder, first with `--executor local --workers W`, then with
`--executor ray` against a Ray cluster of one node with W CPUs started by this script
(`ray.cluster_utils.Cluster`, so that stopping it never touches another user's Ray). The cluster's
start-up is timed apart; each Ray command also pays for joining the cluster, which is included in its
time and also measured alone (a bare `ray.init(address)` + `ray.shutdown()` in a fresh process).

Measured:
1. wall time and CPU time per command and in total, local vs Ray, and Ray's overhead per task:
   (Ray CPU - local CPU) / tasks run. CPU time counts every process of the local command's tree, and
   on Ray the driver plus every Ray process (raylet and GCS included); on a shared machine it is the
   steadier figure, since wall time depends on what the neighbours run;
2. memory per task: the peak RSS of the largest single worker process while each command (and each
   dedup phase) runs: Ray worker processes (`ray::...`, idle ones left out) against the local pool's
   worker processes (or the CLI process itself for phases that run in-process); at 1x the dev crawl and
   (dedup only, on the 8x corpus of bench/bench_dedup.py) at 8x;
3. the per-document costs the projection in docs/cluster.md is made from (CPU-seconds per document of
   each stage, from the local run's wall time x workers);
4. the runner's own cost per task, free of stage work: `run_stage` over 60 tasks that do nothing,
   in-process, on a pool of W processes, and on the Ray cluster (receipts and manifest included).

Usage: .venv/bin/python bench/bench_ray.py [--workers 2] [--skip-8x] [--overhead-only]
Prints tables and writes bench/results/ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from formats.manifest import load_manifest  # noqa: E402
from pipeline.stage import format_table  # noqa: E402

SHARED = Path(os.environ.get("CRAWLGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
CRAWL = SHARED / "crawl-dev"
REFERENCE = SHARED / "reference" / "reference-dev.jsonl.zst"
RESULTS = REPO / "bench" / "results"
WORK = RESULTS / "work" / "ray"

#: The commands of `make corpus`, in order, and the stage folders whose manifests mark their phases.
COMMANDS = ("download", "quality-train", "filter", "dedup")
DEDUP_PHASES = (("signatures", "dedup/signatures"), ("partitions", "dedup/partitions"),
                ("clusters", "dedup/clusters"), ("apply", "corpus"))


class WorkerMonitor:
    """Peak RSS of the largest single process doing stage work, per phase, and the CPU seconds every
    watched process spent, sampled every 50 ms.

    `roots` are the processes whose descendants are searched (the CLI process; the Ray cluster's
    processes); with `ray_only`, only Ray worker processes that are running a task count for memory,
    while CPU time counts every process of the tree (raylet and GCS included: they are Ray's cost).
    CPU time is the steadier figure on a shared machine, where wall time depends on the neighbours.
    """

    def __init__(self, roots: list[int], phase_of, ray_only: bool, interval_s: float = 0.05):
        self.roots = [psutil.Process(p) for p in roots]
        self.phase_of = phase_of
        self.ray_only = ray_only
        self.interval_s = interval_s
        self.peak: dict[str, int] = defaultdict(int)
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        for p in self._procs():
            try:
                t = p.cpu_times()
                self.cpu_start[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _procs(self) -> list[psutil.Process]:
        out = []
        for root in self.roots:
            try:
                out += [root] + root.children(recursive=True)
            except psutil.Error:
                pass
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            biggest = 0
            for p in self._procs():
                try:
                    t = p.cpu_times()
                    self.cpu_last[p.pid] = t.user + t.system  # children are watched themselves
                    if self.ray_only:
                        name = " ".join(p.cmdline()[:1])
                        if not name.startswith("ray::") or name.startswith("ray::IDLE"):
                            continue
                    biggest = max(biggest, p.memory_info().rss)
                except psutil.Error:
                    continue
            phase = self.phase_of()
            self.peak[phase] = max(self.peak[phase], biggest)
            time.sleep(self.interval_s)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return dict(self.peak)

    def cpu_s(self) -> float:
        return sum(last - self.cpu_start.get(pid, 0.0) for pid, last in self.cpu_last.items())


def dedup_phase(data: Path) -> str:
    for name, folder in DEDUP_PHASES:
        if not (data / folder / "manifest.json").exists():
            return name
    return "apply"


def command_args(cmd: str, data: Path, workers: int) -> list[str]:
    base = {
        "download": ["download", "--source", str(CRAWL)],
        "quality-train": ["quality-train", "--reference", str(REFERENCE)],
        "filter": ["filter", "--workers", str(workers), "--quality-model", str(data / "quality" / "model.bin")],
        "dedup": ["dedup", "--workers", str(workers)],
    }[cmd]
    return base + ["--data", str(data)]


def run_command(args: list[str], executor: list[str], data: Path, cmd: str, ray_pids: list[int]) -> dict:
    """One `crawlgpt` command in a subprocess: wall time, shards it ran, peak worker RSS per phase."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args, *executor], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    phase_of = (lambda: dedup_phase(data)) if cmd == "dedup" else (lambda: cmd)
    roots = ray_pids if ray_pids else [proc.pid]
    monitor = WorkerMonitor(roots, phase_of, ray_only=bool(ray_pids))
    driver = WorkerMonitor([proc.pid], phase_of, ray_only=False) if ray_pids else None
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    peak = monitor.stop()
    driver_peak = driver.stop() if driver else {}
    cpu = monitor.cpu_s() + (driver.cpu_s() if driver else 0.0)
    if proc.returncode != 0:
        raise SystemExit(f"crawlgpt {' '.join(args)} failed:\n{out[-3000:]}\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_worker_rss": peak, "peak_driver_rss": driver_peak}


def shards_of(data: Path, cmd: str) -> int:
    folders = {"download": ["raw"], "quality-train": ["quality"], "filter": ["filtered"],
               "dedup": [f for _, f in DEDUP_PHASES]}[cmd]
    return sum(len(load_manifest(data / f)["shards"]) for f in folders)


def run_pipeline(data: Path, workers: int, executor: list[str], ray_pids: list[int],
                 commands=COMMANDS) -> dict:
    results = {}
    for cmd in commands:
        r = run_command(command_args(cmd, data, workers), executor, data, cmd, ray_pids)
        r["tasks"] = shards_of(data, cmd)
        results[cmd] = r
        print(f"  {cmd}: {r['wall_s']:.1f}s, {r['tasks']} tasks", flush=True)
    return results


def start_cluster(cpus: int):
    import ray  # noqa: F401 - fail early, with ray's own message, if the extra is missing
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster: no token to set up
    os.environ["PYTHONPATH"] = str(REPO)
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False,
                                                            "object_store_memory": 200 << 20})
    cluster.wait_for_nodes()
    return cluster, time.perf_counter() - t0


def noop_shard(task, stage_dir, config):
    """A stage function that does nothing: what is left is the runner's and the executor's cost."""
    from pipeline.stage import ShardStats

    return ShardStats()


def task_overhead(address: str, workers: int, n_tasks: int = 60) -> dict:
    """Seconds per task of `run_stage` over `n_tasks` no-op tasks on each executor (best of three)."""
    import ray

    from pipeline.ray_executor import RayExecutor
    from pipeline.stage import LocalExecutor, ShardTask, run_stage

    ray.init(address=address, log_to_driver=False)
    try:
        tasks = [ShardTask(f"t{i:03d}", (f"task-{i}",)) for i in range(n_tasks)]
        out = {}
        for name, make in (("in-process", lambda: LocalExecutor(1)), (f"{workers} processes", lambda: LocalExecutor(workers)),
                           ("ray", RayExecutor)):
            best = float("inf")
            for attempt in range(3):
                folder = WORK / "overhead" / f"{name}-{attempt}"
                shutil.rmtree(folder, ignore_errors=True)
                t0 = time.perf_counter()
                run_stage("noop", folder, {"n": n_tasks}, tasks, noop_shard, executor=make())
                best = min(best, time.perf_counter() - t0)
            out[name] = best / n_tasks
        return out
    finally:
        ray.shutdown()


def connect_cost(address: str) -> float:
    code = f"import ray; ray.init(address={address!r}, log_to_driver=False); ray.shutdown()"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-8x", action="store_true", help="skip the dedup memory measurement at 8x")
    ap.add_argument("--overhead-only", action="store_true", help="only the runner's cost per no-op task")
    args, _ = ap.parse_known_args()  # bench/run.sh passes every benchmark the same arguments
    if not CRAWL.is_dir() or not REFERENCE.exists():
        raise SystemExit(f"needs {CRAWL} and {REFERENCE}")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    if args.overhead_only:
        cluster, startup_s = start_cluster(args.workers)
        try:
            overhead = task_overhead(cluster.address, args.workers)
        finally:
            cluster.shutdown()
        print(f"Ray cluster start-up {startup_s:.1f}s")
        print(format_table([[k, f"{1e3 * v:.1f} ms"] for k, v in overhead.items()], ["executor", "per no-op task"]))
        return

    print(f"make corpus, local executor, {args.workers} workers", flush=True)
    local = run_pipeline(WORK / "local", args.workers, ["--executor", "local"], [])

    print(f"starting a Ray cluster of one node with {args.workers} CPUs", flush=True)
    cluster, startup_s = start_cluster(args.workers)
    try:
        raylet_pids = [p.pid for p in psutil.Process().children()]
        connect_s = connect_cost(cluster.address)
        overhead = task_overhead(cluster.address, args.workers)
        print(f"make corpus, Ray executor (cluster up in {startup_s:.1f}s, joining it {connect_s:.1f}s)", flush=True)
        ray_runs = run_pipeline(WORK / "ray", args.workers, ["--executor", "ray", "--ray-address", cluster.address],
                                raylet_pids)
        scale8 = None
        if not args.skip_8x:
            sys.path.insert(0, str(REPO / "bench"))
            from bench_dedup import build_input

            print("dedup at 8x the dev crawl (input built as bench_dedup.py does)", flush=True)
            data8 = build_input(8, args.workers)
            shutil.rmtree(data8 / "dedup", ignore_errors=True)
            shutil.rmtree(data8 / "corpus", ignore_errors=True)
            l8 = run_pipeline(data8, args.workers, ["--executor", "local"], [], commands=("dedup",))
            shutil.rmtree(data8 / "dedup")
            shutil.rmtree(data8 / "corpus")
            r8 = run_pipeline(data8, args.workers, ["--executor", "ray", "--ray-address", cluster.address],
                              raylet_pids, commands=("dedup",))
            scale8 = {"local": l8["dedup"], "ray": r8["dedup"],
                      "docs": load_manifest(data8 / "corpus")["totals"]["docs_in"]}
    finally:
        cluster.shutdown()

    docs = load_manifest(WORK / "local" / "filtered")["totals"]["docs_in"]
    filtered_kept = load_manifest(WORK / "local" / "filtered")["totals"]["kept"]
    result = {"workers": args.workers, "cluster_startup_s": startup_s, "ray_connect_s": connect_s,
              "noop_task_s": overhead,
              "local": local, "ray": ray_runs, "x8": scale8, "docs": docs, "filtered_kept": filtered_kept}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ray.json").write_text(json.dumps(result, indent=2))
    report(result)


def report(r: dict) -> None:
    rows = []
    for cmd in COMMANDS:
        lo, ra = r["local"][cmd], r["ray"][cmd]
        rows.append([cmd, lo["tasks"], f"{lo['wall_s']:.1f}", f"{ra['wall_s']:.1f}", f"{lo['cpu_s']:.1f}",
                     f"{ra['cpu_s']:.1f}", f"{(ra['cpu_s'] - lo['cpu_s']) / max(lo['tasks'], 1) * 1000:+,.0f} ms"])
    tl = sum(r["local"][c]["wall_s"] for c in COMMANDS)
    tr = sum(r["ray"][c]["wall_s"] for c in COMMANDS)
    cl = sum(r["local"][c]["cpu_s"] for c in COMMANDS)
    cr = sum(r["ray"][c]["cpu_s"] for c in COMMANDS)
    tasks = sum(r["local"][c]["tasks"] for c in COMMANDS)
    rows.append(["make corpus", tasks, f"{tl:.1f}", f"{tr:.1f}", f"{cl:.1f}", f"{cr:.1f}",
                 f"{(cr - cl) / tasks * 1000:+,.0f} ms"])
    print(f"\nmake corpus on the dev crawl ({r['docs']:,} documents), {r['workers']} CPUs; Ray cluster start-up "
          f"{r['cluster_startup_s']:.1f}s (not included), joining it {r['ray_connect_s']:.1f}s per command (included)")
    print(format_table(rows, ["command", "tasks", "local wall s", "ray wall s", "local CPU s", "ray CPU s",
                              "ray CPU per task"]))
    print(f"Ray / local: wall {tr / tl:.2f}x ({100 * (tr - tl) / tl:+.1f}%), CPU {cr / cl:.2f}x "
          f"({100 * (cr - cl) / cl:+.1f}%; Ray's CPU includes its raylet and GCS)")

    rows = []
    for cmd in COMMANDS:
        lo, ra = r["local"][cmd]["peak_worker_rss"], r["ray"][cmd]["peak_worker_rss"]
        for phase in sorted(set(lo) | set(ra), key=lambda p: [n for n, _ in DEDUP_PHASES].index(p)
                            if p in dict(DEDUP_PHASES) else -1):
            rows.append([f"{cmd}" + (f" / {phase}" if phase != cmd else ""), mib(lo.get(phase, 0)),
                         mib(ra.get(phase, 0))])
    if r.get("x8"):
        for phase, _ in DEDUP_PHASES:
            rows.append([f"dedup / {phase} (8x, {r['x8']['docs']:,} docs)",
                         mib(r["x8"]["local"]["peak_worker_rss"].get(phase, 0)),
                         mib(r["x8"]["ray"]["peak_worker_rss"].get(phase, 0))])
    print("\nthe runner's own cost per task (run_stage over 60 no-op tasks, receipts and manifest included)")
    print(format_table([[k, f"{1e3 * v:.1f} ms"] for k, v in r["noop_task_s"].items()], ["executor", "per task"]))

    print("\npeak RSS of the largest worker process (local: pool worker or the CLI process; ray: a task's worker)")
    print(format_table(rows, ["command / phase", "local", "ray task"]))

    rows = []
    for cmd in COMMANDS:
        cpu_s = r["local"][cmd]["cpu_s"]
        rows.append([cmd, f"{cpu_s:.1f}", f"{1e3 * cpu_s / r['docs']:.2f}"])
    print("\nper-document cost (local run, CPU seconds of the whole process tree)")
    print(format_table(rows, ["command", "CPU s", "CPU ms per raw document"]))


if __name__ == "__main__":
    main()
