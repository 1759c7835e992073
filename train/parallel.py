"""Model parallelism: tensor and pipeline parallelism on a device mesh, and activation checkpointing.

The world of `torchrun` processes is laid out as a (pp, dp, tp) mesh, the way torchtitan does it:
`--tp` ranks next to each other (one node's fast links) split every block's matmuls, `--pp` groups of
them each hold a consecutive share of the blocks, and what remains of the world size is data
parallel: `--parallelism fsdp` shards each stage over the dp dimension (FSDP2), `ddp` averages the
accumulated gradients over it once per step (DDP's semantics; DDP itself neither takes DTensor
parameters nor several pipeline forwards per backward). Everything is PyTorch's own:

- tensor parallelism: DTensor's `parallelize_module`, q/k/v and the SwiGLU gate/up projections split
  column-wise (by heads, so grouped-query key/value heads split too), the attention output and the
  down projection row-wise (one all-reduce after each). Embedding, norms and head stay replicated,
  or with sequence parallelism the norms and the residual stream split along the sequence.
- pipeline parallelism: `torch.distributed.pipelining` with a GPipe or 1F1B schedule; each stage is
  a `PipelineStageModule` that keeps GPT's attribute names, so parameter names, and so checkpoints,
  are the same in every layout. A tied embedding/head is kept on the first and the last stage and
  its gradient summed across them (Megatron-LM's embedding group).
- activation checkpointing: each block's forward recomputed in the backward (full), or everything
  but matmul, attention and collective outputs recomputed (selective, torch's op-level policy).

`train.loop` asks this module for a `Layout` before any work starts (bad layouts fail there),
lets it turn the built model into this rank's part (`apply_layout`), and calls
`clip_gradients` instead of `torch.nn.utils.clip_grad_norm_` so that the global norm spans every
shard and stage. With tp = pp = 1 and no activation checkpointing nothing here changes the model.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from train.config import ParallelConfig
from train.distributed import DistContext, decoder_blocks
from train.errors import TrainConfigError
from model.gpt import GPT
from train.distributed import fsdp_api
from train.checkpoint import load_sharded
from train.checkpoint import load_model_state, load_optimizer_state

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# The layout: mesh, groups and this rank's coordinates


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


# ------------------------------------------------------------------------------------------------
# Pipeline stages


class PipelineStageModule(nn.Module):
    """One pipeline stage of a GPT: its blocks, plus the token embedding (first stage) or the final
    norm and output head (last stage). Attribute names are GPT's, and `blocks` is keyed by the block's
    index in the whole model, so parameter names, and so checkpoints, match the unsplit model."""

    def __init__(self, gpt: nn.Module, layers: range, first: bool, last: bool):
        super().__init__()
        self.config = gpt.config
        self.first, self.last = first, last
        if first:
            self.tok_emb = gpt.tok_emb
        self.blocks = nn.ModuleDict({str(i): gpt.blocks[i] for i in layers})
        if last:
            self.norm = gpt.norm
            self.head = gpt.head
        self.register_buffer("rope_cos", gpt.rope_cos, persistent=False)  # (max_seq_len, hd/2)
        self.register_buffer("rope_sin", gpt.rope_sin, persistent=False)  # (max_seq_len, hd/2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """First stage: token ids (B, T); later stages: hidden states (B, T, C). The last stage returns
        logits (B, T, V), the others hidden states (B, T, C)."""
        T = x.size(1)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # each (T, hd/2)
        if self.first:
            x = self.tok_emb(x)  # (B, T, C)
        for block in self.blocks.values():
            x = block(x, cos, sin)  # (B, T, C)
        if self.last:
            x = self.head(self.norm(x))  # (B, T, V)
        return x


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # float32, as GPT.forward does: bf16 logits lose too much precision in the log-sum-exp
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)


class Pipeline:
    """The schedule that runs forward and backward of one micro-batch through every stage."""

    def __init__(self, stage_module: nn.Module, wrapped: nn.Module, layout: Layout):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.layout = layout
        self.module = stage_module
        self.n_microbatches = layout.config.pipeline_microbatches
        self._scale = 1.0
        stage = PipelineStage(wrapped, layout.pp_rank, layout.pp, layout.world.device, group=layout.group("pp"))
        schedule = ScheduleGPipe if layout.config.pp_schedule == "gpipe" else Schedule1F1B
        # scale_grads=False: the loss function itself divides by every micro-batch the step is made of
        self.schedule = schedule(stage, self.n_microbatches, loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(logits, targets) * self._scale

    def step(self, batch, grad_accum: int) -> torch.Tensor:
        """Forward and backward of one micro-batch on every stage; returns its mean loss on every stage
        (so that logging is the same as without pipelining)."""
        device = self.layout.world.device
        inputs, targets = (t.to(device, non_blocking=True) for t in batch)
        self._scale = 1.0 / (self.n_microbatches * grad_accum)
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.layout.is_first_stage else ()
        target = targets if self.layout.is_last_stage else None
        self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
        if self.layout.is_last_stage:
            loss = torch.stack([x.detach() for x in losses]).sum() * grad_accum
        else:
            loss = torch.zeros((), device=device)
        dist.all_reduce(loss, group=self.layout.group("pp"))  # the last stage's loss, on every stage
        return loss


class PipelineForward(nn.Module):
    """Forward-only pass through every stage with plain send/recv (evaluation: any batch size, no
    schedule state). Called like a GPT: (idx, targets) -> (None, loss), the loss on every stage."""

    def __init__(self, stage_module: PipelineStageModule, layout: Layout):
        super().__init__()
        self.stage = stage_module
        self.layout = layout
        self.config = stage_module.config

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        layout = self.layout
        B, T = idx.shape
        x = idx.to(layout.world.device)
        if not layout.is_first_stage:
            x = torch.empty(B, T, self.config.d_model, device=layout.world.device)  # (B, T, C)
            dist.recv(x, src=layout.rank_at(layout.pp_rank - 1))
        out = self.stage(x)
        if not layout.is_last_stage:
            dist.send(out.float().contiguous(), dst=layout.rank_at(layout.pp_rank + 1))
            loss = torch.zeros((), device=layout.world.device)
        else:
            loss = _cross_entropy(out, targets.to(out.device)).detach()
        dist.all_reduce(loss, group=layout.group("pp"))
        return None, loss


# ------------------------------------------------------------------------------------------------
# Tensor parallelism and activation checkpointing


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


# ------------------------------------------------------------------------------------------------
# Putting it together


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


# ------------------------------------------------------------------------------------------------
# Gradients


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


# ------------------------------------------------------------------------------------------------
# State dicts with the same names in every layout


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
