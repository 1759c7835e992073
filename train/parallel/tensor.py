"""Tensor (and sequence) parallelism of the decoder blocks, and activation checkpointing."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn as nn

from train.distributed import decoder_blocks
from train.parallel.layout import Layout

log = logging.getLogger(__name__)


def apply_tensor_parallel(model: nn.Module, layout: Layout) -> None:
    """Split each block's matmuls across the tp ranks (in place). The attention modules then hold
    n_head / tp query heads and n_kv_head / tp key/value heads on each rank."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp_mesh = layout.mesh["tp"]
    plan = {"attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(),
            "ffn.w1": ColwiseParallel(), "ffn.w3": ColwiseParallel(), "ffn.w2": RowwiseParallel()}
    if layout.config.sequence_parallel:
        plan.update(_sequence_parallel_block_plan())
        _apply_sequence_parallel_ends(model, tp_mesh)
    for block in decoder_blocks(model):
        parallelize_module(block, tp_mesh, plan)
        block.attn.n_head //= layout.tp  # local heads: the views in the forward use these counts
        block.attn.n_kv_head //= layout.tp


def _sequence_parallel_block_plan() -> dict:
    """Norms on sequence shards; an all-gather before attention and feed-forward, a reduce-scatter after."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import PrepareModuleInput, RowwiseParallel, SequenceParallel

    return {"attn_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
            # Block calls attn(x, cos, sin, cache): only x is laid out
            "attn": PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                       desired_input_layouts=(Replicate(), None, None, None), use_local_output=True),
            "ffn": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                      use_local_output=True),
            "attn.wo": RowwiseParallel(output_layouts=Shard(1)), "ffn.w2": RowwiseParallel(output_layouts=Shard(1))}


def _apply_sequence_parallel_ends(model: nn.Module, tp_mesh) -> None:
    """The (replicated) embedding's output is cut into sequence shards, the final norm runs on them,
    and the (replicated) head gathers the whole sequence again: a tied embedding and head stay one
    plain parameter."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (PrepareModuleInput, PrepareModuleOutput, SequenceParallel,
                                                   parallelize_module)

    plan = {"tok_emb": PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "head": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                       use_local_output=True)}
    parallelize_module(model, tp_mesh, {name: style for name, style in plan.items() if hasattr(model, name)})


def _selective_policy():
    """Keep the outputs of matmuls, attention and collectives; recompute the cheap element-wise rest
    (norms, rotary embedding, SiLU, products), whose activations are most of the memory."""
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    save = {aten.mm.default, aten.addmm.default, aten.bmm.default}
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        if hasattr(aten, name):
            save.add(getattr(aten, name).default)
    if hasattr(torch.ops, "_c10d_functional"):
        for name in ("all_reduce", "reduce_scatter_tensor", "all_gather_into_tensor"):
            op = getattr(torch.ops._c10d_functional, name, None)
            if op is not None:
                save.add(op.default)

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Recompute each block's activations in the backward pass. The block's forward is replaced on the
    instance (no wrapper module), so parameter names and checkpoints stay the same."""
    if mode == "none":
        return
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _selective_policy())
    for block in decoder_blocks(model):
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kw):
            return checkpoint(_forward, *args, **kwargs, **kw)

        block.forward = checkpointed
