"""Prompt templates (placeholder for the fine-tuning branch's module: the alpaca template only).

The interface (`PromptTemplate`, `template_from_checkpoint`) is the one fine-tuning and alignment share;
the fine-tuning branch provides the full module (alpaca and chat) and replaces this file at merge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class PromptTemplate:
    name: str = "alpaca"
    """alpaca (the book's format); chat comes with the fine-tuning branch's module."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptTemplate:
        return cls(**d)

    def prompt(self, instruction: str, input: str = "") -> str:
        """The prompt text up to where the response starts."""
        text = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
        if input:
            text += f"\n\n### Input:\n{input}"
        return text + "\n\n### Response:\n"

    def chat_prompt(self, messages: list[dict]) -> str:
        """Messages rendered as one alpaca instruction (system and earlier turns folded in)."""
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return self.prompt("\n".join(lines))


def template_from_checkpoint(payload: dict[str, Any]) -> PromptTemplate:
    """The checkpoint's template; alpaca when it has none."""
    saved = payload.get("template")
    return PromptTemplate.from_dict(saved) if saved else PromptTemplate()
