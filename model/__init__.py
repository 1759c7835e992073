"""The GPT model: one readable file, `model/gpt.py`. Needs only torch."""

from model.gpt import (
    GPT,
    PRESETS,
    GPTConfig,
    KVCache,
    ModelConfigError,
    SequenceTooLongError,
    preset_config,
)

__all__ = ["GPT", "GPTConfig", "KVCache", "ModelConfigError", "PRESETS", "SequenceTooLongError", "preset_config"]
