"""State dicts with the same names in every layout (so a checkpoint reshards to any other layout)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from train.checkpoint import load_sharded
from train.checkpoint import load_model_state, load_optimizer_state
from train.parallel.layout import Layout

log = logging.getLogger(__name__)


_TIED = ("tok_emb.weight", "head.weight")


def model_state(model: nn.Module, layout: Layout) -> dict[str, Any]:
    """This rank's (sharded) model state under the unsplit model's names; a tied weight appears
    under both names, as in a GPT's own state dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model)
    if layout.tied_param is not None:
        present = next(name for name in _TIED if name in state)
        for name in _TIED:
            state[name] = state[present]
    return state


def _rename_optimizer_keys(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        for prefix in ("state.", "param_groups."):
            if key.startswith(prefix + old + "."):
                key = prefix + new + key[len(prefix + old):]
        out[key] = value
    return out


def _optim_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, layout: Layout) -> dict[str, Any]:
    """This rank's optimizer state, flattened (one key per parameter and field) and named as for the
    unsplit model: a tied weight's state is under tok_emb.weight, as a GPT's optimizer has it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_optim_options())
    if layout.tied_param is not None and layout.is_last_stage:
        state = _rename_optimizer_keys(state, "head.weight", "tok_emb.weight")
    return state


def restore_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path, layout: Layout) -> None:
    """Load a DCP checkpoint folder written under any layout into this rank's part (collective)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict


    state = {"model": model_state(model, layout), "optimizer": optimizer_state(model, optimizer, layout)}
    load_sharded(path, state)
    model_sd = {k: v for k, v in state["model"].items() if k in _own_state_names(model)}
    set_model_state_dict(model, model_sd)
    optim_sd = state["optimizer"]
    if layout.tied_param is not None and layout.is_last_stage:
        optim_sd = _rename_optimizer_keys(optim_sd, "tok_emb.weight", "head.weight")
    set_optimizer_state_dict(model, optimizer, optim_sd, options=_optim_options())


def _own_state_names(model: nn.Module) -> set[str]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return set(get_model_state_dict(model).keys())


def restore_full(model: nn.Module, optimizer: torch.optim.Optimizer, payload: dict[str, Any],
                 layout: Layout) -> None:
    """Load a single-file checkpoint (full state) into this rank's part: TP shards it, PP keeps the
    stage's own entries."""
    model_sd, optim_sd = payload["model"], payload["optimizer"]
    if layout.pp > 1:
        own = _own_state_names(model)
        model_sd = {k: v for k, v in model_sd.items() if k in own}
        rename = {"tok_emb.weight": "head.weight"} if layout.tied_param is not None and layout.is_last_stage else {}
        state = {rename.get(k, k): v for k, v in optim_sd["state"].items() if rename.get(k, k) in own}
        param_groups = []
        for group in optim_sd["param_groups"]:
            names = [rename.get(k, k) for k in group["params"]]
            param_groups.append({**group, "params": [n for n in names if n in own]})
        optim_sd = {"state": state, "param_groups": param_groups}
    load_model_state(model, model_sd)
    load_optimizer_state(model, optimizer, optim_sd)
