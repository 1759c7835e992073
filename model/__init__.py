"""The GPT model: one readable file, `model/gpt.py` (needs only torch); its presets in `model/presets.py`.

The names below load `model.gpt` (and so torch) on first use, not on `import model.presets`: the
command line reads the presets for its help without importing torch.
"""

from __future__ import annotations

import importlib

__all__ = ["GPT", "GPTConfig", "KVCache", "ModelConfigError", "PRESETS", "SequenceTooLongError", "preset_config"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("model.gpt"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
