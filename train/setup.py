"""Set-up of a training run: processes and devices, precision, the objective's data, the model and its
parallel layout, the optimizer, and resume. `setup_run` returns a `Run` that the loop (train/loop.py)
steps, evaluates and checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from model.gpt import GPT, PRESETS, GPTConfig, ModelConfigError, preset_config
from train import parallel
from train.checkpoint import (check_model_config, latest_checkpoint, load_checkpoint, load_model_state,
                              load_optimizer_state, restore_rng_state)
from train.config import TrainConfig
from train.distributed import DistContext, decoder_blocks, wrap_model
from train.errors import RunDirError, SeqLenError, TrainConfigError
from train.metrics import MetricsWriter, peak_flops, truncate_metrics
from train.objective import LoopInfo, Objective, padded_vocab
from train.schedule import default_warmup_steps

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    """Folder of the run."""
    final_step: int
    """Optimizer steps done when the run ended."""
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, mean training loss since the previous record) at every log step of this process."""
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) at every evaluation."""
    checkpoint: Path | None = None
    """The last checkpoint written."""
    interrupted: bool = False
    """True when SIGTERM/SIGINT stopped the run early (after writing a checkpoint)."""
    stop_signal: int | None = None
    """The signal that stopped the run (on any rank; None when it ran to the end)."""
    num_params: int = 0
    """Parameters of the model."""
    tokens_per_s: float = 0.0
    """Mean training throughput (all ranks), not counting the first log interval (compilation, warm-up)."""
    data_wait_share: float = 0.0
    """Share of training time spent waiting for the next batch."""
    peak_memory_bytes: int | None = None
    """Peak CUDA memory of this rank (None on CPU)."""
    model_config: GPTConfig | None = None
    """The model's config."""


def preset_of(config: GPTConfig, asked: str) -> str:
    """The name of the preset whose shape config has (asked first), else "custom": what the log says."""
    for name in (asked, *PRESETS):
        if name in PRESETS and all(getattr(config, k) == v for k, v in PRESETS[name].items()):
            return name
    return "custom"


def resolve_preset(preset: str, device: torch.device) -> str:
    """auto: gpt2-124m on a GPU, small anywhere else."""
    if preset == "auto":
        return "gpt2-124m" if device.type == "cuda" else "small"
    return preset


EvalScorer = Callable[[GPT, "torch.nn.Module | None"], dict[str, float]]
EvalHook = Callable[[dict], EvalScorer]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def gpt_of(model: torch.nn.Module) -> GPT:
    return model if isinstance(model, GPT) else next(m for m in model.modules() if isinstance(m, GPT))


@dataclass
class Run:
    """Everything `setup_run` builds once; the step, evaluation and checkpoint read it."""

    config: TrainConfig
    ctx: DistContext
    objective: Objective
    layout: Any
    bf16: bool
    data_info: dict
    model_config: GPTConfig
    seq_len: int
    model: torch.nn.Module
    wrapped: torch.nn.Module
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any
    grad_accum: int
    global_batch_tokens: int
    warmup_steps: int
    decay_steps: int
    metrics: MetricsWriter
    result: TrainResult
    flops_per_token: float
    peak: float | None
    scorer: EvalScorer | None
    start_step: int

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def fsdp_module(self) -> torch.nn.Module | None:
        """The FSDP2-wrapped module when every rank must take part in each forward, else None."""
        fsdp = self.config.parallelism == "fsdp" and self.ctx.is_distributed
        return self.wrapped if fsdp else None


# ---- set-up -------------------------------------------------------------------------------------


def _use_bf16(config: TrainConfig, device: torch.device) -> bool:
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if bf16 and device.type != "cuda":
        raise TrainConfigError("--precision", f"bf16 autocast is for CUDA devices; use fp32 on {device.type}")
    if device.type == "cuda":
        # float32 matmuls outside autocast use TF32. (Not the allow_tf32 flags: torch >= 2.9 deprecates them,
        # and reading them once the newer fp32_precision API was used raises, inside torch.compile too.)
        torch.set_float32_matmul_precision("high")
    return bf16


