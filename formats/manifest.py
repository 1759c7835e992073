"""Atomic files, checksums, config hashes and stage manifests.

The contract between stages: a stage writes each output shard under a temporary name and renames it,
then writes a small *receipt* for the shard (its outputs with row counts and sha256, its counts, the
config hash and the fingerprint of its inputs), and at the very end `manifest.json`, which lists every
shard. A rerun trusts a shard only if its receipt exists, matches the current config and inputs, and
its output files still have the recorded size. Because the receipt is written after the outputs, a
stage killed at any moment leaves either a complete shard with its receipt or a shard that is redone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

MANIFEST_NAME = "manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    The temporary file lives in the same folder, so the rename is atomic on POSIX file systems; on
    failure it is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get normal permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


def listed_path(folder: str | Path, rel: str, listed_in: str | Path) -> Path:
    """`folder / rel` for a path a manifest or receipt lists, refusing one that leads outside `folder`.

    Manifests are files on disk that anyone can edit (or damage); a listed `../../x` must not make a
    stage read, trust or delete a file elsewhere. Raises ValueError naming the manifest.
    """
    folder = Path(folder)
    path = folder / rel
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    if Path(rel).is_absolute() or os.path.commonpath([root, real]) != root or real == root:
        raise ValueError(
            f"{listed_in} lists {rel!r}, which is not a file inside {folder}; the file was edited or damaged. "
            "Delete it and rerun the stage that writes it."
        )
    return path


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


#: Field metadata of a config field naming a file (a model) that matters by its content, which the stage
#: fingerprints in its `upstream` (sha256): the config records only the file's name, so the same
#: environment at another path is the same config, and a new file at the same path redoes the shards
#: (through `upstream`) instead of being refused as a config change.
OMIT_IF_NONE = {"omit_if_none": True}
BY_CONTENT = {"by_content": True}


def config_dict(config: Any) -> dict:
    """A JSON-able dict of a config dataclass (paths and tuples become strings and lists; fields marked
    `BY_CONTENT` keep only the file name; fields marked `OMIT_IF_NONE` are left out while None)."""
    raw = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    if dataclasses.is_dataclass(config):
        for f in dataclasses.fields(config):
            if f.metadata.get("by_content") and raw.get(f.name):
                raw[f.name] = os.path.basename(str(raw[f.name]))
            if f.metadata.get("omit_if_none") and raw.get(f.name) is None:
                del raw[f.name]  # a field added later: configs recorded before it keep their hash
    return json.loads(json.dumps(raw, default=str, sort_keys=True))


def config_hash(config: Any) -> str:
    """Stable short hash of a config: equal configs hash equal across runs and machines."""
    blob = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """A cheap identity for an input file: its name, size and modification time.

    Hashing every input on every rerun would cost as much as reading it; like `make`, we trust size and
    mtime. A change further upstream (a new model, another stage's config) reaches a shard through the
    `upstream` fingerprint that `stage.run_stage` mixes in.
    """
    p = Path(path)
    st = p.stat()
    return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"


def output_record(path: str | Path, rows: int, base: str | Path) -> dict:
    """The manifest entry of one output file: its path relative to the stage folder, rows, bytes, sha256."""
    p = Path(path)
    return {
        "path": str(p.relative_to(base)),
        "rows": rows,
        "bytes": p.stat().st_size,
        "sha256": sha256_file(p),
    }


def _is_timing(key: str) -> bool:
    return "elapsed" in key or key.endswith("_per_s")


def without_timings(obj: Any) -> Any:
    """`obj` without timings (keys containing "elapsed" or ending in "_per_s"), which differ run to run."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not _is_timing(k)}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def manifest_hash(stage_dir: str | Path) -> str | None:
    """A content fingerprint of a finished stage's manifest, or None if the stage has not finished.

    Timings (see `without_timings`) are left out: a rerun that skips every shard rewrites the
    manifest with new timings, and that must not make downstream stages redo their work.
    """
    p = Path(stage_dir) / MANIFEST_NAME
    if not p.exists():
        return None
    blob = json.dumps(without_timings(read_json(p)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def load_manifest(stage_dir: str | Path) -> dict | None:
    p = Path(stage_dir) / MANIFEST_NAME
    return read_json(p) if p.exists() else None
