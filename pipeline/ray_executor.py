"""The Ray executor: one Ray task per shard on a Ray cluster (`--executor ray`, `EXECUTOR=ray`).

Only `run_stage` talks to it, through the `pipeline.stage.Executor` interface, and only
`cli.common.make_executor` imports it: Ray is an optional dependency (`pip install
'crawlgpt[ray]'`) that the default, local path never imports.

What it does, and why:
- Each task is `ray.remote(num_cpus, memory, max_retries)` around `stage.run_task`: the stage
  function is shipped as it is (by reference: the package must be installed on every node).
- A worker that dies (killed, out of memory, node lost) is retried up to `max_retries` times. A task
  that raises is not retried: stage errors are deterministic, so the error is raised in the driver
  unwrapped (a `PipelineError` stays one, and the CLI prints it without a traceback).
- Only the driver writes receipts and the manifest (`run_stage` does that as results arrive), so
  resume, config refusal, accounting and kill-anywhere behave exactly as with the local executor.
- Workers read and write `DATA` on a filesystem that every node mounts at the same path. Before the
  first task (and again when nodes have joined), one tiny task per node reads a token the driver has
  just written into the stage folder; a node that cannot see it stops the run with an error naming it.
- Relative paths in tasks and configs are resolved against the driver's working directory, which a
  worker enters before each task (it must exist on that node: part of the shared mount).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.errors import PipelineError
from pipeline.stage import OnDone, OnTick, ShardStats, ShardTask, run_task
from pipeline.storage import absolute

log = logging.getLogger(__name__)

#: Memory (bytes) a task of these stages may use, for Ray's scheduler; others get `memory_bytes`.
#: The dedup cluster phase holds every duplicate (~500 B each) and one signature per cluster; the
#: quality model and tokenizer tasks hold their training text. Requests above the largest node's
#: memory are lowered to it (with a warning), so a small cluster never waits forever.
STAGE_MEMORY_BYTES = {
    "dedup-clusters": 2 << 30,
    "dedup-partitions": 1 << 30,
    "quality": 2 << 30,
    "tokenizer": 4 << 30,
}
STORAGE_CHECK_FILE = ".ray-storage-check"
#: Seconds to wait for a Ray head's port to answer before giving up (Ray itself retries for minutes,
#: printing only its own retry lines).
CONNECT_TIMEOUT_S = 30.0
#: The port of a Ray head (GCS) when an address names none, and of Ray Client (`ray://`).
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001


class SharedStorageError(PipelineError):
    """A Ray node cannot see the driver's DATA folder."""


class WorkerLostError(PipelineError):
    """A shard's task lost its worker more often than the retries allow."""


class RayConnectError(PipelineError):
    """The Ray head at --ray-address (or RAY_ADDRESS) does not answer."""


def head_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) a Ray address points at, or None for `auto`/`local` (found by Ray itself)."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, ""
    host = host.strip("[]")
    try:
        return host, int(port) if port else (DEFAULT_CLIENT_PORT if client else DEFAULT_GCS_PORT)
    except ValueError:
        raise RayConnectError(f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379)") from None


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within timeout_s, in one line, when nothing answers at the Ray head's address."""
    endpoint = head_endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            pass
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise RayConnectError(
            f"cannot reach the Ray head at {address} ({why} within {timeout_s:g} s); start it with "
            f"`ray start --head --port={endpoint[1]}` on that machine, or fix --ray-address / RAY_ADDRESS "
            f"(or use --executor local)") from None