def _model_config(config: TrainConfig, objective: Objective, device: torch.device) -> tuple[str, GPTConfig, int]:
    """(preset, model config, sequence length), checked against each other."""
    if "vocab_size" in config.model_overrides:
        raise TrainConfigError("model_overrides", "vocab_size comes from the token shards and cannot be overridden")
    preset = resolve_preset(config.preset, device)
    try:
        model_config = objective.model_config(preset_config(preset, padded_vocab(objective.vocab_size()),
                                                            **config.model_overrides))
    except (TypeError, ModelConfigError) as err:  # an unknown preset or field, widths that do not divide
        raise TrainConfigError("--preset / model_overrides", str(err)) from err
    preset = preset_of(model_config, preset)  # fine-tuning builds its base's shape, whatever --preset said
    seq_len = objective.seq_len(model_config)
    if seq_len > model_config.max_seq_len:
        raise SeqLenError(
            f"--seq-len {seq_len} is longer than the context of preset {preset!r} "
            f"({model_config.max_seq_len} tokens); use --seq-len {model_config.max_seq_len} or less, "
            f"or a preset with a longer context")
    return preset, model_config, seq_len


def _resume_payload(config: TrainConfig, ctx: DistContext, objective: Objective,
                    model_config: GPTConfig) -> tuple[Path | None, dict | None]:
    """(newest checkpoint, its metadata) when resuming, checked against this run; else (None, None)."""
    run_dir = Path(config.run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is not None and not config.resume:
        raise RunDirError(f"{run_dir} already holds checkpoints (newest {latest.name}); pass --resume to "
                          f"continue that run, or choose a new --run name")
    if not config.resume or latest is None:
        if config.resume and ctx.is_main:
            log.info("--resume: no checkpoint in %s yet, starting from step 0", run_dir)
        return None, None
    payload = load_checkpoint(latest, weights=False)  # a DCP folder's shards load straight into the layout
    if payload.get("kind", "pretrain") != objective.kind:
        raise RunDirError(f"{run_dir} holds a {payload.get('kind', 'pretrain')} run, not a {objective.kind} "
                          f"run; choose another --run name")
    objective.check_resume(payload, latest)
    check_model_config(payload, model_config, latest)
    return latest, payload


def _build_model(config: TrainConfig, ctx: DistContext, objective: Objective, layout, model_config: GPTConfig,
                 preset: str, fresh: bool, bf16: bool):
    """(model, wrapped for training, module evaluation calls, num_params, GPT for FLOPs)."""
    model = objective.build_model(model_config)
    if fresh:
        objective.init_weights(model)
    model = model.to(ctx.device)
    base = gpt_of(model)
    if ctx.is_main:
        log.info("model: preset %s, %s parameters (%s trainable, %s without the token embedding), context %d, "
                 "vocab %d", preset, f"{sum(p.numel() for p in model.parameters()):,}",
                 f"{sum(p.numel() for p in trainable_parameters(model)):,}",
                 f"{base.num_params(exclude_embedding=True):,}", model_config.max_seq_len, model_config.vocab_size)
    model = parallel.apply_layout(model, layout)  # tensor / pipeline parallel, activation checkpointing
    if layout.model_parallel and ctx.is_main and config.eval.sample_every_steps:
        log.info("samples are off under tensor or pipeline parallelism (use `crawlgpt sample` on a checkpoint)")
    if config.compile:
        for block in decoder_blocks(model):
            block.compile()  # in place: parameter names (and so checkpoints) stay the same
    if layout.model_parallel:  # data parallel over the mesh's dp dimension; the pipeline schedule
        wrapped = parallel.wrap_model_parallel(model, layout, config.parallelism, bf16)
        forward_model = parallel.eval_module(model, wrapped, layout)
    else:
        wrapped = wrap_model(model, ctx, config.parallelism, bf16)
        forward_model = wrapped if config.parallelism == "fsdp" and ctx.is_distributed else model
    return model, wrapped, forward_model, base


def _optimizer(config: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only."""
    params = trainable_parameters(model)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                             eps=config.optim.eps, fused=device.type == "cuda")


def restore(run: Run, latest: Path, payload: dict) -> int:
    """Load the model, optimizer, loader and RNG state of `latest`; returns its step."""
    if latest.suffix == ".dcp":  # sharded: DCP reshards from whatever layout wrote it
        parallel.restore_sharded(run.model, run.optimizer, latest, run.layout)
    elif run.layout.model_parallel:
        parallel.restore_full(run.model, run.optimizer, payload, run.layout)
    else:
        load_model_state(run.model, run.objective.resume_model_state(payload))
        load_optimizer_state(run.model, run.optimizer, payload["optimizer"])
    run.loader.load_state_dict(payload["loader"])
    restore_rng_state(payload["rng"])
    step = int(payload["step"])
    if run.ctx.is_main:
        dropped = truncate_metrics(Path(run.config.run_dir) / "metrics.jsonl", step)
        log.info("resumed from %s at step %d%s", latest, step,
                 f" (dropped {dropped} metric records written after it)" if dropped else "")
    return step


def setup_run(config: TrainConfig, ctx: DistContext, objective: Objective, on_eval: EvalHook | None) -> Run:
    device = ctx.device
    bf16 = _use_bf16(config, device)
    torch.manual_seed(config.seed)  # the same on every rank: FSDP2 does not broadcast the initial weights
    # tensor / pipeline / data parallel mesh (train/parallel/); checked before any work
    layout = parallel.make_layout(config.parallel, ctx, config.parallelism, objective.kind)
    objective.sharded = config.parallelism == "fsdp" and ctx.is_distributed
    objective.setup(LoopInfo(ctx=layout.data_ctx, device=device, bf16=bf16, seed=config.data.seed,
                             micro_batch_size=config.data.micro_batch_size, seq_len=config.data.seq_len,
                             prefetch_batches=config.data.prefetch_batches, eval_max_tokens=config.eval.max_tokens,
                             verify_checksums=config.data.verify_checksums))
    data_info = objective.data_info()
    scorer = _eval_scorer(config, layout, on_eval, data_info)

    preset, model_config, seq_len = _model_config(config, objective, device)
    parallel.check_model_layout(layout, model_config, config.data.micro_batch_size, seq_len)
    latest, payload = _resume_payload(config, ctx, objective, model_config)
    model, wrapped, forward_model, base = _build_model(config, ctx, objective, layout, model_config, preset,
                                                       fresh=payload is None, bf16=bf16)
    grad_accum = objective.micro_steps(config.global_batch_tokens, seq_len)
    global_batch_tokens = grad_accum * config.data.micro_batch_size * seq_len * layout.dp
    _log_batch(config, ctx, objective, layout, grad_accum, seq_len, global_batch_tokens)
    run = Run(config=config, ctx=ctx, objective=objective, layout=layout, bf16=bf16, data_info=data_info,
               model_config=model_config, seq_len=seq_len, model=model, wrapped=wrapped,
               forward_model=forward_model, optimizer=_optimizer(config, model, device),
               loader=objective.make_loader(wrapped, seq_len), grad_accum=grad_accum,
               global_batch_tokens=global_batch_tokens,
               warmup_steps=config.optim.warmup_steps if config.optim.warmup_steps is not None
               else default_warmup_steps(config.max_steps),
               decay_steps=config.optim.decay_steps or config.max_steps,
               metrics=None, result=None, flops_per_token=base.flops_per_token(seq_len),
               peak=peak_flops(device, config.peak_tflops), scorer=scorer, start_step=0)
    if payload is not None:
        run.start_step = restore(run, latest, payload)
    run.metrics = MetricsWriter(Path(config.run_dir), enabled=ctx.is_main, tensorboard=config.log.tensorboard)
    run.result = TrainResult(run_dir=Path(config.run_dir), final_step=run.start_step, num_params=base.num_params(),
                             model_config=model_config)
    return run


def _eval_scorer(config: TrainConfig, layout, on_eval: EvalHook | None, data_info: dict) -> EvalScorer | None:
    if not config.eval.benchmarks:
        return None
    if on_eval is None:
        raise TrainConfigError("--benchmark", "benchmarks are scored through the loop's on_eval hook; pass "
                               "on_eval=evals.scoring.benchmark_hook(config.eval, ...) to train()")
    if layout.model_parallel:
        raise TrainConfigError("--benchmark", "scoring during training needs the whole model on each rank, "
                               "so it is not available with --tp or --pp; run `crawlgpt benchmark` on a "
                               "checkpoint instead")
    return on_eval(data_info)


def _log_batch(config: TrainConfig, ctx: DistContext, objective: Objective, layout, grad_accum: int,
               seq_len: int, global_batch_tokens: int) -> None:
    if not ctx.is_main:
        return
    micro = config.data.micro_batch_size
    if objective.fixed_batch_tokens and global_batch_tokens != config.global_batch_tokens:
        log.warning("global batch %s tokens is not a multiple of micro-batch x seq_len x data-parallel ranks "
                    "= %s: using %s", f"{config.global_batch_tokens:,}", f"{micro * seq_len * layout.dp:,}",
                    f"{global_batch_tokens:,}")
    log.info("batch: %d data-parallel ranks x %d micro-batches x %d examples of up to %d tokens per step; "
             "%d steps", layout.dp, grad_accum, micro, seq_len, config.max_steps)
