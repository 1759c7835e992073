"""Checkpoints: everything needed to continue a run exactly, written atomically, read without pickle.

A checkpoint is one file `<run>/checkpoints/step-00001234.pt` holding the model and optimizer state,
the step, the data loader's state, the RNG state of python, numpy and torch (CPU and CUDA), both
configs (model and training, as plain dicts) and what the data was (vocab size, end-of-text id,
tokenizer hash). It is written under a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the real name; only the newest `keep_last` are kept.

Only tensors and plain Python values are stored, so loading uses `torch.load(weights_only=True)`,
which refuses arbitrary pickled objects. Model and optimizer state go through
`torch.distributed.checkpoint.state_dict`, which gives the same full, unsharded layout for a plain
model, a DDP replica or an FSDP2-sharded model, so a checkpoint from any of them resumes in any other.

Under tensor or pipeline parallelism (train/parallel/) no rank holds the whole model, so a
checkpoint is a folder `<run>/checkpoints/step-00001234.dcp/` written with
`torch.distributed.checkpoint` (DCP): every rank writes its own shards, `.metadata` says which
slice of which tensor is where, and `meta.pt` (rank 0, weights-only) holds everything else. DCP
reshards on load, so such a folder resumes under any other layout (TP=2 saved, one process
resumed, and the reverse), and `load_checkpoint` reads it in one process as a full state dict
(`evaluate`, `sample` and export need nothing else). DCP's own reader unpickles `.metadata` and
its byte entries; the reader here restricts both to tensors, plain values and DCP's own metadata
classes, as `weights_only=True` does for files.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from formats.manifest import atomic_path
from model.gpt import GPT, GPTConfig
from train.errors import CheckpointError, CheckpointMismatchError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.(pt|dcp)$")
#: The file in a DCP checkpoint folder that holds everything but the model and optimizer tensors.
DCP_META = "meta.pt"


def checkpoint_path(run_dir: str | Path, step: int, sharded: bool = False) -> Path:
    """step-N.pt (one file) or step-N.dcp (a torch.distributed.checkpoint folder)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.{'dcp' if sharded else 'pt'}"


def is_sharded_checkpoint(path: str | Path) -> bool:
    """True for a DCP checkpoint folder (it has DCP's .metadata file)."""
    return (Path(path) / ".metadata").is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first (temporary files of interrupted writes are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def list_checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the checkpoints a run folder holds, oldest first."""
    return [int(_NAME.match(p.name).group(1)) for p in list_checkpoints(run_dir)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file or DCP folder, or a run folder (its newest checkpoint)."""
    path = Path(path)
    if path.is_dir() and (is_sharded_checkpoint(path) or _NAME.match(path.name)):
        return path  # a DCP folder (load_checkpoint says what is missing from a damaged one)
    if path.is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"{path} holds no checkpoints under {CHECKPOINT_DIR}/; train first "
                                  f"(`crawlgpt pretrain`) or pass a checkpoint file")
        return newest
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a checkpoint file or a run folder")
    return path


# ------------------------------------------------------------------------------------------------
# RNG state of every library, as tensors and plain values (loadable with weights_only=True)


def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"],
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning("checkpoint has CUDA RNG state for %d devices, this machine has %d: not restored",
                        len(cuda_states), torch.cuda.device_count())


# ------------------------------------------------------------------------------------------------
# Saving


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) model state on CPU. Collective under FSDP: every rank must call it."""
    return get_model_state_dict(model, options=_FULL)


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name. Collective under FSDP: every rank must call it."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write payload to path atomically: a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest keep_last checkpoints; returns the deleted paths."""
    found = list_checkpoints(run_dir)
    doomed = found[:-keep_last] if keep_last > 0 else found
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return doomed