def _run_on_worker(fn: Callable, task: ShardTask, stage_dir: str, config: Any, cwd: str) -> ShardStats:
    """The remote body: enter the driver's working directory (relative paths), then run the task."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    return run_task(fn, task, stage_dir, config)


def _read_token(path: str) -> tuple[str, str | None]:
    """On one node: (its address, the token in `path` or None if the file cannot be read)."""
    node = ray.util.get_node_ip_address()
    try:
        return node, Path(path).read_text()
    except OSError:
        return node, None


@dataclass
class RayExecutor:
    """Runs each shard as a Ray task on the cluster at `address` (None: RAY_ADDRESS, else a local Ray)."""

    address: str | None = None
    num_cpus: float = 1.0
    """CPUs Ray reserves per task (a stage function uses one core)."""
    memory_bytes: int = 1 << 30
    """Memory Ray reserves per task, unless STAGE_MEMORY_BYTES says more for the stage."""
    max_retries: int = 3
    """Times a task is rerun after its worker died."""
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    """Seconds to wait for the head at `address` to answer before a one-line error."""
    name: str = "ray"
    _checked: set = field(default_factory=set, repr=False)

    def connect(self) -> None:
        """Join the cluster (once per process). Usage statistics are off unless the user turned them on.
        An address given explicitly is checked first, even when this process already joined a cluster."""
        if self.address:
            check_reachable(self.address, self.connect_timeout_s)
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address:
            check_reachable(address, self.connect_timeout_s)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            log.info("ray: no RAY_ADDRESS, starting Ray on this machine")
            ray.init(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("ray: %d node(s), %g CPUs", len(nodes), ray.cluster_resources().get("CPU", 0))

    def task_memory(self, stage: str) -> int:
        want = STAGE_MEMORY_BYTES.get(stage, self.memory_bytes)
        largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if largest and want > largest:
            log.warning("ray: %s wants %.1f GiB per task but the largest node offers %.1f GiB; asking for that",
                        stage, want / 2**30, largest / 2**30)
            return int(largest)
        return int(want)

    def check_storage(self, stage_dir: Path) -> None:
        """Every alive node must read the token the driver writes into `stage_dir` (shared storage).

        Checked for the first stage folder this executor runs (one command's folders share DATA), and
        again only if nodes have joined since."""
        key = absolute(stage_dir)
        nodes = frozenset(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        if self._checked and nodes <= set().union(*self._checked):
            return
        token = secrets.token_hex(8)
        marker = Path(key) / STORAGE_CHECK_FILE
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
        try:
            probe = ray.remote(num_cpus=0)(_read_token)
            refs = [
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                    str(marker))
                for n in ray.nodes() if n.get("Alive")
            ]
            blind = [node for node, seen in ray.get(refs, timeout=120) if seen != token]
        finally:
            marker.unlink(missing_ok=True)
        if blind:
            raise SharedStorageError(
                f"Ray node(s) {', '.join(sorted(set(blind)))} cannot read {marker.parent}: workers must see the "
                "driver's DATA at the same path. Put DATA on a filesystem every node mounts (NFS, Lustre, a "
                "cloud filesystem mount) and give that path; see docs/cluster.md."
            )
        self._checked.add(nodes)

    def run(self, fn: Callable, tasks: Sequence[ShardTask], stage_dir: Path, config: Any,
            on_done: OnDone, on_tick: OnTick, stage: str = "") -> None:
        self.connect()
        self.check_storage(stage_dir)
        remote = ray.remote(_run_on_worker).options(
            num_cpus=self.num_cpus, memory=self.task_memory(stage), max_retries=self.max_retries,
            retry_exceptions=False, name=f"crawlgpt-{stage or 'stage'}",
        )
        cwd, where = os.getcwd(), absolute(stage_dir)
        config_ref = ray.put(config)
        refs = {remote.remote(fn, _absolute_inputs(t), where, config_ref, cwd): t for t in tasks}
        pending = list(refs)
        docs = 0
        last = time.monotonic()
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in ready:
                    stats = _result(ref, refs[ref], self.max_retries)
                    on_done(refs[ref], stats)
                    docs += stats.docs_in
                if ready or time.monotonic() - last > 0.5:
                    on_tick(docs)
                    last = time.monotonic()
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


def _absolute_inputs(task: ShardTask) -> ShardTask:
    """The task with its existing input paths made absolute (URLs and other strings untouched)."""
    return replace(task, inputs=tuple(absolute(p) if os.path.exists(p) else p for p in task.inputs))


def _result(ref: Any, task: ShardTask, retries: int) -> ShardStats:
    """The task's stats; its own exception re-raised as it was; a lost worker as WorkerLostError."""
    try:
        return ray.get(ref)
    except RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        raise cause from None
    except (WorkerCrashedError, TaskCancelledError) as err:
        raise WorkerLostError(
            f"shard {task.name}: its worker died {retries + 1} times ({type(err).__name__}); the node may be "
            "out of memory. Rerun to resume (finished shards are kept), or give tasks more memory."
        ) from err
