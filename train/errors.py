"""Typed errors of the trainer. Each message names what is wrong, where, and what to run or change.

The CLI turns any `TrainError` into a one-line message without a traceback.
"""

from __future__ import annotations

from formats.errors import CrawlGPTError


class TrainError(CrawlGPTError):
    """Base class for every trainer error a user can act on."""


class TrainConfigError(TrainError, ValueError):
    """An option has an invalid value; the message names the option."""

    def __init__(self, option: str, message: str):
        super().__init__(f"invalid {option}: {message}")
        self.option = option


class ShardDataError(TrainError):
    """Token shards are missing, corrupt or unusable (too few tokens for one window)."""


class VocabMismatchError(TrainError):
    """The tokenizer (or the shards made with it) does not match the model's vocabulary."""


class SeqLenError(TrainError):
    """A sequence length longer than the model's context."""


class CheckpointError(TrainError):
    """A checkpoint file is missing, unreadable or not a checkpoint of this trainer."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint made with a different model config than the one requested."""


class CheckpointKindError(CheckpointError):
    """A checkpoint of the wrong kind for the command: a base model where a fine-tuned one is needed, a
    reward model given as a policy, a language model given as a classifier, ..."""


class RunDirError(TrainError):
    """A run folder already holds checkpoints and neither resume nor a new run name was given."""


class NonFiniteLossError(TrainError):
    """The loss (or the gradient norm) of a step is NaN or infinite: the step is not applied."""
