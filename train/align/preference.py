"""Preference pairs (a prompt, a chosen and a rejected response) and prompts: read, formatted, tokenized, split.

Three record shapes are read, from a JSON list (`.json`) or one object per line (`.jsonl`), and may mix:
- the book's: `instruction`, optional `input`, `chosen`, `rejected` (strings);
- `prompt`, `chosen`, `rejected` (strings);
- chat: `chosen` and `rejected` lists of `{role, content}` messages that share every message but the
  last (an assistant turn), optionally with the shared messages given apart as a `prompt` list.
The prompt is rendered with the policy's `PromptTemplate`; a response is its text followed by the
end-of-text token, which the model learns to emit. Every prompt starts with end-of-text, as every
document did in pretraining (and as `crawlgpt sample` does).

Records are never fatal one by one: a record that lacks a field, has the same chosen and rejected
response, or whose prompt leaves no room in the context is skipped and counted under a named reason
(`PairStats`); only a file that yields no pair at all is an error. The train/validation split hashes
the prompt, so it does not depend on the file's order, and every pair of one prompt lands on the same side.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from train.errors import TrainError
from train.tune.templates import PromptTemplate

log = logging.getLogger(__name__)


class PreferenceDataError(TrainError):
    """A preference or prompt file that cannot be read, or that yields no usable record."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    """The prompt rendered with the template, up to where the response starts."""
    chosen: str
    """The preferred response (without end-of-text)."""
    rejected: str
    """The dispreferred response (without end-of-text)."""
    key: str
    """sha256 of the unrendered prompt: decides the train/validation side."""
    where: str
    """file:record, for messages."""


@dataclass(frozen=True)
class TokenPair:
    prompt: list[int]
    """Token ids of the prompt (starting with end-of-text)."""
    chosen: list[int]
    """Token ids of the chosen response, ending with end-of-text unless cut at the context."""
    rejected: list[int]
    """Token ids of the rejected response, likewise."""


@dataclass
class PairStats:
    """What happened to every record of a file."""

    records: int = 0
    """Records read."""
    kept: int = 0
    """Pairs kept."""
    skipped: Counter = field(default_factory=Counter)
    """Skipped records by reason (missing_field, identical, prompt_too_long, ...)."""
    truncated: int = 0
    """Kept pairs whose responses were cut to fit the context."""

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"{self.records:,} records: {self.kept:,} kept ({self.truncated:,} with responses cut at the "
                f"context), skipped: {reasons}")

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "kept": self.kept, "truncated": self.truncated,
                "skipped": dict(self.skipped)}


# ------------------------------------------------------------------------------------------------
# Reading records


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a .json list or a .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise PreferenceDataError(f"{path} does not exist; pass a .json or .jsonl file of preference pairs or prompts")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path.name}:{line_no}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise PreferenceDataError(f"{path}:{line_no} is not valid JSON ({err.msg}); fix or remove "
                                              f"that line") from err
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PreferenceDataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); a .json file "
                                  f"holds one list of records, a .jsonl file one record per line") from err
    if not isinstance(data, list):
        raise PreferenceDataError(f"{path} holds a JSON {type(data).__name__}, not a list of records")
    for i, record in enumerate(data):
        yield f"{path.name}[{i}]", record


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _prompt_of(record: dict, template: PromptTemplate) -> tuple[str, str] | str:
    """(rendered prompt, unrendered key text), or the name of the skip reason."""
    if isinstance(record.get("instruction"), str):
        inp = record.get("input") or ""
        if not isinstance(inp, str):
            return "bad_field"
        return template.prompt(record["instruction"], inp), record["instruction"] + "\n" + inp
    if isinstance(record.get("prompt"), str):
        return template.prompt(record["prompt"]), record["prompt"]
    if _is_messages(record.get("prompt")):
        return template.chat_prompt(record["prompt"]), json.dumps(record["prompt"], sort_keys=True)
    return "missing_field"


def _pair_of(record: Any, template: PromptTemplate) -> tuple[str, str, str, str] | str:
    """(prompt, chosen, rejected, key) of one record, or the name of the reason to skip it."""
    if not isinstance(record, dict):
        return "not_an_object"
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if chosen is None or rejected is None:
        return "missing_field"
    if _is_messages(chosen) and _is_messages(rejected):
        if "prompt" in record:
            prompt = _prompt_of(record, template)
            if isinstance(prompt, str):
                return prompt
            # Chosen and rejected may repeat the prompt's messages before the answer: keep the answer.
            answer_c, answer_r = _last_assistant(chosen), _last_assistant(rejected)
            if answer_c is None or answer_r is None:
                return "bad_field"
            return prompt[0], answer_c, answer_r, prompt[1]
        if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            return "bad_field"
        if chosen[:-1] != rejected[:-1]:
            return "prompts_differ"
        prefix = chosen[:-1]
        return (template.chat_prompt(prefix), chosen[-1]["content"], rejected[-1]["content"],
                json.dumps(prefix, sort_keys=True))
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "bad_field"
    prompt = _prompt_of(record, template)
    if isinstance(prompt, str):
        return prompt
    return prompt[0], chosen, rejected, prompt[1]


def _last_assistant(messages: list[dict]) -> str | None:
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None


def read_preference_pairs(path: str | Path, template: PromptTemplate) -> tuple[list[PreferencePair], PairStats]:
    """Every usable pair of a file, with the count of each skip reason."""
    stats = PairStats()
    pairs = []
    for where, record in iter_records(path):
        stats.records += 1
        got = _pair_of(record, template)
        if isinstance(got, str):
            stats.skipped[got] += 1
            if stats.skipped[got] <= 3:
                log.warning("%s: skipped (%s)", where, got)
            continue
        prompt, chosen, rejected, key_text = got
        if chosen.strip() == rejected.strip():
            stats.skipped["identical"] += 1
            continue
        key = hashlib.sha256(key_text.encode("utf-8")).hexdigest()
        pairs.append(PreferencePair(prompt, chosen, rejected, key, where))
    stats.kept = len(pairs)
    if not pairs:
        raise PreferenceDataError(f"{path} holds no usable preference pair ({stats.summary()}); each record needs "
                                  f"`chosen` and `rejected` and a prompt (`instruction`[+`input`], `prompt`, or "
                                  f"chat message lists)")
    return pairs, stats


def read_prompts(path: str | Path, template: PromptTemplate) -> tuple[list[tuple[str, str]], PairStats]:
    """(rendered prompt, key) for every record with a prompt (preference files work: responses are ignored).

    Chat records without a `prompt` contribute the messages before the last assistant turn."""
    stats = PairStats()
    prompts = []
    for where, record in iter_records(path):
        stats.records += 1
        if not isinstance(record, dict):
            stats.skipped["not_an_object"] += 1
            continue
        got = _prompt_of(record, template)
        if isinstance(got, str) and _is_messages(record.get("chosen")) and record["chosen"] \
                and record["chosen"][-1]["role"] == "assistant":
            prefix = record["chosen"][:-1]
            got = (template.chat_prompt(prefix), json.dumps(prefix, sort_keys=True))
        if isinstance(got, str):
            stats.skipped[got] += 1
            continue
        prompts.append((got[0], hashlib.sha256(got[1].encode("utf-8")).hexdigest()))
    stats.kept = len(prompts)
    if not prompts:
        raise PreferenceDataError(f"{path} holds no prompt ({stats.summary()}); each record needs `instruction`, "
                                  f"`prompt`, or chat messages")
    return prompts, stats


# ------------------------------------------------------------------------------------------------
# Split and tokens


def is_validation(key: str, val_fraction: float) -> bool:
    """The hash-stable side of a record: the first 8 hex digits of its key as a fraction of 2^32."""
    return int(key[:8], 16) / 2 ** 32 < val_fraction


def split_by_key(items: list, keys: list[str], val_fraction: float) -> tuple[list, list]:
    train, val = [], []
    for item, key in zip(items, keys):
        (val if is_validation(key, val_fraction) else train).append(item)
    return train, val


def encode_prompt(tokenizer, prompt: str, eot_id: int) -> list[int]:
    return [eot_id] + tokenizer.encode(prompt).ids


def encode_response(tokenizer, response: str, eot_id: int) -> list[int]:
    return tokenizer.encode(response).ids + [eot_id]


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, eot_id: int, max_len: int,
                   stats: PairStats) -> list[TokenPair]:
    """Token ids of each pair; responses cut so prompt + response fits max_len tokens.

    A prompt that leaves fewer than 2 response tokens is skipped (prompt_too_long), as is a pair whose
    responses become identical once cut (identical_after_cut)."""
    out = []
    for pair in pairs:
        prompt = encode_prompt(tokenizer, pair.prompt, eot_id)
        room = max_len - len(prompt)
        if room < 2:
            stats.skipped["prompt_too_long"] += 1
            if stats.skipped["prompt_too_long"] <= 3:
                log.warning("%s: prompt of %d tokens leaves no room in a %d-token context: skipped", pair.where,
                            len(prompt), max_len)
            continue
        chosen = encode_response(tokenizer, pair.chosen, eot_id)
        rejected = encode_response(tokenizer, pair.rejected, eot_id)
        if len(chosen) > room or len(rejected) > room:
            stats.truncated += 1
            chosen, rejected = chosen[:room], rejected[:room]
            if chosen == rejected:
                stats.skipped["identical_after_cut"] += 1
                continue
        out.append(TokenPair(prompt, chosen, rejected))
    stats.kept = len(out)
    return out


@dataclass
class PreferenceData:
    train: list[TokenPair]
    val: list[TokenPair]
    stats: PairStats


def load_preference_data(path: str | Path, tokenizer, template: PromptTemplate, eot_id: int, max_len: int,
                         val_fraction: float) -> PreferenceData:
    """Read, split (by prompt hash) and tokenize a preference file."""
    pairs, stats = read_preference_pairs(path, template)
    train, val = split_by_key(pairs, [p.key for p in pairs], val_fraction)
    train_tokens = tokenize_pairs(train, tokenizer, eot_id, max_len, stats)
    kept_train = stats.kept
    val_tokens = tokenize_pairs(val, tokenizer, eot_id, max_len, stats)
    stats.kept = kept_train + len(val_tokens)
    if not train_tokens:
        raise PreferenceDataError(f"{path}: no training pair left ({stats.summary()})")
    if val_fraction > 0 and not val_tokens:
        raise PreferenceDataError(f"{path}: no validation pair left at --val-fraction {val_fraction} "
                                  f"({stats.summary()}); raise --val-fraction or add pairs")
    return PreferenceData(train_tokens, val_tokens, stats)


def load_prompt_ids(path: str | Path, tokenizer, template: PromptTemplate, eot_id: int, max_prompt_len: int,
                    val_fraction: float) -> tuple[list[list[int]], list[list[int]], PairStats]:
    """Token ids of the train and validation prompts; prompts over max_prompt_len tokens are skipped."""
    prompts, stats = read_prompts(path, template)
    ids, keys = [], []
    for text, key in prompts:
        tokens = encode_prompt(tokenizer, text, eot_id)
        if len(tokens) > max_prompt_len:
            stats.skipped["prompt_too_long"] += 1
            continue
        ids.append(tokens)
        keys.append(key)
    stats.kept = len(ids)
    train, val = split_by_key(ids, keys, val_fraction)
    if not train:
        raise PreferenceDataError(f"{path}: no training prompt fits {max_prompt_len} tokens ({stats.summary()}); "
                                  f"lower --max-new-tokens or use shorter prompts")
    return train, val, stats
