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

from train.parallel.apply import apply_layout, eval_module, wrap_model_parallel
from train.parallel.gradients import clip_gradients
from train.parallel.layout import Layout, check_model_layout, make_layout, stage_layers
from train.parallel.state import model_state, optimizer_state, restore_full, restore_sharded
from train.parallel.tensor import apply_activation_checkpointing

__all__ = ["Layout", "apply_activation_checkpointing", "apply_layout", "check_model_layout", "clip_gradients",
           "eval_module", "make_layout", "model_state", "optimizer_state", "restore_full", "restore_sharded",
           "stage_layers", "wrap_model_parallel"]
