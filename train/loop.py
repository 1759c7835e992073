"""The training loop: `train(config) -> TrainResult`, readable top to bottom.

`_setup` (processes, device, precision -> data -> model -> optimizer -> resume) builds a `_Run`; then
`_train` loops: `_step` (accumulate micro-batches, clip, step), `_Meter` (log records and throughput),
`_evaluate` (validation and the optional `on_eval` hook), `_sample`, `_checkpoint`; then the final
evaluation, checkpoint and loss plot. The loop knows no kind of training by name: what differs lives
in the `Objective` (train/objective.py).

The same function runs as one process (`crawlgpt pretrain`) or as one rank of a `torchrun` job
(DDP or FSDP2); every collective operation is called by all ranks in the same order.
"""

from __future__ import annotations

import logging
import platform
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from model.gpt import GPT, PRESETS, GPTConfig, ModelConfigError, preset_config
from train.checkpoint import (
    capture_rng_state,
    check_model_config,
    checkpoint_path,
    gather_model_state,
    gather_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    save_sharded,
)
from train.config import TrainConfig
from train.distributed import (
    DistContext,
    all_reduce_sum,
    any_rank,
    barrier,
    decoder_blocks,
    destroy_distributed,
    gradient_sync,
    init_distributed,
    wrap_model,
)
from train.errors import (
    NonFiniteLossError,
    RunDirError,
    SeqLenError,
    TrainConfigError,
)
from train.evaluate import autocast_context
from train.objective import LoopInfo, Objective, PretrainObjective, padded_vocab
from train import parallel
from train.metrics import PLOT_NAME, MetricsWriter, format_progress, mfu, peak_flops, plot_losses, truncate_metrics
from train.run_lock import run_folder_lock
from train.schedule import default_warmup_steps, learning_rate

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


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            # Ctrl-C twice: stop at once, without the checkpoint. Any other repeat is ignored: torchrun
            # answers the terminal's SIGINT by sending SIGTERM to every worker, which must not abort it.
            if signum == self.received == signal.SIGINT:
                self.restore()
                raise KeyboardInterrupt
            return
        self.received = signum
        log.warning("received %s: finishing this step, writing a checkpoint, then stopping",
                    signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


#: Called once after the data is open with the data's description (tokenizer hash, end-of-text id, ...);
#: returns the scorer the loop calls at every evaluation with (the GPT, the FSDP module or None). The CLI
#: passes `evals.scoring.benchmark_hook(...)`; train/ never imports evals/.
EvalScorer = Callable[[GPT, "torch.nn.Module | None"], dict[str, float]]
EvalHook = Callable[[dict], EvalScorer]


def train(config: TrainConfig, on_step: Callable[[int], None] | None = None,
          objective: Objective | None = None, on_eval: EvalHook | None = None) -> TrainResult:
    """Train (or resume) the run described by config. on_step(step) is called after every step;
    on_eval (see `EvalHook`) adds figures such as zero-shot benchmarks to every evaluation.

    objective says what is trained on what (default: pretraining on config.data.shards_dir)."""
    created_group = not torch.distributed.is_initialized()
    ctx = init_distributed(config.device)
    if objective is None:
        objective = PretrainObjective(config.data.shards_dir, config.eval.tokenizer_path,
                                      config.eval.sample_prompt, config.eval.sample_tokens)
    try:
        with run_folder_lock(config.run_dir, ctx.is_main, lambda flag: any_rank(flag, ctx)):
            return _train(_setup(config, ctx, objective, on_eval), on_step)
    finally:
        objective.close()
        if created_group:
            destroy_distributed()


def check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, step: int, ctx: DistContext) -> None:
    """Stop at the first step whose loss or gradient norm is NaN or infinite (on any rank), before the
    optimizer applies it or a checkpoint keeps it: training on it only spreads NaN through the weights."""
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    values = torch.stack([loss.float(), grad_norm.detach().float().to(loss.device)])
    if any_rank(not bool(torch.isfinite(values).all()), ctx):
        raise NonFiniteLossError(
            f"step {step}: loss {values[0].item():.6g}, gradient norm {values[1].item():.6g}: not finite; stopped "
            f"before the optimizer step (no checkpoint holds it). Check --lr, --beta, --weight-decay and the other "
            f"float options, or resume from the last checkpoint with a lower --lr")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _gpt_of(model: torch.nn.Module) -> GPT:
    return model if isinstance(model, GPT) else next(m for m in model.modules() if isinstance(m, GPT))


