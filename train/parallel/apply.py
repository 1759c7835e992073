"""Putting it together: a model laid out for tp/pp/dp, wrapped for data parallelism, and the module
evaluation calls."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn

from train.distributed import decoder_blocks
from train.errors import TrainConfigError
from model.gpt import GPT
from train.distributed import fsdp_api
from train.parallel.layout import Layout, stage_layers
from train.parallel.pipeline import Pipeline, PipelineForward, PipelineStageModule
from train.parallel.tensor import apply_activation_checkpointing, apply_tensor_parallel

log = logging.getLogger(__name__)


def apply_layout(model: nn.Module, layout: Layout) -> nn.Module:
    """This rank's part of the model: its pipeline stage, its tensor-parallel shards, with activation
    checkpointing as configured. Call after the model is initialised and on its device."""
    if layout.pp > 1:
        if not isinstance(model, GPT):
            raise TrainConfigError("--pp", f"pipeline parallelism splits a plain GPT, not a {type(model).__name__}")
        layers = stage_layers(model.config.n_layer, layout.pp, layout.config.pp_layers)[layout.pp_rank]
        tied = model.config.tie_embeddings
        model = PipelineStageModule(model, layers, layout.is_first_stage, layout.is_last_stage)
        log.info("pipeline stage %d of %d: blocks %d-%d%s%s", layout.pp_rank, layout.pp, layers.start,
                 layers.stop - 1, ", embedding" if layout.is_first_stage else "",
                 ", norm and head" if layout.is_last_stage else "")
        if tied:
            _make_tied_groups(layout)
            if layout.is_first_stage:
                layout.tied_name = "tok_emb.weight"
            elif layout.is_last_stage:
                layout.tied_name = "head.weight"
            _resolve_tied_param(model, layout)
    if layout.tp > 1:
        apply_tensor_parallel(model, layout)
    apply_activation_checkpointing(model, layout.config.activation_checkpointing)
    return model


def _make_tied_groups(layout: Layout) -> None:
    """One group per (dp, tp) position holding its first and last stage (every rank creates all)."""
    mesh = layout.mesh.mesh  # (pp, dp, tp) global ranks
    for d in range(layout.dp):
        for t in range(layout.tp):
            ranks = [int(mesh[0, d, t]), int(mesh[-1, d, t])]
            group = dist.new_group(ranks)
            if d == layout.dp_rank and t == layout.tp_rank:
                layout.tied_group = group


def wrap_model_parallel(model: nn.Module, layout: Layout, parallelism: str, bf16: bool) -> nn.Module:
    """Data parallelism over the dp dimension of a tensor/pipeline-parallel model; builds the pipeline."""
    wrapped = model
    if layout.dp > 1:
        if parallelism == "fsdp":
            fully_shard, MixedPrecisionPolicy = fsdp_api()
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
            kwargs = {"mesh": layout.mesh["dp"], **({"mp_policy": mp} if mp is not None else {})}
            for block in decoder_blocks(model):
                fully_shard(block, **kwargs)
            fully_shard(model, **kwargs)
        else:
            layout.average_gradients = True
    if layout.pp > 1:
        _resolve_tied_param(model, layout)
        layout.pipeline = Pipeline(model, wrapped, layout)
    return wrapped


def _resolve_tied_param(model: nn.Module, layout: Layout) -> None:
    if layout.tied_name is not None:
        layout.tied_param = dict(model.named_parameters())[layout.tied_name]


def eval_module(model: nn.Module, wrapped: nn.Module, layout: Layout) -> nn.Module:
    """What evaluation calls like a GPT: the pipeline's forward-only pass, or the (sharded) model."""
    if layout.pp > 1:
        return PipelineForward(model, layout)
    return wrapped if layout.dp > 1 else model
