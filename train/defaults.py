"""The "auto" defaults of `crawlgpt pretrain` (and so of `make pretrain`): one place that turns the
hardware, the preset and the corpus into a preset, a batch, a learning rate and a number of steps.

It lives in `train/`, not in the command line, so that a GPU machine where only torch, numpy and
pyarrow are installed (no click) resolves exactly what `make pretrain` would (`bench/gpu_check.py`
does). torch is imported only inside the functions that need it.

CPU: the `small` preset, one micro-batch of 8 windows per step and a fixed 200 steps: a quick run
(about ten minutes on 2 cores) that shows the whole path, whatever the corpus.

GPU: `gpt2-124m` and a number of steps that uses the corpus it is given. The token budget is one
epoch of the training split, capped at 20 tokens per parameter (the compute-optimal ratio of
Hoffmann et al., 2022, "Chinchilla"), so a large corpus is not trained on for days by default. The
batch is GPT-3's 0.5M tokens for models of this size (Brown et al., 2020, table 2.1; nanoGPT and
llm.c use it too), halved while the budget would give fewer than `GPU_MIN_STEPS` optimizer steps
(a small corpus still gets a few hundred updates rather than a handful of huge ones), but never
below one micro-batch on every rank.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.errors import TrainConfigError

#: Steps of an auto run on a CPU: `small` at 2,048 tokens per step runs at about 1,000 tokens/s on 2 idle
#: cores (torch 2.13), so 200 steps plus five evaluations take 8 to 10 minutes.
CPU_AUTO_STEPS = 200
#: Windows per micro-step on a CPU (the CPU batch is one micro-batch per rank).
CPU_MICRO_BATCH = 8
#: Peak learning rate per preset (smaller models tolerate larger rates; gpt2-124m is GPT-3 small's 6e-4).
PRESET_LR = {"tiny": 3e-3, "small": 1e-3, "gpt2-124m": 6e-4, "350m": 3e-4, "1b": 3e-4}
#: Windows per GPU per micro-step per preset (fits an 80 GB GPU with bf16 autocast at the preset's context).
GPU_MICRO_BATCH = {"tiny": 64, "small": 64, "gpt2-124m": 32, "350m": 16, "1b": 8}
#: The largest GPU batch in tokens per optimizer step (all ranks together): 2^19 = 524,288.
GPU_BATCH_TOKENS = 1 << 19
#: The batch is halved (down to one micro-batch per rank) while the token budget gives fewer steps than this.
GPU_MIN_STEPS = 300
#: Training tokens per model parameter at most (Chinchilla's compute-optimal ratio).
TOKENS_PER_PARAM = 20
#: Steps of an auto GPU run when the corpus size is not known (the shards could not be read).
GPU_FALLBACK_STEPS = 200
#: Validation tokens per evaluation, on a GPU and on a CPU.
GPU_EVAL_TOKENS = 1 << 21
CPU_EVAL_TOKENS = 1 << 14


@dataclass(frozen=True)
class Corpus:
    """What the auto defaults need to know about the token shards."""

    train_tokens: int
    """Tokens in the train split (one epoch)."""
    vocab_size: int
    """The tokenizer's vocabulary (the model pads it to a multiple of 64)."""


@dataclass(frozen=True)
class Resolved:
    """Every auto option of `pretrain`, filled in."""

    preset: str
    """Model preset."""
    steps: int
    """Optimizer steps."""
    batch_tokens: int
    """Global batch in tokens per optimizer step."""
    micro_batch: int
    """Windows per device per forward pass."""
    lr: float
    """Peak learning rate."""
    compile: bool
    """torch.compile the decoder blocks."""
    eval_every: int
    """Validation every this many steps."""
    eval_tokens: int
    """Validation tokens per evaluation."""
    log_every: int
    """Progress line every this many steps."""
    why_steps: str = ""
    """How the number of steps was chosen, in words (logged at the start of the run)."""


def read_corpus(shards_dir: str | Path) -> Corpus | None:
    """Size and vocabulary of the train split from its manifest (no checksums: cheap); None when the
    shards cannot be read (the trainer then reports the problem with its own clear error)."""
    from formats.token_shards import TokenShardError, TokenShards  # numpy/pyarrow only

    try:
        shards = TokenShards(shards_dir, split="train", verify_checksums=False)
    except (TokenShardError, OSError, ValueError):
        return None
    return Corpus(train_tokens=int(shards.num_tokens), vocab_size=int(shards.vocab_size))


def count_parameters(preset: str, vocab_size: int, **overrides: Any) -> int:
    """Parameters of a preset for a vocabulary (padded as the trainer pads it), built on the meta
    device: no memory, no initialisation time."""
    import torch

    from model.gpt import GPT, preset_config
    from train.objective import VOCAB_MULTIPLE

    padded = VOCAB_MULTIPLE * math.ceil(vocab_size / VOCAB_MULTIPLE)
    with torch.device("meta"):
        return GPT(preset_config(preset, padded, **overrides)).num_params()


def gpu_token_budget(train_tokens: int, num_params: int) -> int:
    """Tokens an auto GPU run trains on: one epoch, at most TOKENS_PER_PARAM per parameter."""
    return max(1, min(train_tokens, TOKENS_PER_PARAM * num_params))


