"""The training loop: `train(config) -> TrainResult`, readable top to bottom.

setup (processes, device, precision) -> data -> model -> optimizer -> resume -> loop
(accumulate micro-batches, clip, step, log, evaluate, sample, checkpoint) -> final evaluation,
checkpoint and loss plot.

The same function runs as one process (`crawlgpt pretrain`) or as one rank of a `torchrun` job
(DDP or FSDP2); every collective operation is called by all ranks in the same order.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from model.gpt import GPT, GPTConfig, ModelConfigError, preset_config
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


def train(config: TrainConfig, on_step: Callable[[int], None] | None = None,
          objective: Objective | None = None) -> TrainResult:
    """Train (or resume) the run described by config. on_step(step) is called after every step.

    objective says what is trained on what (default: pretraining on config.data.shards_dir)."""
    created_group = not torch.distributed.is_initialized()
    ctx = init_distributed(config.device)
    if objective is None:
        objective = PretrainObjective(config.data.shards_dir, config.eval.tokenizer_path,
                                      config.eval.sample_prompt, config.eval.sample_tokens)
    try:
        with run_folder_lock(config.run_dir, ctx.is_main, lambda flag: any_rank(flag, ctx)):
            return _train(config, ctx, on_step, objective)
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


def _train(config: TrainConfig, ctx: DistContext, on_step: Callable[[int], None] | None,
           objective: Objective) -> TrainResult:
    device = ctx.device
    run_dir = Path(config.run_dir)

    # ---- precision and determinism ------------------------------------------------------------
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if bf16 and device.type != "cuda":
        raise TrainConfigError("--precision", f"bf16 autocast is for CUDA devices; use fp32 on {device.type}")
    if device.type == "cuda":
        # float32 matmuls outside autocast use TF32. (Not the allow_tf32 flags: torch >= 2.9 deprecates them,
        # and reading them once the newer fp32_precision API was used raises, inside torch.compile too.)
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(config.seed)  # the same on every rank: FSDP2 does not broadcast the initial weights

    # ---- layout: tensor / pipeline / data parallel mesh (train/parallel.py); checked before any work
    layout = parallel.make_layout(config.parallel, ctx, config.parallelism, objective.kind)

    # ---- data (the objective opens it; pretraining also checks the tokenizer) -------------------
    objective.setup(LoopInfo(ctx=layout.data_ctx, device=device, bf16=bf16, seed=config.data.seed,
                             micro_batch_size=config.data.micro_batch_size, seq_len=config.data.seq_len,
                             prefetch_batches=config.data.prefetch_batches, eval_max_tokens=config.eval.max_tokens,
                             verify_checksums=config.data.verify_checksums))
    objective.sharded = config.parallelism == "fsdp" and ctx.is_distributed
    data_info = objective.data_info()

    # ---- zero-shot benchmarks at each evaluation (optional; evals/ is imported only when asked) --
    benchmark = None
    if config.eval.benchmarks:
        from evals.scoring import TrainingBenchmark

        if layout.model_parallel:
            raise TrainConfigError("--benchmark", "scoring during training needs the whole model on each rank, "
                                   "so it is not available with --tp or --pp; run `crawlgpt benchmark` on a "
                                   "checkpoint instead")

        benchmark = TrainingBenchmark(config.eval.benchmarks, config.eval.benchmark_dir, config.eval.benchmark_limit,
                                      config.eval.tokenizer_path or Path(config.data.shards_dir) / "tokenizer.json",
                                      data_info["tokenizer_hash"], data_info["eot_id"])

    # ---- model config -------------------------------------------------------------------------
    if "vocab_size" in config.model_overrides:
        raise TrainConfigError("model_overrides", "vocab_size comes from the token shards and cannot be overridden")
    preset = resolve_preset(config.preset, device)
    model_vocab = padded_vocab(objective.vocab_size())
    try:
        model_config = objective.model_config(preset_config(preset, model_vocab, **config.model_overrides))
    except (TypeError, ModelConfigError) as err:  # an unknown preset or field, widths that do not divide
        raise TrainConfigError("--preset / model_overrides", str(err)) from err
    seq_len = objective.seq_len(model_config)
    if seq_len > model_config.max_seq_len:
        raise SeqLenError(
            f"--seq-len {seq_len} is longer than the context of preset {preset!r} "
            f"({model_config.max_seq_len} tokens); use --seq-len {model_config.max_seq_len} or less, "
            f"or a preset with a longer context")
    parallel.check_model_layout(layout, model_config, config.data.micro_batch_size, seq_len)

    # ---- resume or start fresh ----------------------------------------------------------------
    latest = latest_checkpoint(run_dir)
    if latest is not None and not config.resume:
        raise RunDirError(f"{run_dir} already holds checkpoints (newest {latest.name}); pass --resume to "
                          f"continue that run, or choose a new --run name")
    payload = None
    if config.resume and latest is not None:
        payload = load_checkpoint(latest, weights=False)  # a DCP folder's shards load straight into the layout
        if payload.get("kind", "pretrain") != objective.kind:
            raise RunDirError(f"{run_dir} holds a {payload.get('kind', 'pretrain')} run, not a {objective.kind} "
                              f"run; choose another --run name")
        objective.check_resume(payload, latest)
        check_model_config(payload, model_config, latest)
    elif config.resume and ctx.is_main:
        log.info("--resume: no checkpoint in %s yet, starting from step 0", run_dir)

    # ---- model --------------------------------------------------------------------------------
    model = objective.build_model(model_config)
    if payload is None:
        objective.init_weights(model)
    model = model.to(device)
    base = model if isinstance(model, GPT) else next(m for m in model.modules() if isinstance(m, GPT))
    if ctx.is_main:
        log.info("model: preset %s, %s parameters (%s trainable, %s without the token embedding), context %d, "
                 "vocab %d", preset, f"{sum(p.numel() for p in model.parameters()):,}",
                 f"{sum(p.numel() for p in trainable_parameters(model)):,}",
                 f"{base.num_params(exclude_embedding=True):,}", model_config.max_seq_len, model_vocab)
    num_params, flops_per_token = base.num_params(), base.flops_per_token(seq_len)
    # ---- tensor / pipeline parallelism and activation checkpointing (train/parallel.py) ---------
    model = parallel.apply_layout(model, layout)
    del base
    if layout.model_parallel and ctx.is_main and config.eval.sample_every_steps:
        log.info("samples are off under tensor or pipeline parallelism (use `crawlgpt sample` on a checkpoint)")
    # ----------------------------------------------------------------------------------------------
    if config.compile:
        for block in decoder_blocks(model):
            block.compile()  # in place: parameter names (and so checkpoints) stay the same
    if layout.model_parallel:  # data parallel over the mesh's dp dimension; the pipeline schedule
        wrapped = parallel.wrap_model_parallel(model, layout, config.parallelism, bf16)
        forward_model = parallel.eval_module(model, wrapped, layout)
    else:
        wrapped = wrap_model(model, ctx, config.parallelism, bf16)
        forward_model = wrapped if config.parallelism == "fsdp" and ctx.is_distributed else model
    pipeline = layout.pipeline

    # ---- optimizer: weight decay on matrices only ---------------------------------------------
    params = trainable_parameters(model)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                                  eps=config.optim.eps, fused=device.type == "cuda")
    warmup_steps = config.optim.warmup_steps if config.optim.warmup_steps is not None \
        else default_warmup_steps(config.max_steps)
    decay_steps = config.optim.decay_steps or config.max_steps

    # ---- batches: gradient accumulation up to the global batch --------------------------------
    micro = config.data.micro_batch_size
    grad_accum = objective.micro_steps(config.global_batch_tokens, seq_len)
    global_batch_tokens = grad_accum * micro * seq_len * layout.dp
    if ctx.is_main:
        if objective.kind == "pretrain" and global_batch_tokens != config.global_batch_tokens:
            log.warning("global batch %s tokens is not a multiple of micro-batch x seq_len x data-parallel ranks "
                        "= %s: using %s", f"{config.global_batch_tokens:,}", f"{micro * seq_len * layout.dp:,}",
                        f"{global_batch_tokens:,}")
        log.info("batch: %d data-parallel ranks x %d micro-batches x %d examples of up to %d tokens per step; "
                 "%d steps", layout.dp, grad_accum, micro, seq_len, config.max_steps)
    loader = objective.make_loader(wrapped, seq_len)

    # ---- restore ------------------------------------------------------------------------------
    start_step = 0
    if payload is not None:
        if latest.suffix == ".dcp":  # sharded: DCP reshards from whatever layout wrote it
            parallel.restore_sharded(model, optimizer, latest, layout)
        elif layout.model_parallel:
            parallel.restore_full(model, optimizer, payload, layout)
        else:
            load_model_state(model, objective.resume_model_state(payload))
            load_optimizer_state(model, optimizer, payload["optimizer"])
        loader.load_state_dict(payload["loader"])
        restore_rng_state(payload["rng"])
        start_step = int(payload["step"])
        if ctx.is_main:
            dropped = truncate_metrics(run_dir / "metrics.jsonl", start_step)
            log.info("resumed from %s at step %d%s", latest, start_step,
                     f" (dropped {dropped} metric records written after it)" if dropped else "")
        del payload

    # ---- logging, evaluation and checkpoint helpers -------------------------------------------
    metrics = MetricsWriter(run_dir, enabled=ctx.is_main, tensorboard=config.log.tensorboard)
    peak = peak_flops(device, config.peak_tflops)
    result = TrainResult(run_dir=run_dir, final_step=start_step, num_params=num_params,
                         model_config=model_config)

    def run_eval(step: int) -> None:
        figures = objective.evaluate(forward_model)
        result.val_losses.append((step, figures["val_loss"]))
        metrics.write({"kind": "val", "step": step, **figures})
        if ctx.is_main:
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v:,}"
                                                      for k, v in figures.items()))
        if benchmark is not None:  # every rank scores (FSDP needs all of them in each forward)
            with autocast_context(device, bf16):
                gpt = model if isinstance(model, GPT) else next(m for m in model.modules() if isinstance(m, GPT))
                scores = benchmark(gpt, wrapped if config.parallelism == "fsdp" and ctx.is_distributed else None)
            metrics.write({"kind": "benchmark", "step": step, **scores})
            if ctx.is_main:
                log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    def run_sample(step: int) -> None:
        if not (ctx.is_main or objective.sharded) or layout.model_parallel:  # FSDP: every rank takes part
            return
        text = objective.sample(forward_model, step)
        if text is None:
            return
        metrics.write({"kind": "sample", "step": step, "text": text})
        if ctx.is_main:
            log.info("step %d sample: %r", step, text)

    def write_checkpoint(step: int) -> Path:
        meta = {"step": step, "loader": loader.state_dict(),
                "rng": capture_rng_state(), "model_config": model_config.to_dict(),
                "train_config": config.to_dict(), "data": data_info, "kind": objective.kind,
                **objective.checkpoint_extra(),
                "val_loss": result.val_losses[-1][1] if result.val_losses else None}
        path = checkpoint_path(run_dir, step, sharded=layout.sharded_checkpoints)
        if layout.sharded_checkpoints:  # every rank writes its shards (train/parallel.py, DCP)
            state = {"model": parallel.model_state(model, layout),
                     "optimizer": parallel.optimizer_state(model, optimizer, layout)}
            save_sharded(path, state, meta, ctx.is_main, lambda: barrier(ctx))
        else:
            model_state = gather_model_state(model)  # collective under FSDP
            optim_state = gather_optimizer_state(model, optimizer)
            if ctx.is_main:
                save_checkpoint(path, {**meta, **objective.checkpoint_model_state(model_state),
                                       "optimizer": optim_state})
        if ctx.is_main:
            for old in prune_checkpoints(run_dir, config.checkpoint.keep_last):
                log.debug("deleted old checkpoint %s", old)
            log.info("checkpoint: %s", path)
        barrier(ctx)
        result.checkpoint = path
        return path

    if start_step == 0 and objective.evaluate_at_start:  # the "before" figures of a fine-tuning run
        run_eval(0)

    # ---- the loop -----------------------------------------------------------------------------
    stop = StopSignal()
    if config.handle_signals:
        stop.install()
    step = start_step
    last_eval = last_sample = last_ckpt = -1
    interval_start = time.perf_counter()
    interval_loss = torch.zeros((), device=device)
    interval_steps = 0
    interval_wait = 0.0
    interval_tokens = 0
    interval_extras: dict[str, torch.Tensor] = {}
    measured_time = measured_tokens = measured_wait = 0.0
    tokens_seen = 0.0
    wrapped.train()
    try:
        while step < config.max_steps:
            lr = learning_rate(step, config.optim.lr, config.optim.min_lr, warmup_steps, decay_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=device)
            for micro_step in range(grad_accum):
                t0 = time.perf_counter()
                batch = loader.next_batch()
                interval_wait += time.perf_counter() - t0
                with gradient_sync(wrapped, micro_step == grad_accum - 1):
                    if pipeline is not None:  # forward and backward through every stage (train/parallel.py)
                        with autocast_context(device, bf16):
                            loss, extras = pipeline.step(batch, grad_accum), {}
                    else:
                        with autocast_context(device, bf16):
                            loss, extras = objective.loss(wrapped, batch)
                        (loss / grad_accum).backward()  # the mean over micro-batches, as one big batch
                step_loss += loss.detach().float() / grad_accum
                for name, value in extras.items():
                    interval_extras[name] = interval_extras.get(name, 0.0) + value.detach().float() / grad_accum
                interval_tokens += objective.batch_tokens(batch) / layout.model_parallel_size  # tp/pp share it
            max_norm = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
            grad_norm = parallel.clip_gradients(trainable_parameters(model), max_norm, layout)  # global norm
            check_finite(step_loss, grad_norm, step + 1, ctx)  # before the step: nothing non-finite is applied
            interval_loss += step_loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_steps += 1
            result.final_step = step

            if step % config.log.every_steps == 0 or step == config.max_steps:
                loss_value = all_reduce_sum(interval_loss, ctx).item() / (interval_steps * ctx.world_size)
                if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
                    grad_norm = grad_norm.full_tensor()
                now = time.perf_counter()
                elapsed = now - interval_start
                tokens = all_reduce_sum(torch.tensor(float(interval_tokens), device=device), ctx).item()
                tokens_per_s = tokens / elapsed
                record = {"kind": "train", "step": step, "loss": loss_value, "lr": lr,
                          "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s,
                          "mfu": mfu(flops_per_token, tokens_per_s / ctx.world_size, peak),
                          "data_wait_share": interval_wait / elapsed}
                tokens_seen += tokens
                record["tokens_seen"] = int(tokens_seen) if objective.kind != "pretrain" \
                    else step * global_batch_tokens
                for name, value in interval_extras.items():
                    record[name] = all_reduce_sum(value, ctx).item() / (interval_steps * ctx.world_size)
                if device.type == "cuda":
                    record["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                metrics.write(record)
                result.train_losses.append((step, loss_value))
                if ctx.is_main:
                    log.info(format_progress(step, config.max_steps, record))
                if step - interval_steps > start_step:  # skip the first interval: compilation, warm-up
                    measured_time += elapsed
                    measured_tokens += tokens
                    measured_wait += interval_wait
                interval_start, interval_steps, interval_wait = now, 0, 0.0  # logging time counts as training
                interval_tokens = 0
                interval_extras = {}
                interval_loss.zero_()

            side_start = time.perf_counter()  # evaluation, samples, checkpoints: not training time
            if config.eval.every_steps and step % config.eval.every_steps == 0:
                run_eval(step)
                last_eval = step
            if config.eval.sample_every_steps and step % config.eval.sample_every_steps == 0:
                run_sample(step)
                last_sample = step
            stopping = any_rank(stop.received is not None, ctx)
            if stopping or (config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0):
                write_checkpoint(step)
                last_ckpt = step
            if on_step is not None:
                on_step(step)
            interval_start += time.perf_counter() - side_start
            if stopping:
                result.interrupted = True
                result.stop_signal = stop.received or signal.SIGTERM  # another rank may have got it
                break

        # ---- the end ------------------------------------------------------------------------------
        if not result.interrupted:
            if last_eval != step:
                run_eval(step)
            if config.eval.sample_every_steps and last_sample != step:
                run_sample(step)
            if last_ckpt != step:
                write_checkpoint(step)
    finally:
        stop.restore()
        loader.close()
        metrics.close()

    if ctx.is_main and config.log.plot:
        png = plot_losses(run_dir / "metrics.jsonl", run_dir / PLOT_NAME)
        if png is not None:
            log.info("loss plot: %s", png)
    if measured_time > 0:
        result.tokens_per_s = measured_tokens / measured_time
        result.data_wait_share = measured_wait / measured_time
    if device.type == "cuda":
        result.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    return result
