"""Where stage folders live: the one seam between the pipeline and its storage.

Today every path is a local (or mounted) filesystem path: on a cluster, `DATA` must be on a filesystem
every node mounts at the same path (NFS, Lustre, a cloud filesystem mount), as datatrove's Slurm and
Ray executors also require. The runner resolves stage folders through `stage_path`, so object-store
URIs (s3://, gs://) can be added here later without touching the stages; until then they are refused
with a message that says what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import ConfigError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def stage_path(path: str | Path) -> Path:
    """The local path of a stage folder; ConfigError for a URI (object stores are not supported yet)."""
    text = str(path)
    if _URI.match(text):
        raise ConfigError(
            "--data",
            f"{text!r} is a URI; object stores are not supported yet. Mount the bucket as a filesystem "
            "(s3fs, gcsfuse, ...) on every node and give its local path.",
        )
    return Path(path)


def absolute(path: str | Path) -> str:
    """`path` made absolute, for handing to a process that may run elsewhere (another node)."""
    return str(Path(path).absolute())
