"""A conversation with a fine-tuned model: the history rendered with the model's template, trimmed
from the oldest turn when it nears the context, and answers streamed token by token with a KV cache.

`ChatSession` is what `crawlgpt chat` drives; it is plain Python over a GPT, so tests and scripts can
use it without a terminal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from model.gpt import GPT, KVCache, sample_next_token
from train.evaluate import autocast_context
from train.tune.templates import PromptTemplate, encode_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 256
    """Tokens per answer at most (fewer when the context is nearly full)."""
    temperature: float = 0.7
    """Softmax temperature; 0 = greedy."""
    top_k: int | None = 40
    """Sample among the k most likely tokens (None = all)."""
    top_p: float | None = None
    """Sample among the smallest set of tokens whose probability reaches p (None = all)."""
    seed: int | None = 0
    """Seed of the sampler (None = a fresh random answer each time)."""


@torch.no_grad()
def stream_tokens(model: GPT, prompt_ids: list[int], options: GenerationOptions, eot_id: int | None,
                  device: torch.device) -> Iterator[int]:
    """Yield new token ids one by one (stops before end-of-text, after max_new_tokens, or at the full
    context). The prompt is read once into the KV cache; each new token costs one position."""
    was_training = model.training
    model.eval()
    context = model.config.max_seq_len
    steps = min(options.max_new_tokens, context - len(prompt_ids))
    generator = None
    if options.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(options.seed)
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else model.tok_emb.weight.dtype
    cache = KVCache(model.config, 1, device, dtype)
    try:
        with autocast_context(device, bf16):
            logits, _ = model(torch.tensor([prompt_ids], dtype=torch.long, device=device), cache=cache)  # (1, 1, V)
            for _ in range(steps):
                token = sample_next_token(logits[:, -1, :].float(), options.temperature, options.top_k,
                                          options.top_p, generator)  # (1, 1)
                token_id = int(token)
                if token_id == eot_id:
                    return
                yield token_id
                if cache.length >= context:
                    return
                logits, _ = model(token, cache=cache)
    finally:
        model.train(was_training)


class ChatSession:
    """The conversation so far and the model that continues it."""

    def __init__(self, model: GPT, tokenizer, template: PromptTemplate, eot_id: int, device: torch.device,
                 options: GenerationOptions = GenerationOptions(), system: str | None = None):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.eot_id, self.device, self.options, self.system = eot_id, device, options, system
        self.history: list[dict] = []
        self.turns = 0
        self.trimmed_turns = 0
        """User turns dropped from the prompt so far because the context was full."""

    def reset(self) -> None:
        self.history = []

    def _messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def prompt_ids(self) -> list[int]:
        """End-of-text, then the conversation (oldest turns dropped until an answer of max_new_tokens
        fits the context, keeping at least half the context for the prompt)."""
        context = self.model.config.max_seq_len
        room = min(self.options.max_new_tokens, context // 2)
        while True:
            ids, _ = encode_messages(self.tokenizer, self._messages(), self.template, add_generation_prompt=True)
            ids = [self.eot_id, *ids]
            user_turns = [i for i, m in enumerate(self.history) if m["role"] == "user"]
            if len(ids) + room <= context or len(user_turns) <= 1:
                return ids
            # Drop the oldest exchange: its user turn and everything up to the next user turn.
            self.history = self.history[user_turns[1]:]
            self.trimmed_turns += 1

    def reply(self, text: str) -> Iterator[str]:
        """Stream the answer to a user message as text pieces; the answer joins the history at the end."""
        self.history.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        if len(ids) >= self.model.config.max_seq_len:
            self.history.pop()
            raise ChatInputError(f"the message needs {len(ids)} tokens with the template, more than the model's "
                                 f"{self.model.config.max_seq_len}-token context; send a shorter message")
        seed = None if self.options.seed is None else self.options.seed + self.turns
        options = GenerationOptions(self.options.max_new_tokens, self.options.temperature, self.options.top_k,
                                    self.options.top_p, seed)
        new: list[int] = []
        shown = ""
        for token_id in stream_tokens(self.model, ids, options, self.eot_id, self.device):
            new.append(token_id)
            text_so_far = self.tokenizer.decode(new)
            if text_so_far.endswith("\ufffd"):  # a multi-byte character not complete yet
                continue
            yield text_so_far[len(shown):]
            shown = text_so_far
        answer = self.tokenizer.decode(new)
        if len(answer) > len(shown):
            yield answer[len(shown):]
        self.history.append({"role": "assistant", "content": answer})
        self.turns += 1


class ChatInputError(ValueError):
    """A message the model cannot take (too long for its context)."""
