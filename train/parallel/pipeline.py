"""Pipeline parallelism: one stage's blocks as a module, and the GPipe/1F1B schedule that runs the stages."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from train.parallel.layout import Layout

log = logging.getLogger(__name__)


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
