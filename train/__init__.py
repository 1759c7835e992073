"""The trainer: `train(TrainConfig) -> TrainResult`. Needs only torch, numpy and pyarrow.

Modules: config (dataclasses), data (stateful loader over token shards), schedule (learning rate),
checkpoint (atomic save, weights-only load, sharded DCP folders), distributed (torchrun, DDP, FSDP2),
parallel (tensor and pipeline parallel layouts, activation checkpointing), metrics (jsonl,
TensorBoard, loss plot, MFU), evaluate (validation loss, perplexity, samples), setup (a run's set-up),
loop (the loop); tune/ (SFT, chat, classification), align/ (reward, DPO, PPO), export/ (HF, GGUF).
"""

from __future__ import annotations

import importlib

from train.config import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
from train.errors import (
    CheckpointError,
    CheckpointMismatchError,
    RunDirError,
    SeqLenError,
    ShardDataError,
    TrainConfigError,
    TrainError,
    VocabMismatchError,
)

__all__ = [
    "CheckpointConfig", "CheckpointError", "CheckpointMismatchError", "DataConfig", "EvalConfig", "LogConfig",
    "OptimConfig", "RunDirError", "SeqLenError", "ShardDataError", "TrainConfig", "TrainConfigError",
    "TrainError", "TrainResult", "VocabMismatchError", "train",
]


def __getattr__(name: str):
    """`train` and `TrainResult` load the loop (and so torch) on first use, not on `import train.defaults`:
    the command line reads the auto defaults for its help without importing torch."""
    if name == "train":
        return importlib.import_module("train.loop").train
    if name == "TrainResult":
        return importlib.import_module("train.setup").TrainResult
    raise AttributeError(f"module 'train' has no attribute {name!r}")