def gpu_batch_tokens(budget_tokens: int, micro_step_tokens: int) -> int:
    """GPU_BATCH_TOKENS, halved while the budget gives fewer than GPU_MIN_STEPS steps, never below one
    micro-step (micro-batch x context x ranks); a multiple of the micro-step."""
    batch = GPU_BATCH_TOKENS
    while budget_tokens // batch < GPU_MIN_STEPS and batch // 2 >= micro_step_tokens:
        batch //= 2
    return max(micro_step_tokens, batch // micro_step_tokens * micro_step_tokens)


def on_gpu(device: str) -> bool:
    """Whether `device` (cpu, cuda, cuda:N, mps, auto) means a CUDA GPU here."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def resolve_auto(preset: str, device: str, steps: int, tokens: int, batch_tokens: int, micro_batch: int,
                 seq_len: int, lr: float | None, compile_: bool | None, eval_every: int | None,
                 eval_tokens: int, log_every: int, corpus: Corpus | None = None,
                 world_size: int | None = None) -> Resolved:
    """Fill in every "auto" option (0, None or "auto") from the hardware, the preset and the corpus."""
    from model.gpt import PRESETS

    if steps > 0 and tokens > 0:
        raise TrainConfigError("--tokens", "give either --steps or --tokens, not both")
    gpu = on_gpu(device)
    if preset == "auto":
        preset = "gpt2-124m" if gpu else "small"
    if preset not in PRESETS:
        raise TrainConfigError("--preset", f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    context = seq_len or PRESETS[preset].get("max_seq_len", 1024)
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if micro_batch <= 0:
        micro_batch = GPU_MICRO_BATCH.get(preset, 8) if gpu else CPU_MICRO_BATCH
    micro_step_tokens = micro_batch * context * world

    budget = None  # tokens the steps should cover, when that decides them
    if tokens > 0:
        budget, why = tokens, f"--tokens {tokens:,}"
    elif steps <= 0 and gpu and corpus is not None:
        num_params = count_parameters(preset, corpus.vocab_size)
        budget = gpu_token_budget(corpus.train_tokens, num_params)
        why = (f"one epoch of {corpus.train_tokens:,} train tokens" if budget == corpus.train_tokens else
               f"{TOKENS_PER_PARAM} tokens per parameter ({num_params:,} parameters; the corpus has "
               f"{corpus.train_tokens:,} train tokens)")
    if batch_tokens <= 0:
        if not gpu:
            batch_tokens = micro_step_tokens
        elif budget is not None and tokens <= 0:
            batch_tokens = gpu_batch_tokens(budget, micro_step_tokens)
        else:
            batch_tokens = GPU_BATCH_TOKENS
    if tokens > 0:
        steps = math.ceil(tokens / batch_tokens)
    elif steps > 0:
        why = f"--steps {steps}"
    elif budget is not None:
        steps = max(1, budget // batch_tokens)
    else:
        steps = CPU_AUTO_STEPS if not gpu else GPU_FALLBACK_STEPS
        why = "the CPU default" if not gpu else "the GPU default (corpus size unknown)"
    if eval_every is None:
        eval_every = max(1, steps // 5)
    if eval_tokens <= 0:
        eval_tokens = GPU_EVAL_TOKENS if gpu else CPU_EVAL_TOKENS
    if log_every <= 0:
        log_every = 10 if gpu else 1
    return Resolved(preset=preset, steps=steps, batch_tokens=batch_tokens, micro_batch=micro_batch,
                    lr=lr if lr is not None else PRESET_LR.get(preset, 6e-4),
                    compile=gpu if compile_ is None else compile_, eval_every=eval_every,
                    eval_tokens=eval_tokens, log_every=log_every,
                    why_steps=f"{steps:,} steps of {batch_tokens:,} tokens: {why}")


def pretrain_config(r: Resolved, *, run_dir: str | Path, shards_dir: str | Path, tokenizer_path: str | Path | None,
                    device: str = "auto", precision: str = "auto", parallelism: str = "ddp", resume: bool = False,
                    seed: int = 1337, seq_len: int = 0, min_lr: float | None = None,
                    warmup_steps: int | None = None, weight_decay: float = 0.1, grad_clip: float = 1.0,
                    sample_every: int | None = None, prompt: str = "The", sample_tokens: int = 48,
                    ckpt_every: int | None = None, keep_last: int = 3, tensorboard: bool = True,
                    verify_shards: bool = True, peak_tflops: float | None = None):
    """The `TrainConfig` of `crawlgpt pretrain` for resolved auto options and the remaining options
    (keyword defaults are the command's defaults)."""
    from train.config import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig

    tokenizer = Path(tokenizer_path) if tokenizer_path else None
    return TrainConfig(
        run_dir=str(run_dir), max_steps=r.steps, preset=r.preset, global_batch_tokens=r.batch_tokens,
        device=device, precision=precision, compile=r.compile, parallelism=parallelism, resume=resume, seed=seed,
        peak_tflops=peak_tflops,
        data=DataConfig(shards_dir=str(shards_dir), seq_len=seq_len or None, micro_batch_size=r.micro_batch,
                        seed=seed, verify_checksums=verify_shards),
        optim=OptimConfig(lr=r.lr, min_lr=min_lr if min_lr is not None else r.lr / 10, warmup_steps=warmup_steps,
                          weight_decay=weight_decay, grad_clip=grad_clip),
        eval=EvalConfig(every_steps=r.eval_every, max_tokens=r.eval_tokens,
                        sample_every_steps=r.eval_every if sample_every is None else sample_every,
                        sample_prompt=prompt, sample_tokens=sample_tokens,
                        tokenizer_path=str(tokenizer) if tokenizer is not None and tokenizer.is_file() else None),
        checkpoint=CheckpointConfig(every_steps=r.eval_every if ckpt_every is None else ckpt_every,
                                    keep_last=keep_last),
        log=LogConfig(every_steps=r.log_every, tensorboard=tensorboard),
    )
