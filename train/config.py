"""Configuration of a training run: one small frozen dataclass per component, gathered in `TrainConfig`.

Every field has a one-line doc under it; the CLI options map onto these fields one to one. Invalid
values raise `TrainConfigError` naming the option. Configs are stored in every checkpoint as plain
dicts (`to_dict`) and read back with `from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from train.errors import TrainConfigError


@dataclass(frozen=True)
class DataConfig:
    shards_dir: str = "data/shards"
    """Folder with `train/` and `val/` token shards (written by `crawlgpt shards`)."""
    seq_len: int | None = None
    """Tokens per training window (each window reads seq_len + 1 tokens); None means the model's context."""
    micro_batch_size: int = 8
    """Windows per device per forward pass; gradient accumulation makes up the rest of the global batch."""
    seed: int = 1337
    """Seed of the window order; the order depends only on this seed and the step."""
    prefetch_batches: int = 4
    """Batches a background thread prepares ahead of the training step (0 = no background thread)."""
    verify_checksums: bool = True
    """Check every shard's sha256 against the manifest at start (sizes and metadata are always checked)."""

    def __post_init__(self) -> None:
        if self.seq_len is not None and self.seq_len < 1:
            raise TrainConfigError("--seq-len", f"must be >= 1, got {self.seq_len}")
        if self.micro_batch_size < 1:
            raise TrainConfigError("--micro-batch", f"must be >= 1, got {self.micro_batch_size}")
        if self.prefetch_batches < 0:
            raise TrainConfigError("prefetch_batches", f"must be >= 0, got {self.prefetch_batches}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 6e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 6e-5
    """Learning rate at the end of the cosine decay (and after it)."""
    warmup_steps: int | None = None
    """Steps of linear warmup from 0 to lr; None means 5 % of the run, at most 1000 steps."""
    decay_steps: int | None = None
    """Step at which the cosine reaches min_lr; None means the last step of the run."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not to norm gains)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise TrainConfigError("--lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise TrainConfigError("--min-lr", f"must be between 0 and --lr={self.lr}, got {self.min_lr}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise TrainConfigError("--warmup-steps", f"must be >= 0, got {self.warmup_steps}")
        if self.grad_clip < 0:
            raise TrainConfigError("--grad-clip", f"must be >= 0, got {self.grad_clip}")


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 250
    """Validation loss every this many steps (and always at the end); 0 = only at the end."""
    max_tokens: int | None = 2_000_000
    """Validation tokens read per evaluation (from the start of the val split); None = all of them."""
    sample_every_steps: int = 250
    """Log a sample from `sample_prompt` every this many steps (and at the end); 0 = never."""
    sample_prompt: str = "The"
    """Fixed prompt of the samples (needs the tokenizer; without it the sample starts at end-of-text)."""
    sample_tokens: int = 48
    """New tokens per sample."""
    tokenizer_path: str | None = None
    """tokenizer.json used to encode the prompt and decode samples; None = log token ids only."""
    benchmarks: tuple[str, ...] = ()
    """Zero-shot benchmarks (formats.benchmark_tasks names) scored at every evaluation step; () = none."""
    benchmark_limit: int | None = 500
    """Items of each benchmark scored at each evaluation step (None = all)."""
    benchmark_dir: str = "../shared/data/eval"
    """Folder holding the benchmark files under their release names."""

    def __post_init__(self) -> None:
        for name, option in (("every_steps", "--eval-every"), ("sample_every_steps", "--sample-every"),
                             ("sample_tokens", "--sample-tokens")):
            if getattr(self, name) < 0:
                raise TrainConfigError(option, f"must be >= 0, got {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TrainConfigError("--eval-tokens", f"must be >= 1, got {self.max_tokens}")
        if self.benchmark_limit is not None and self.benchmark_limit < 1:
            raise TrainConfigError("--benchmark-limit", f"must be >= 1, got {self.benchmark_limit}")
        object.__setattr__(self, "benchmarks", tuple(self.benchmarks))  # a list from a checkpoint's dict


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500
    """Write a checkpoint every this many steps (and always at the end and on SIGTERM/SIGINT); 0 = end only."""
    keep_last: int = 3
    """Keep this many most recent checkpoints; older ones are deleted."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise TrainConfigError("--ckpt-every", f"must be >= 0, got {self.every_steps}")
        if self.keep_last < 1:
            raise TrainConfigError("--keep-last", f"must be >= 1, got {self.keep_last}")


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 10
    """Progress line and metrics.jsonl record every this many steps."""
    tensorboard: bool = True
    """Also write TensorBoard events under <run>/tensorboard when tensorboard is installed."""
    plot: bool = True
    """Write <run>/loss.png (training and validation loss) when matplotlib is installed."""

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise TrainConfigError("--log-every", f"must be >= 1, got {self.every_steps}")


PRECISIONS = ("auto", "bf16", "fp32")
PARALLELISMS = ("ddp", "fsdp")
PP_SCHEDULES = ("gpipe", "1f1b")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")
CHECKPOINT_FORMATS = ("auto", "file", "dcp")


@dataclass(frozen=True)
class ParallelConfig:
    """Model parallelism (train/parallel/): the world is a (pp, dp, tp) mesh, dp = world / (tp * pp)."""

    tp: int = 1
    """Tensor-parallel ranks: each block's attention heads and feed-forward width split across them."""
    pp: int = 1
    """Pipeline stages: the decoder blocks split into this many consecutive groups, one per rank."""
    pp_layers: tuple[int, ...] | None = None
    """Blocks per pipeline stage (sums to n_layer); None = as even a split as possible."""
    pp_schedule: str = "1f1b"
    """Pipeline schedule: gpipe (all forwards, then all backwards) or 1f1b (interleaved, less memory)."""
    microbatches: int = 0
    """Pipeline micro-batches each micro-batch is cut into (must divide --micro-batch); 0 = pp."""
    sequence_parallel: bool = False
    """With tp > 1: the norms (and the residual stream between blocks) split along the sequence across the
    tp ranks, so their activations take 1/tp of the memory (an all-gather and a reduce-scatter replace each
    all-reduce)."""
    activation_checkpointing: str = "none"
    """Recompute activations in the backward pass: none, full (each block), selective (keep matmul outputs)."""
    checkpoint_format: str = "auto"
    """file (one .pt, rank 0 writes), dcp (torch.distributed.checkpoint folder, every rank writes its
    part); auto = dcp under tensor or pipeline parallelism, file otherwise."""

    def __post_init__(self) -> None:
        if self.pp_layers is not None:
            object.__setattr__(self, "pp_layers", tuple(int(n) for n in self.pp_layers))
        for name, option in (("tp", "--tp"), ("pp", "--pp")):
            if getattr(self, name) < 1:
                raise TrainConfigError(option, f"must be >= 1, got {getattr(self, name)}")
        if self.microbatches < 0:
            raise TrainConfigError("--microbatches", f"must be >= 0, got {self.microbatches}")
        if self.pp_schedule not in PP_SCHEDULES:
            raise TrainConfigError("--pp-schedule", f"must be one of {PP_SCHEDULES}, got {self.pp_schedule!r}")
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise TrainConfigError("--activation-checkpointing", f"must be one of {ACTIVATION_CHECKPOINTING}, "
                                   f"got {self.activation_checkpointing!r}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise TrainConfigError("--checkpoint-format", f"must be one of {CHECKPOINT_FORMATS}, "
                                   f"got {self.checkpoint_format!r}")
        if self.pp_layers is not None:
            if len(self.pp_layers) != self.pp or min(self.pp_layers) < 1:
                raise TrainConfigError("--pp-layers", f"needs {self.pp} positive block counts (one per stage), "
                                       f"got {','.join(map(str, self.pp_layers))}")

    @property
    def pipeline_microbatches(self) -> int:
        return self.microbatches or self.pp


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str
    """Folder of this run: metrics.jsonl, loss.png, checkpoints/, tensorboard/."""
    max_steps: int
    """Optimizer steps to train for (the run ends at this step, also when resumed)."""
    preset: str = "auto"
    """Model preset (tiny, small, gpt2-124m, 350m, 1b); auto = small on CPU, gpt2-124m on GPU."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Model config fields that replace the preset's (e.g. {"n_layer": 4}); vocab_size comes from the shards."""
    global_batch_tokens: int = 65_536
    """Tokens per optimizer step across all ranks; reached by gradient accumulation (rounded down, >= 1 micro-batch)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, mps, or auto (cuda if available, else cpu). Under torchrun each rank uses cuda:LOCAL_RANK."""
    precision: str = "auto"
    """bf16 (autocast) or fp32; auto = bf16 on CUDA, fp32 elsewhere."""
    compile: bool = False
    """torch.compile each decoder block (first steps are slower while it compiles)."""
    parallelism: str = "ddp"
    """With more than one process: ddp (replicate the model) or fsdp (FSDP2 fully_shard, for big models)."""
    resume: bool = False
    """Continue from the newest checkpoint in run_dir; without it a run_dir holding checkpoints is an error."""
    seed: int = 1337
    """Seed of the model initialisation and of every library's RNG."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU; None = look the device up in a table (n/a on CPU)."""
    handle_signals: bool = True
    """On SIGTERM/SIGINT finish the current step, write a checkpoint and stop."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise TrainConfigError("--steps", f"must be >= 1, got {self.max_steps}")
        if self.global_batch_tokens < 1:
            raise TrainConfigError("--batch-tokens", f"must be >= 1, got {self.global_batch_tokens}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError("--precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        if self.parallelism not in PARALLELISMS:
            raise TrainConfigError("--parallelism", f"must be one of {PARALLELISMS}, got {self.parallelism!r}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise TrainConfigError("--peak-tflops", f"must be > 0, got {self.peak_tflops}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        parts = {"data": DataConfig, "optim": OptimConfig, "eval": EvalConfig,
                 "checkpoint": CheckpointConfig, "log": LogConfig,
                 "parallel": ParallelConfig}
        values = dict(values)
        for name, part in parts.items():
            if name in values and isinstance(values[name], dict):
                values[name] = part(**values[name])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
