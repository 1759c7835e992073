"""The training loop: `train(config) -> TrainResult`, readable top to bottom.

`setup_run` (train/setup.py: processes, device, precision -> data -> model -> optimizer -> resume)
builds a `Run`; then `_train` loops: `_step` (accumulate micro-batches, clip, step), `_Meter` (log records and throughput),
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from train.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    gather_model_state,
    gather_optimizer_state,
    prune_checkpoints,
    save_checkpoint,
    save_sharded,
)
from train.config import TrainConfig
from train.distributed import (
    DistContext,
    all_reduce_sum,
    any_rank,
    barrier,
    destroy_distributed,
    gradient_sync,
    init_distributed,
)
from train.errors import (
    NonFiniteLossError,
)
from train.evaluate import autocast_context
from train.objective import Objective, PretrainObjective
from train import parallel
from train.metrics import PLOT_NAME, format_progress, mfu, plot_losses
from train.run_lock import run_folder_lock
from train.schedule import learning_rate

from train.setup import EvalHook, Run, TrainResult, gpt_of, setup_run, trainable_parameters

log = logging.getLogger(__name__)


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
            return _train(setup_run(config, ctx, objective, on_eval), on_step)
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


def _step(run: Run, step: int) -> _StepOut:
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

    def __init__(self, run: Run):
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


def _evaluate(run: Run, step: int) -> None:
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
        scores = run.scorer(gpt_of(run.model), run.fsdp_module)
    run.metrics.write({"kind": "benchmark", "step": step, **scores})
    if run.ctx.is_main:
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def _sample(run: Run, step: int) -> None:
    if not (run.ctx.is_main or run.objective.sharded) or run.layout.model_parallel:  # FSDP: every rank takes part
        return
    text = run.objective.sample(run.forward_model, step)
    if text is None:
        return
    run.metrics.write({"kind": "sample", "step": step, "text": text})
    if run.ctx.is_main:
        log.info("step %d sample: %r", step, text)


def _checkpoint(run: Run, step: int) -> Path:
    """Write the checkpoint of `step` (every rank takes part) and prune old ones."""
    config, ctx, layout, result = run.config, run.ctx, run.layout, run.result
    meta = {"step": step, "loader": run.loader.state_dict(),
            "rng": capture_rng_state(), "model_config": run.model_config.to_dict(),
            "train_config": config.to_dict(), "data": run.data_info, "kind": run.objective.kind,
            "hardware": hardware_info(ctx.device, ctx.world_size), **run.objective.checkpoint_extra(),
            "val_loss": result.val_losses[-1][1] if result.val_losses else None}
    path = checkpoint_path(Path(config.run_dir), step, sharded=layout.sharded_checkpoints)
    if layout.sharded_checkpoints:  # every rank writes its shards (train/parallel/, DCP)
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


def _train(run: Run, on_step: Callable[[int], None] | None) -> TrainResult:
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


def _finish(run: Run, meter: _Meter) -> TrainResult:
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
