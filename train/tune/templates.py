"""Prompt templates: how an instruction or a conversation becomes the text a model continues.

A template is stored in every fine-tuned checkpoint (`payload["template"]`), so that `sft`, `evaluate
--instructions`, `sample --instruction`, `chat` and the alignment objectives all format prompts the
same way the model was trained with. A response is always the response text followed by the
end-of-text token id, which the model learns to emit (and generation stops at).

- `alpaca` (default): the template of "Build a Large Language Model (From Scratch)", chapter 7:
  a fixed preamble, `### Instruction:`, `### Input:` only when the input is non-empty, `### Response:`.
- `chat`: turns delimited by two of the tokenizer's reserved special tokens,
  `<|reserved_0|>role\\n content <|reserved_1|>\\n` for system and user turns; an assistant turn is
  `<|reserved_0|>assistant\\n content` followed by end-of-text (its end of turn). Special-token strings
  inside message text are encoded as plain text (`encode_text`), so a user cannot forge a turn.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from train.errors import TrainError

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
TEMPLATE_NAMES = ("alpaca", "chat")
ROLES = ("system", "user", "assistant")


class TemplateError(TrainError):
    """A template that cannot be used: unknown name, or a tokenizer without its special tokens."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str = "alpaca"
    """"alpaca" (the book's instruction template, the default) or "chat" (multi-turn, special tokens)."""
    turn_start: str = "<|reserved_0|>"
    """chat: the special token that opens a turn (followed by the role and a newline)."""
    turn_end: str = "<|reserved_1|>"
    """chat: the special token that closes a system or user turn (assistant turns end with end-of-text)."""
    eot_token: str = "<|endoftext|>"
    """The end-of-text token's text: it ends every response."""

    def __post_init__(self) -> None:
        if self.name not in TEMPLATE_NAMES:
            raise TemplateError(f"unknown prompt template {self.name!r}; use one of {', '.join(TEMPLATE_NAMES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptTemplate":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    # ---- single instructions ----------------------------------------------------------------------

    def prompt(self, instruction: str, input: str = "") -> str:
        """The full prompt up to where the response starts."""
        if self.name == "chat":
            user = instruction if not input else f"{instruction}\n\n{input}"
            return self.chat_prompt([{"role": "user", "content": user}])
        text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
        if input:
            text += f"\n\n### Input:\n{input}"
        return text + "\n\n### Response:\n"

    # ---- conversations ------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict]) -> str:
        """The conversation so far, rendered up to the start of the next assistant turn."""
        return "".join(text for text, _ in self.segments(messages)) + self.assistant_header()

    def assistant_header(self) -> str:
        return f"{self.turn_start}assistant\n" if self.name == "chat" else ""

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """The conversation as (text, is_response) pieces: a response piece is an assistant message's
        text followed by the end-of-text token, the only text a fine-tuned model is trained to produce."""
        merged: list[tuple[str, bool]] = []
        for text, is_response, _ in self.pieces(messages):
            if merged and merged[-1][1] == is_response:
                merged[-1] = (merged[-1][0] + text, is_response)
            else:
                merged.append((text, is_response))
        return merged

    def pieces(self, messages: list[dict]) -> list[tuple[str, bool, bool]]:
        """(text, is_response, is_special) pieces: is_special marks a special token's string, every
        other piece is plain text (message content included) and is encoded as such.

        alpaca renders each user turn as an instruction prompt (a system message replaces the preamble)
        and each assistant turn as its response and end-of-text; the next instruction follows the
        end-of-text directly, as the next example does in a packed training row.
        """
        out: list[tuple[str, bool, bool]] = []
        if self.name == "chat":
            for m in messages:
                role, content = m["role"], m["content"]
                out.append((self.turn_start, False, True))
                if role == "assistant":
                    out.append(("assistant\n", False, False))
                    out.append((content, True, False))
                    out.append((self.eot_token, True, True))
                else:
                    out += [(f"{role}\n{content}", False, False), (self.turn_end, False, True), ("\n", False, False)]
            return out
        preamble = ALPACA_PREAMBLE
        for m in messages:
            role, content = m["role"], m["content"]
            if role == "system":
                preamble = content
            elif role == "user":
                out.append((f"{preamble}\n\n### Instruction:\n{content}\n\n### Response:\n", False, False))
            else:
                out += [(content, True, False), (self.eot_token, True, True)]
        return out

    def instruction_pieces(self, instruction: str, input: str, response: str) -> list[tuple[str, bool, bool]]:
        """An Alpaca-style example as pieces (see `pieces`): `prompt(instruction, input)`, then the
        response and end-of-text."""
        if self.name == "chat":
            user = instruction if not input else f"{instruction}\n\n{input}"
            return self.pieces([{"role": "user", "content": user}, {"role": "assistant", "content": response}])
        return [(self.prompt(instruction, input), False, False), (response, True, False), (self.eot_token, True, True)]

    def instruction_prompt_pieces(self, instruction: str, input: str = "") -> list[tuple[str, bool, bool]]:
        """The pieces of `prompt(instruction, input)`: what a model continues to answer an instruction."""
        return [p for p in self.instruction_pieces(instruction, input, "") if not p[1]]

    def generation_pieces(self) -> list[tuple[str, bool, bool]]:
        """The header of the next assistant turn (chat), appended to a conversation to prompt an answer."""
        return [(self.turn_start, False, True), ("assistant\n", False, False)] if self.name == "chat" else []

    def special_tokens(self) -> list[str]:
        """Special-token strings the rendered text may contain (encoded as their single ids)."""
        return [self.eot_token, self.turn_start, self.turn_end] if self.name == "chat" else [self.eot_token]

    def check_tokenizer(self, tokenizer, where: str = "the tokenizer") -> None:
        """Every special token of the template must be a single token of the tokenizer."""
        for token in self.special_tokens():
            if tokenizer.token_to_id(token) is None:
                hint = ("the chat template needs the reserved tokens that `make tokenizer` adds; use "
                        "--template alpaca, or a tokenizer made by `crawlgpt tokenizer`") if self.name == "chat" \
                    else "use the tokenizer made by `crawlgpt tokenizer`"
                raise TemplateError(f"{where} has no {token!r} token: {hint}")


def template_from_checkpoint(payload: dict[str, Any]) -> PromptTemplate:
    """The template a checkpoint was fine-tuned with; alpaca when it has none (a base model)."""
    saved = payload.get("template")
    return PromptTemplate.from_dict(saved) if isinstance(saved, dict) else PromptTemplate()


# ------------------------------------------------------------------------------------------------
# Encoding rendered text


def encode_text(tokenizer, text: str, template: PromptTemplate) -> list[int]:
    """Token ids of rendered template text (e.g. `template.prompt(...)`): the template's special-token
    strings become their ids, everything between them is encoded as plain text. To keep special-token
    strings inside message content from becoming control tokens, encode with `encode_messages`."""
    specials = template.special_tokens()
    pattern = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")
    ids: list[int] = []
    for piece in pattern.split(text):
        if piece in specials:
            token_id = tokenizer.token_to_id(piece)
            if token_id is None:
                template.check_tokenizer(tokenizer)  # raises a TemplateError naming the token
            ids.append(token_id)
        elif piece:
            ids.extend(_encode_plain(tokenizer, piece))
    return ids


def _encode_plain(tokenizer, text: str) -> list[int]:
    previous = getattr(tokenizer, "encode_special_tokens", None)
    if previous is not None:
        tokenizer.encode_special_tokens = True
    try:
        return tokenizer.encode(text, add_special_tokens=False).ids if text else []
    finally:
        if previous is not None:
            tokenizer.encode_special_tokens = previous


def encode_messages(tokenizer, messages: list[dict], template: PromptTemplate,
                    add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and, per token, whether it is part of a response (an assistant
    message or its end-of-text). With add_generation_prompt the header of the next assistant turn is
    appended (the prompt a model continues). Message content is always encoded as plain text."""
    pieces = template.pieces(messages) + (template.generation_pieces() if add_generation_prompt else [])
    return encode_pieces(tokenizer, pieces, template)


def encode_instruction(tokenizer, template: PromptTemplate, instruction: str, input: str = "",
                       response: str = "") -> tuple[list[int], list[bool]]:
    """Token ids of prompt + response + end-of-text and the response mask (see `encode_messages`)."""
    return encode_pieces(tokenizer, template.instruction_pieces(instruction, input, response), template)


def encode_pieces(tokenizer, pieces: list[tuple[str, bool, bool]],
                  template: PromptTemplate) -> tuple[list[int], list[bool]]:
    """Encode (text, is_response, is_special) pieces: ids and the per-token response mask. Adjacent
    plain pieces of the same kind are encoded together, as they appear in the rendered text."""
    ids: list[int] = []
    mask: list[bool] = []
    plain = ""
    plain_response = False

    def flush() -> None:
        nonlocal plain
        if plain:
            new = _encode_plain(tokenizer, plain)
            ids.extend(new)
            mask.extend([plain_response] * len(new))
            plain = ""

    for text, is_response, is_special in pieces:
        if is_special:
            flush()
            token_id = tokenizer.token_to_id(text)
            if token_id is None:
                template.check_tokenizer(tokenizer)  # raises a TemplateError naming the token
            ids.append(token_id)
            mask.append(is_response)
        else:
            if plain and plain_response != is_response:
                flush()
            plain += text
            plain_response = is_response
    flush()
    return ids, mask