# ------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str | Path, weights: bool = True) -> dict[str, Any]:
    """Read a checkpoint file (tensors and plain values only: weights_only=True) or a DCP folder.

    For a DCP folder, "model" is the full model state assembled from every rank's shards (skipped
    with weights=False, when the training loop loads the shards straight into its own layout);
    "optimizer" is left out (resume reads it with `load_sharded`)."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        return _load_dcp_payload(path, weights)
    if path.is_dir() and path.suffix == ".dcp":
        raise CheckpointError(f"{path} has no .metadata; the sharded checkpoint is incomplete: delete its folder to "
                              f"use the previous one")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False: for a file from elsewhere that means running
        # its code. We never say so; `from None` keeps that hint out of any traceback too.
        raise CheckpointError(
            f"{path} is not a checkpoint this tool wrote: it asks to build Python objects other than tensors "
            "and plain values, which would run code from the file, so it was not loaded. Use a checkpoint "
            "written by `crawlgpt pretrain`; if this was your newest one, delete it to resume from the previous one."
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated zip, not a torch file, ...
        detail = str(err).splitlines()[0] if "weights_only" not in str(err) else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {detail}; it is corrupt or not written by "
                              f"this trainer: delete it to resume from the previous one") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a crawlgpt checkpoint of format {CHECKPOINT_FORMAT} (got {got})")
    for key in ("step", "model", "model_config"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry; it is incomplete")
    return payload


def check_model_config(payload: dict[str, Any], config: GPTConfig, path: str | Path) -> None:
    """Raise CheckpointMismatchError naming every model field that differs from the checkpoint's."""
    saved = payload["model_config"]
    wanted = config.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k]]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {path} was made with a different model config ({'; '.join(diffs)}); "
            f"use the preset and options it was trained with, or start a new run with another --run name")


def model_from_checkpoint(payload: dict[str, Any]) -> GPT:
    """A GPT built from the checkpoint's own config with its weights loaded (for evaluation, sampling)."""
    model = GPT(GPTConfig.from_dict(payload["model_config"]))
    load_model_state(model, payload["model"])
    return model


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full model state into a plain, DDP-wrapped or FSDP2-sharded model (every rank calls it)."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


# ------------------------------------------------------------------------------------------------
# Sharded checkpoints (torch.distributed.checkpoint folders)


