"""Gradients across the mesh: tied weights, data-parallel averaging, the global-norm clip."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn

from train.parallel.layout import Layout

log = logging.getLogger(__name__)


def _sync_tied_gradients(layout: Layout) -> None:
    """The tied embedding/head weight lives on the first and the last stage: its gradient is the sum."""
    p = layout.tied_param
    if p is None or layout.tied_group is None:
        return
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    grad = p.grad
    local = grad.to_local() if hasattr(grad, "to_local") else grad
    dist.all_reduce(local, group=layout.tied_group)


def _average_data_parallel_gradients(params: list[nn.Parameter], layout: Layout) -> None:
    """Mean of each gradient over the data-parallel replicas, in flat buckets of about 25 MB."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    group = layout.group("dp")
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, g in enumerate(grads):
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= 25 * 2**20 or i == len(grads) - 1:
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat, group=group)
            flat /= layout.dp
            for g_, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g_.copy_(reduced)
            bucket, size = [], 0


def clip_gradients(params: list[nn.Parameter], max_norm: float, layout: Layout) -> torch.Tensor:
    """Clip to a global gradient norm over every shard and stage; returns the norm before clipping.

    Without model parallelism this is `torch.nn.utils.clip_grad_norm_`. Otherwise each gradient's
    squared norm is summed locally, then over the mesh dimensions it is sharded on (DTensor
    placements), then over the pipeline stages, counting a tied weight once."""
    if not layout.model_parallel:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    from torch.distributed.tensor import DTensor, Replicate

    _sync_tied_gradients(layout)
    if layout.average_gradients:
        _average_data_parallel_gradients(params, layout)
    device = layout.world.device
    buckets: dict[tuple, torch.Tensor] = {}
    groups: dict[tuple, list] = {}
    locals_: list[torch.Tensor] = []
    skip = layout.tied_param if layout.pp > 1 and not layout.is_first_stage else None
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        if isinstance(g, DTensor) and any(placement.is_partial() for placement in g.placements):
            # a replicated weight fed by sequence shards (sequence parallel norms): sum the partial gradients
            g = p.grad = g.redistribute(g.device_mesh, [Replicate() if placement.is_partial() else placement
                                                         for placement in g.placements])
        if isinstance(g, DTensor):
            local = g.to_local()
            # sharded on every mesh dimension that is not replicated (Shard, FSDP2's _StridedShard under TP)
            dims = tuple(i for i, placement in enumerate(g.placements) if not placement.is_replicate())
            key = (id(g.device_mesh), dims)
            groups.setdefault(key, [g.device_mesh.get_group(i) for i in dims])
        else:
            local, key = g, ()
            groups.setdefault(key, [])
        locals_.append(local)
        if p is skip:
            continue  # counted on the first stage
        sq = local.detach().float().pow(2).sum()
        buckets[key] = buckets[key] + sq if key in buckets else sq
    total = torch.zeros((), device=device, dtype=torch.float32)
    for key, sq in sorted(buckets.items(), key=lambda kv: str(kv[0][1:])):
        for group in groups[key]:
            dist.all_reduce(sq, group=group)
        total += sq
    if layout.pp > 1:
        dist.all_reduce(total, group=layout.group("pp"))
    norm = total.sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for local in locals_:
        local.mul_(coef.to(local.dtype))
    return norm
