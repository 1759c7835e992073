"""The layout of a run: the device mesh (dp x pp x tp), its process groups and this rank's coordinates;
checks of a model against it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from train.config import ParallelConfig
from train.distributed import DistContext
from train.errors import TrainConfigError

log = logging.getLogger(__name__)


@dataclass
class Layout:
    """How this job's processes split the work, and this process's place in it."""

    config: ParallelConfig
    world: DistContext
    dp: int
    """Data-parallel replicas (world size / (tp * pp))."""
    mesh: Any = None
    """DeviceMesh of shape (pp, dp, tp) with those dimension names; None for one process."""
    data_ctx: DistContext | None = None
    """The data-parallel view the objective and its loader see (rank and size within dp)."""
    pp_rank: int = 0
    tp_rank: int = 0
    dp_rank: int = 0
    tied_group: Any = None
    """Group of the first and last pipeline stage of this (dp, tp) position (tied embeddings)."""
    tied_name: str | None = None
    """Name of this stage's copy of a tied embedding/head weight (first or last stage only)."""
    tied_param: nn.Parameter | None = None
    """That parameter (looked up again after FSDP2 replaces parameters with sharded ones)."""
    pipeline: Any = None
    """The `Pipeline` when pp > 1."""
    average_gradients: bool = False
    """Data parallel by an all-reduce of the accumulated gradients over dp before clipping (DDP's
    semantics; DDP itself neither takes DTensor parameters nor several pipeline forwards per backward)."""

    @property
    def tp(self) -> int:
        return self.config.tp

    @property
    def pp(self) -> int:
        return self.config.pp

    @property
    def model_parallel(self) -> bool:
        return self.tp > 1 or self.pp > 1

    @property
    def model_parallel_size(self) -> int:
        """Processes that hold one copy of the model between them (and see the same batch)."""
        return self.tp * self.pp

    @property
    def sharded_checkpoints(self) -> bool:
        fmt = self.config.checkpoint_format
        return fmt == "dcp" or (fmt == "auto" and self.model_parallel)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def group(self, dim: str):
        return self.mesh.get_group(dim)

    def rank_at(self, pp_rank: int) -> int:
        """Global rank of the process at pipeline stage pp_rank with this process's dp and tp position."""
        return int(self.mesh.mesh[pp_rank, self.dp_rank, self.tp_rank])


def make_layout(config: ParallelConfig, ctx: DistContext, parallelism: str, kind: str) -> Layout:
    """Check the layout against the world size and the kind of training, then build the mesh.

    Called before the data or the model exist; every rank calls it (the mesh is collective)."""
    tp, pp, world = config.tp, config.pp, ctx.world_size
    if (tp > 1 or pp > 1) and kind != "pretrain":
        raise TrainConfigError("--tp / --pp", f"tensor and pipeline parallelism are supported for pretraining "
                               f"only, not for {kind} runs; use --parallelism fsdp to fit a large model")
    if config.checkpoint_format == "dcp" and kind != "pretrain":
        raise TrainConfigError("--checkpoint-format", f"dcp folders are written for pretraining runs only; {kind} "
                               f"checkpoints keep their own layout in one file (use file or auto)")
    if config.sequence_parallel and tp == 1:
        raise TrainConfigError("--sequence-parallel", "needs --tp > 1 (it splits what tensor parallelism replicates)")
    if config.sequence_parallel and pp > 1:
        raise TrainConfigError("--sequence-parallel", "is not implemented with --pp (stages would pass sequence "
                               "shards); use it with --tp alone or with --parallelism fsdp")
    if world % (tp * pp) != 0:
        raise TrainConfigError("--tp / --pp", f"tp x pp = {tp} x {pp} = {tp * pp} does not divide the world size "
                               f"{world}; start torchrun with a multiple of {tp * pp} processes "
                               f"(--nproc-per-node x --nnodes)")
    dp = world // (tp * pp)
    if pp > 1 and config.pp_schedule == "1f1b" and config.pipeline_microbatches < pp:
        raise TrainConfigError("--microbatches", f"the 1F1B schedule needs at least as many micro-batches as stages "
                               f"({pp}), got {config.pipeline_microbatches}")
    layout = Layout(config=config, world=ctx, dp=dp, data_ctx=ctx)
    if world == 1 or not layout.model_parallel:  # plain DDP/FSDP: train.distributed as before
        return layout
    from torch.distributed.device_mesh import init_device_mesh

    layout.mesh = init_device_mesh(ctx.device.type, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))
    layout.pp_rank = layout.mesh.get_local_rank("pp")
    layout.dp_rank = layout.mesh.get_local_rank("dp")
    layout.tp_rank = layout.mesh.get_local_rank("tp")
    layout.data_ctx = DistContext(rank=layout.dp_rank, local_rank=ctx.local_rank, world_size=dp, device=ctx.device,
                                  group=layout.group("dp") if dp < world else None)
    if ctx.is_main and layout.model_parallel:
        log.info("layout: %d processes = pp %d x dp %d (%s) x tp %d", world, pp, dp, parallelism, tp)
    return layout


def check_model_layout(layout: Layout, model_config, micro_batch_size: int, seq_len: int | None = None) -> None:
    """Refuse a model the layout cannot split (before the model is built)."""
    tp, pp, cfg = layout.tp, layout.pp, layout.config
    if cfg.sequence_parallel and seq_len is not None and seq_len % tp != 0:
        raise TrainConfigError("--sequence-parallel", f"--tp {tp} does not divide the sequence length {seq_len}")
    if tp > 1:
        if model_config.n_head % tp != 0:
            raise TrainConfigError("--tp", f"{tp} does not divide the model's {model_config.n_head} attention heads; "
                                   f"choose a --tp that divides {model_config.n_head}")
        if model_config.kv_heads % tp != 0:
            raise TrainConfigError("--tp", f"{tp} does not divide the model's {model_config.kv_heads} key/value heads "
                                   f"(grouped-query attention splits them across ranks); choose a --tp that "
                                   f"divides {model_config.kv_heads}")
        if model_config.hidden_dim % tp != 0:
            raise TrainConfigError("--tp", f"{tp} does not divide the feed-forward width {model_config.hidden_dim}")
    if pp > 1:
        if pp > model_config.n_layer:
            raise TrainConfigError("--pp", f"{pp} stages for a model of {model_config.n_layer} blocks; each stage "
                                   f"needs at least one block, so use --pp {model_config.n_layer} or less")
        if cfg.pp_layers is not None and sum(cfg.pp_layers) != model_config.n_layer:
            raise TrainConfigError("--pp-layers", f"{','.join(map(str, cfg.pp_layers))} sums to {sum(cfg.pp_layers)}, "
                                   f"but the model has {model_config.n_layer} blocks")
        if micro_batch_size % cfg.pipeline_microbatches != 0:
            raise TrainConfigError("--microbatches", f"{cfg.pipeline_microbatches} pipeline micro-batches do not "
                                   f"divide --micro-batch {micro_batch_size}")


def stage_layers(n_layer: int, pp: int, pp_layers: tuple[int, ...] | None = None) -> list[range]:
    """The blocks of each stage: pp_layers as given, else an even split (earlier stages take the rest)."""
    if pp_layers is None:
        base, extra = divmod(n_layer, pp)
        pp_layers = tuple(base + (1 if s < extra else 0) for s in range(pp))
    starts = [sum(pp_layers[:s]) for s in range(pp)]
    return [range(start, start + n) for start, n in zip(starts, pp_layers)]
