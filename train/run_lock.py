"""One training at a time per run folder: rank 0 holds an exclusive `flock` on DATA/runs/RUN/.lock for
the whole run, and a second training into the same folder stops at once with a one-line error.

Without it two runs replace each other's checkpoints and interleave metrics.jsonl. The lock is the
kernel's: it goes away with the process that held it (also on SIGKILL), so no stale lock is left to
clean up. Under torchrun the lock belongs to rank 0's worker: killing only the `torchrun` launcher
leaves its workers (and so the lock) alive; stop the workers too.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from train.errors import RunDirError

LOCK_NAME = ".lock"


def _try_lock(run_dir: Path) -> tuple[int | None, str]:
    """(open descriptor holding the lock, "") or (None, what the lock file says about its holder)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip()
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd, ""


@contextmanager
def run_folder_lock(run_dir: str | Path, is_main: bool, any_rank: Callable[[bool], bool]) -> Iterator[None]:
    """Hold the run folder's lock (rank 0) while the body runs; every rank raises when it is taken.

    any_rank(flag) is True on every rank when flag is True on one (a collective under torchrun)."""
    run_dir = Path(run_dir)
    created = is_main and not run_dir.exists()
    fd, holder = _try_lock(run_dir) if is_main else (None, "")
    if any_rank(is_main and fd is None):
        who = f" (process {holder})" if holder.isdigit() else ""
        raise RunDirError(f"{run_dir} is in use by another training{who}: wait for it to end or stop it, or choose "
                          f"another --run (stopping torchrun alone leaves its workers running: stop them too)")
    try:
        yield
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            _remove_if_only_the_lock(run_dir, created)


def _remove_if_only_the_lock(run_dir: Path, created: bool) -> None:
    """A run that failed before writing anything (a bad option, say) leaves no folder it made behind."""
    if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()
