"""Process groups, devices and model wrapping (DDP or FSDP2) for `torchrun` launches.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/MASTER_PORT) for every process; a
plain `python` launch has none of them and runs as a single process without a process group.
The backend is NCCL on CUDA and gloo on CPU (gloo is what the CPU tests use).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from train.errors import TrainConfigError
from model.gpt import Block

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    """Global rank of this process (0 when not distributed)."""
    local_rank: int
    """Rank on this machine; picks the GPU."""
    world_size: int
    """Number of processes in the job."""
    device: torch.device
    """Device this process trains on."""
    group: Any = None
    """Process group the collectives below run over; None = all processes. Under tensor or pipeline
    parallelism the objective sees the data-parallel group only (train/parallel/)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """auto: cuda:LOCAL_RANK when CUDA is available, else cpu. Anything else is checked and used as given."""
    if requested == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise TrainConfigError("--device", f"{requested!r} is not a device ({err}); use auto, cpu, cuda or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainConfigError("--device", "cuda was asked for but torch has no CUDA here; install a "
                                   "CUDA build of torch or use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainConfigError("--device", "mps was asked for but is not available; use --device cpu")
    return device


def init_distributed(requested_device: str) -> DistContext:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
        log.info("joined process group: rank %d of %d (local rank %d) on %s, backend %s",
                 rank, world_size, local_rank, device, dist.get_backend())
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier(group=ctx.group)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=ctx.group)
    return tensor


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True when flag is true on at least one rank (so every rank takes the same branch)."""
    if not ctx.is_distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.group)
    return bool(t.item() > 0)


def fsdp_api():
    try:  # torch >= 2.6
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch 2.4-2.5
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a GPT, wherever it sits in a larger module (a head on top, a policy with a
    value head): FSDP2 shards each one, and --compile compiles each one."""
    return [m for m in model.modules() if isinstance(m, Block)]


def wrap_model(model: nn.Module, ctx: DistContext, parallelism: str, bf16: bool) -> nn.Module:
    """The module to call for training: the model itself (one process), a DDP replica, or the model
    sharded in place by FSDP2 (each block a unit, then the root, which holds embedding and head)."""
    if not ctx.is_distributed:
        return model
    if parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(model, device_ids=device_ids)
    if parallelism == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        fully_shard, MixedPrecisionPolicy = fsdp_api()
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        # Parameters are gathered in bf16 for compute; gradients are reduced in float32.
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        kwargs = {"mesh": mesh, **({"mp_policy": mp} if mp is not None else {})}
        for block in decoder_blocks(model):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    raise TrainConfigError("--parallelism", f"must be ddp or fsdp, got {parallelism!r}")


def gradient_sync(wrapped: nn.Module, sync: bool):
    """Context for one micro-step's backward: skip DDP's all-reduce on all but the last micro-step.

    FSDP2 reduce-scatters every micro-step (keeping gradients sharded is what saves its memory)."""
    if not sync and hasattr(wrapped, "no_sync") and not hasattr(wrapped, "set_requires_gradient_sync"):
        return wrapped.no_sync()
    return contextlib.nullcontext()
