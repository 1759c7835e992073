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
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
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

from model.gpt import GPT, GPTConfig
from train.errors import CheckpointError, CheckpointMismatchError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


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
    """A checkpoint file, or a run folder (its newest checkpoint)."""
    path = Path(path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest keep_last checkpoints; returns the deleted paths."""
    found = list_checkpoints(run_dir)
    doomed = found[:-keep_last] if keep_last > 0 else found
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


# ------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file (tensors and plain values only: weights_only=True)."""
    path = Path(path)
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