def save_sharded(path: str | Path, state: dict[str, Any], meta: dict[str, Any], is_main: bool,
                 barrier) -> Path:
    """Every rank writes its part of state (model and optimizer, DTensor shards included) into a
    temporary folder; rank 0 adds meta.pt and renames the folder to path. Collective: every rank calls
    it, with barrier() a barrier over all of them. On several nodes the run folder must be shared."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp)))
    if is_main:
        with open(tmp / DCP_META, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **meta}, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    barrier()
    return path


def load_sharded(path: str | Path, state: dict[str, Any], no_dist: bool = False) -> None:
    """Fill state (tensors and DTensors of this rank's layout) in place from a DCP folder written under
    any layout. Collective unless no_dist."""
    import torch.distributed.checkpoint as dcp

    from torch.distributed.checkpoint.api import CheckpointException

    # Read (and so vet) .metadata here first: a refused one is then a CheckpointError, not wrapped by DCP
    # into a CheckpointException (a BaseException) with every rank's traceback.
    _SafeReader(str(path)).read_metadata()
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.load(state, storage_reader=_SafeReader(str(path)), planner=_safe_planner(), no_dist=no_dist)
    # CheckpointException derives from BaseException (not Exception): caught by name, or it escapes
    # as a traceback of every rank's stack.
    except (Exception, CheckpointException) as err:
        raise CheckpointError(f"cannot read sharded checkpoint {path}: {_first_failure(err)}; it is incomplete, "
                              f"corrupt or from another model: delete it to resume from the previous one") from None


def _first_failure(err: BaseException) -> str:
    """One line for a DCP failure: the first rank's own exception, not DCP's multi-rank traceback."""
    failures = getattr(err, "failures", None)
    if failures:
        err = next(iter(failures.values()))[0]
    lines = str(err).strip().splitlines()
    if not lines or "weights_only" in str(err):  # torch's hint to load unsafely is never passed on
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0]}"


def read_dcp_metadata(path: str | Path):
    """DCP's .metadata of a checkpoint folder (through the restricted unpickler), or a CheckpointError
    when it is missing, empty, truncated or not DCP metadata."""
    path = Path(path)
    try:
        return _SafeReader(str(path)).read_metadata()
    except pickle.UnpicklingError as err:  # refused by the restricted unpickler, or not a pickle at all
        raise CheckpointError(f"cannot read {path / '.metadata'}: {_first_failure(err)}; the checkpoint is "
                              f"corrupt or not written by this trainer: delete its folder") from None
    except (Exception, EOFError) as err:  # empty or truncated: EOFError, which click would show as "Aborted!"
        raise CheckpointError(f"cannot read {path / '.metadata'}: {_first_failure(err)}; the checkpoint is "
                              f"incomplete or corrupt: delete its folder to use the previous one") from None


def _load_dcp_payload(path: Path, weights: bool) -> dict[str, Any]:
    meta_path = path / DCP_META
    if not meta_path.is_file():
        raise CheckpointError(f"{path} has no {DCP_META}; the checkpoint was not finished: delete it")
    payload = _load_meta(meta_path)
    if weights:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        metadata = read_dcp_metadata(path)
        state = {key: torch.empty(md.size, dtype=md.properties.dtype)
                 for key, md in metadata.state_dict_metadata.items()
                 if key.startswith("model.") and isinstance(md, TensorStorageMetadata)}
        load_sharded(path, state, no_dist=True)
        payload["model"] = {key[len("model."):]: value for key, value in state.items()}
    return payload


def _load_meta(meta_path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(meta_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would suggest weights_only=False: never shown
        raise CheckpointError(f"{meta_path} is not a checkpoint this tool wrote: it asks to build Python objects "
                              f"other than tensors and plain values, which would run code from the file, so it was "
                              f"not loaded; delete the checkpoint folder") from None
    except (Exception, EOFError) as err:  # noqa: BLE001 - truncated, empty, not a torch file
        raise CheckpointError(f"cannot read {meta_path}: {_first_failure(err)}; the checkpoint is corrupt: delete "
                              f"its folder") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{meta_path} is not a crawlgpt checkpoint of format {CHECKPOINT_FORMAT}")
    for key in ("step", "model_config"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {meta_path} has no {key!r} entry; it is incomplete")
    return payload


class MetadataRefusedError(CheckpointError, pickle.UnpicklingError):
    """A DCP .metadata file names something other than DCP metadata, sizes and dtypes: never loaded."""


#: Every (module, name) that DCP's .metadata pickles (torch 2.x's metadata and filesystem modules); a
#: name outside this list, or any dotted name, is refused.
_DCP_NAMES = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.planner", "LoadItemType"),
    ("torch.distributed.checkpoint.planner", "WriteItemType"),
    ("torch.serialization", "_get_layout"),  # a layout by its name
    ("torch", "Size"), ("torch", "device"), ("torch", "dtype"), ("torch", "layout"), ("torch", "memory_format"),
    ("collections", "OrderedDict"),
} | {("builtins", name) for name in ("set", "frozenset", "tuple", "list", "dict", "slice", "range", "complex",
                                    "bytearray")} \
  | {("pathlib", name) for name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's .metadata: an explicit list of its dataclasses, torch sizes, dtypes and layouts.

    A dotted name is refused outright: protocol 4 resolves `module` + `a.b` as getattr(getattr(module,
    "a"), "b"), so an allowed module would otherwise hand out everything it imports (`os.system`)."""

    def find_class(self, module: str, name: str):
        if "." not in name and ((module, name) in _DCP_NAMES or self._is_torch_constant(module, name)):
            return super().find_class(module, name)
        raise MetadataRefusedError(f"refusing {module}:{name} in a checkpoint's .metadata (only DCP metadata, "
                                   f"sizes and dtypes are loaded): the checkpoint was not written by this "
                                   f"trainer, do not use it")

    @staticmethod
    def _is_torch_constant(module: str, name: str) -> bool:
        """torch.float32, torch.strided, torch.contiguous_format, ...: dtypes, layouts, memory formats."""
        return module == "torch" and isinstance(getattr(torch, name, None),
                                                (torch.dtype, torch.layout, torch.memory_format))


def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def _SafeReader(path: str):
    return _safe_reader_class()(path)


def _safe_planner():
    """DCP's default load planner, reading byte entries (optimizer hyperparameters) weights-only."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeLoadPlanner()
