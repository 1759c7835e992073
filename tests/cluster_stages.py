"""Stage functions for the Ray tests, importable by name on the cluster's workers (tests/ is on their
PYTHONPATH, see the `ray_cluster` fixture)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.stage import ShardStats, ShardTask


@dataclass(frozen=True)
class DieOnce:
    """Wraps a stage function: the first attempt at each shard writes part of an output and then kills
    its own worker process (SIGKILL, as the kernel's OOM killer would); later attempts run `fn`."""

    fn: Callable[[ShardTask, Path, object], ShardStats]
    marker_dir: str

    def __call__(self, task: ShardTask, stage_dir: Path, config) -> ShardStats:
        marker = Path(self.marker_dir) / f"{task.name}.died"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            (stage_dir / f".{task.name}.parquet.partial.tmp").write_bytes(b"half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
        return self.fn(task, stage_dir, config)