@dataclass
class _Run:
    """Everything `_setup` builds once; the step, evaluation and checkpoint read it."""

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
    base = _gpt_of(model)
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


def _restore(run: _Run, latest: Path, payload: dict) -> int:
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


def _setup(config: TrainConfig, ctx: DistContext, objective: Objective, on_eval: EvalHook | None) -> _Run:
    device = ctx.device
    bf16 = _use_bf16(config, device)
    torch.manual_seed(config.seed)  # the same on every rank: FSDP2 does not broadcast the initial weights
    # tensor / pipeline / data parallel mesh (train/parallel.py); checked before any work
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
    run = _Run(config=config, ctx=ctx, objective=objective, layout=layout, bf16=bf16, data_info=data_info,
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
        run.start_step = _restore(run, latest, payload)
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


# ---- one optimizer step -------------------------------------------------------------------------


@dataclass
class _StepOut:
    loss: torch.Tensor
    """Mean loss over the step's micro-batches (this rank)."""
    extras: dict[str, torch.Tensor]
    grad_norm: Any
    lr: float
    wait: float
    """Seconds spent waiting for batches."""
    tokens: float
    """Tokens this rank processed (its share under tensor/pipeline parallelism)."""


def _step(run: _Run, step: int) -> _StepOut:
    """Accumulate gradients over the micro-batches of one step, clip them and step the optimizer."""
    config, objective = run.config, run.objective
    lr = learning_rate(step, config.optim.lr, config.optim.min_lr, run.warmup_steps, run.decay_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    out = _StepOut(loss=torch.zeros((), device=run.device), extras={}, grad_norm=None, lr=lr, wait=0.0, tokens=0.0)
    for micro_step in range(run.grad_accum):
        t0 = time.perf_counter()
        batch = run.loader.next_batch()
        out.wait += time.perf_counter() - t0
        with gradient_sync(run.wrapped, micro_step == run.grad_accum - 1):
            with autocast_context(run.device, run.bf16):
                if run.layout.pipeline is not None:  # forward and backward through every stage (parallel.py)
                    loss, extras = run.layout.pipeline.step(batch, run.grad_accum), {}
                else:
                    loss, extras = objective.loss(run.wrapped, batch)
            if run.layout.pipeline is None:
                (loss / run.grad_accum).backward()  # the mean over micro-batches, as one big batch
        out.loss += loss.detach().float() / run.grad_accum
        for name, value in extras.items():
            out.extras[name] = out.extras.get(name, 0.0) + value.detach().float() / run.grad_accum
        out.tokens += objective.batch_tokens(batch) / run.layout.model_parallel_size  # tp/pp share it
    max_norm = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
    out.grad_norm = parallel.clip_gradients(trainable_parameters(run.model), max_norm, run.layout)  # global norm
    check_finite(out.loss, out.grad_norm, step + 1, run.ctx)  # before the step: nothing non-finite is applied
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return out


class _Meter:
    """Sums steps between log records and turns them into one record: loss, lr, throughput, MFU."""

    def __init__(self, run: _Run):
        self.run = run
        self.start = time.perf_counter()
        self.loss = torch.zeros((), device=run.device)
        self.extras: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.wait = self.tokens = 0.0
        self.tokens_seen = 0.0
        self.measured_time = self.measured_tokens = self.measured_wait = 0.0

    def add(self, out: _StepOut) -> None:
        self.loss += out.loss
        for name, value in out.extras.items():
            self.extras[name] = self.extras.get(name, 0.0) + value
        self.steps += 1
        self.wait += out.wait
        self.tokens += out.tokens

    def exclude(self, seconds: float) -> None:
        """Evaluation, samples and checkpoints are not training time."""
        self.start += seconds

    def record(self, step: int, out: _StepOut) -> dict[str, Any]:
        """The log record of the steps since the last one (a collective: every rank calls it)."""
        run, ctx = self.run, self.run.ctx
        ranks = self.steps * ctx.world_size
        grad_norm = out.grad_norm.full_tensor() if hasattr(out.grad_norm, "full_tensor") else out.grad_norm  # DTensor
        now = time.perf_counter()
        elapsed = now - self.start
        tokens = all_reduce_sum(torch.tensor(float(self.tokens), device=run.device), ctx).item()
        self.tokens_seen += tokens
        record = {"kind": "train", "step": step, "loss": all_reduce_sum(self.loss, ctx).item() / ranks,
                  "lr": out.lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens / elapsed,
                  "mfu": mfu(run.flops_per_token, tokens / elapsed / ctx.world_size, run.peak),
                  "data_wait_share": self.wait / elapsed,
                  "tokens_seen": run.objective.tokens_seen(step, run.global_batch_tokens, self.tokens_seen)}
        for name, value in self.extras.items():
            record[name] = all_reduce_sum(value, ctx).item() / ranks
        if run.device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 1e9
        if step - self.steps > run.start_step:  # skip the first interval: compilation, warm-up
            self.measured_time += elapsed
            self.measured_tokens += tokens
            self.measured_wait += self.wait
        self.start, self.steps, self.wait, self.tokens, self.extras = now, 0, 0.0, 0.0, {}
        self.loss.zero_()  # logging time counts as training
        return record


# ---- evaluation, samples, checkpoints -----------------------------------------------------------


def _evaluate(run: _Run, step: int) -> None:
    """Validation figures from the objective, then the on_eval scorer's (every rank takes part)."""
    figures = run.objective.evaluate(run.forward_model)
    if figures["val_loss"] is not None:  # None: no validation data (e.g. --val-fraction 0)
        run.result.val_losses.append((step, figures["val_loss"]))
    run.metrics.write({"kind": "val", "step": step, **figures})
    if run.ctx.is_main:
        log.info("step %d: %s", step, ", ".join(f"{k} n/a" if v is None else f"{k} {v:.4g}"
                                                  if isinstance(v, float) else f"{k} {v:,}" for k, v in figures.items()))
    if run.scorer is None:
        return
    with autocast_context(run.device, run.bf16):
        scores = run.scorer(_gpt_of(run.model), run.fsdp_module)
    run.metrics.write({"kind": "benchmark", "step": step, **scores})
    if run.ctx.is_main:
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def _sample(run: _Run, step: int) -> None:
    if not (run.ctx.is_main or run.objective.sharded) or run.layout.model_parallel:  # FSDP: every rank takes part
        return
    text = run.objective.sample(run.forward_model, step)
    if text is None:
        return
    run.metrics.write({"kind": "sample", "step": step, "text": text})
    if run.ctx.is_main:
        log.info("step %d sample: %r", step, text)


def _checkpoint(run: _Run, step: int) -> Path:
    """Write the checkpoint of `step` (every rank takes part) and prune old ones."""
    config, ctx, layout, result = run.config, run.ctx, run.layout, run.result
    meta = {"step": step, "loader": run.loader.state_dict(),
            "rng": capture_rng_state(), "model_config": run.model_config.to_dict(),
            "train_config": config.to_dict(), "data": run.data_info, "kind": run.objective.kind,
            "hardware": hardware_info(ctx.device, ctx.world_size), **run.objective.checkpoint_extra(),
            "val_loss": result.val_losses[-1][1] if result.val_losses else None}
    path = checkpoint_path(Path(config.run_dir), step, sharded=layout.sharded_checkpoints)
    if layout.sharded_checkpoints:  # every rank writes its shards (train/parallel.py, DCP)
        state = {"model": parallel.model_state(run.model, layout),
                 "optimizer": parallel.optimizer_state(run.model, run.optimizer, layout)}
        save_sharded(path, state, meta, ctx.is_main, lambda: barrier(ctx))
    else:
        model_state = gather_model_state(run.model)  # collective under FSDP
        optim_state = gather_optimizer_state(run.model, run.optimizer)
        if ctx.is_main:
            save_checkpoint(path, {**meta, **run.objective.checkpoint_model_state(model_state),
                                   "optimizer": optim_state})
    if ctx.is_main:
        for old in prune_checkpoints(Path(config.run_dir), config.checkpoint.keep_last):
            log.debug("deleted old checkpoint %s", old)
        log.info("checkpoint: %s", path)
    barrier(ctx)
    result.checkpoint = path
    return path


# ---- the loop -----------------------------------------------------------------------------------


def _train(run: _Run, on_step: Callable[[int], None] | None) -> TrainResult:
    config, result = run.config, run.result
    if run.start_step == 0 and run.objective.evaluate_at_start:  # the "before" figures of a fine-tuning run
        _evaluate(run, 0)
    stop = StopSignal()
    if config.handle_signals:
        stop.install()
    step = run.start_step
    last_eval = last_sample = last_ckpt = -1
    meter = _Meter(run)
    run.wrapped.train()
    try:
        while step < config.max_steps:
            out = _step(run, step)
            step = result.final_step = step + 1
            meter.add(out)
            if step % config.log.every_steps == 0 or step == config.max_steps:
                record = meter.record(step, out)
                run.metrics.write(record)
                result.train_losses.append((step, record["loss"]))
                if run.ctx.is_main:
                    log.info(format_progress(step, config.max_steps, record))
            side_start = time.perf_counter()
            if config.eval.every_steps and step % config.eval.every_steps == 0:
                _evaluate(run, step)
                last_eval = step
            if config.eval.sample_every_steps and step % config.eval.sample_every_steps == 0:
                _sample(run, step)
                last_sample = step
            stopping = any_rank(stop.received is not None, run.ctx)
            if stopping or (config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0):
                _checkpoint(run, step)
                last_ckpt = step
            if on_step is not None:
                on_step(step)
            meter.exclude(time.perf_counter() - side_start)
            if stopping:
                result.interrupted = True
                result.stop_signal = stop.received or signal.SIGTERM  # another rank may have got it
                break
        if not result.interrupted:  # the end: final evaluation, sample and checkpoint
            if last_eval != step:
                _evaluate(run, step)
            if config.eval.sample_every_steps and last_sample != step:
                _sample(run, step)
            if last_ckpt != step:
                _checkpoint(run, step)
    finally:
        stop.restore()
        run.loader.close()
        run.metrics.close()
    return _finish(run, meter)


def _finish(run: _Run, meter: _Meter) -> TrainResult:
    result = run.result
    if run.ctx.is_main and run.config.log.plot:
        png = plot_losses(Path(run.config.run_dir) / "metrics.jsonl", Path(run.config.run_dir) / PLOT_NAME)
        if png is not None:
            log.info("loss plot: %s", png)
    if meter.measured_time > 0:
        result.tokens_per_s = meter.measured_tokens / meter.measured_time
        result.data_wait_share = meter.measured_wait / meter.measured_time
    if run.device.type == "cuda":
        result.peak_memory_bytes = torch.cuda.max_memory_allocated(run.device)
    return result


def hardware_info(device: torch.device, world_size: int) -> dict:
    """What the run trained on, for the model card: the device's name and how many ranks."""
    cpu = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {"device": name, "device_type": device.type, "world_size": world_size}
