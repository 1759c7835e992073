"""The trainer: `train(TrainConfig) -> TrainResult`. Needs only torch, numpy and pyarrow.

Modules: config (dataclasses), data (stateful loader over token shards), schedule (learning rate),
checkpoint (atomic save, weights-only load, sharded DCP folders), distributed (torchrun, DDP, FSDP2),
parallel (tensor and pipeline parallel layouts, activation checkpointing), metrics (jsonl,
TensorBoard, loss plot, MFU), evaluate (validation loss, perplexity, samples), loop (the loop).
"""

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
from train.loop import TrainResult, train

__all__ = [
    "CheckpointConfig", "CheckpointError", "CheckpointMismatchError", "DataConfig", "EvalConfig", "LogConfig",
    "OptimConfig", "RunDirError", "SeqLenError", "ShardDataError", "TrainConfig", "TrainConfigError",
    "TrainError", "TrainResult", "VocabMismatchError", "train",
]
