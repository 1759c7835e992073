"""Instruction data: read Alpaca JSON/JSONL and chat JSONL, split by hash, tokenize with the response
mask, and batch (packed or length-bucketed) with a loader whose state goes into every checkpoint.

Formats (detected per file: a JSON array, or one JSON object per line):
- Alpaca: `{"instruction": ..., "input": ... (optional), "output": ...}`
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`, several turns;
  only assistant turns are responses.

An example's tokens are end-of-text, the prompt, the response and end-of-text again: the leading
end-of-text is the document start the base model saw in pretraining, the trailing one the end of the
response the model learns to emit. Targets are the tokens shifted by one; every target that is not a
response token (prompt, padding) is -1, which the model's loss ignores, unless `train_on_prompt`.

Batching packs several examples into each row of seq_len tokens (best fit, longest first), as
pretraining packs documents: the previous example's final end-of-text is the next one's start, and
attention is not reset between them, as it is not between pretraining documents. Padding then wastes
little; or,
with `bucket`, puts one example per row and groups examples of similar length into a micro-batch,
padded to its longest. Either way the plan of an epoch depends only on (seed, epoch), and a global
row counter is the loader's whole state: a resumed run reads exactly the rows an uninterrupted one
would have read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from train.errors import TrainError
from train.tune.templates import ROLES, PromptTemplate, encode_pieces

log = logging.getLogger(__name__)

BATCHING_MODES = ("pack", "bucket")
TOO_LONG_POLICIES = ("skip", "truncate")
#: Bucketing sorts this many micro-batches' worth of examples by length before cutting micro-batches.
BUCKET_SPAN = 16


class InstructDataError(TrainError):
    """Instruction data that cannot be read: the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Example:
    """One instruction example, as read from the file."""

    source: str
    """Where it is: `file:line` (JSONL) or `file item N` (JSON array), for messages."""
    instruction: str = ""
    input: str = ""
    output: str = ""
    messages: tuple[dict, ...] | None = None
    """Chat examples: the turns (then instruction/input/output are empty)."""
    key: str = ""
    """sha256 of the example's canonical JSON: its identity for the train/validation split."""

    def pieces(self, template: PromptTemplate) -> list[tuple[str, bool, bool]]:
        if self.messages is not None:
            return template.pieces(list(self.messages))
        return template.instruction_pieces(self.instruction, self.input, self.output)

    def prompt_messages(self) -> list[dict]:
        """The conversation up to the last assistant turn (what a model is asked to continue)."""
        if self.messages is None:
            user = self.instruction if not self.input else f"{self.instruction}\n\n{self.input}"
            return [{"role": "user", "content": user}]
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return list(self.messages[:last])

    def prompt_pieces(self, template: PromptTemplate) -> list[tuple[str, bool, bool]]:
        """The prompt of the (last) answer, formatted exactly as in training."""
        if self.messages is None:
            return template.instruction_prompt_pieces(self.instruction, self.input)
        return template.pieces(self.prompt_messages()) + template.generation_pieces()

    @property
    def reference(self) -> str:
        """The reference answer (the last assistant turn of a conversation)."""
        if self.messages is None:
            return self.output
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]


@dataclass
class ReadStats:
    records: int = 0
    """Records in the file."""
    alpaca: int = 0
    chat: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Records not used, by reason (e.g. empty_response)."""

    def skip(self, reason: str, source: str, detail: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if self.skipped[reason] <= 3:
            log.warning("skipped %s: %s", source, detail)


def _fail(source: str, problem: str, fix: str) -> InstructDataError:
    return InstructDataError(f"{source}: {problem}; {fix}")


FORMAT_HINT = ('each example must be an object with "instruction" and "output" (and optionally "input"), '
               'or with "messages": a list of {"role": "system"|"user"|"assistant", "content": "..."}')


def _parse_record(record: Any, source: str, stats: ReadStats) -> Example | None:
    if not isinstance(record, dict):
        raise _fail(source, f"is a JSON {type(record).__name__}, not an object", FORMAT_HINT)
    key = hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise _fail(source, '"messages" is not a non-empty list', FORMAT_HINT)
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
                raise _fail(source, f'message {i} is not an object with "role" and a string "content"', FORMAT_HINT)
            if m["role"] not in ROLES:
                raise _fail(source, f"message {i} has the unknown role {m['role']!r}",
                            f"roles are {', '.join(ROLES)}")
            turns.append({"role": m["role"], "content": m["content"]})
        answers = [m for m in turns if m["role"] == "assistant"]
        if not answers:
            raise _fail(source, "the conversation has no assistant turn", "add the assistant's answer to train on")
        if any(not m["content"].strip() for m in answers):
            stats.skip("empty_response", source, "an assistant turn is empty")
            return None
        stats.chat += 1
        return Example(source=source, messages=tuple(turns), key=key)
    for name in ("instruction", "output"):
        if name not in record:
            raise _fail(source, f'has no "{name}" field', FORMAT_HINT)
        if not isinstance(record[name], str):
            raise _fail(source, f'"{name}" is a {type(record[name]).__name__}, not a string', FORMAT_HINT)
    inp = record.get("input") or ""
    if not isinstance(inp, str):
        raise _fail(source, f'"input" is a {type(inp).__name__}, not a string', FORMAT_HINT)
    if not record["output"].strip():
        stats.skip("empty_response", source, 'the "output" is empty')
        return None
    stats.alpaca += 1
    return Example(source=source, instruction=record["instruction"], input=inp, output=record["output"], key=key)


def read_instructions(path: str | Path) -> tuple[list[Example], ReadStats]:
    """All usable examples of an Alpaca JSON/JSONL or chat JSONL file (a bad record is an error that
    names its line; an empty response is a counted skip)."""
    path = Path(path)
    if not path.is_file():
        raise InstructDataError(f"instruction file {path} does not exist; pass an Alpaca JSON/JSONL or chat "
                                f"JSONL file (e.g. ../shared/data/instruct/instruction-data.json)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InstructDataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8 JSON or JSONL") from err
    stats = ReadStats()
    examples: list[Example] = []
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise _fail(f"{path}:{err.lineno}", f"is not valid JSON ({err.msg}, column {err.colno})",
                        "fix the JSON (a JSON array of objects, or one object per line)") from err
        for i, record in enumerate(records):
            stats.records += 1
            ex = _parse_record(record, f"{path} item {i}", stats)
            if ex is not None:
                examples.append(ex)
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            stats.records += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise _fail(f"{path}:{lineno}", f"is not valid JSON ({err.msg}, column {err.colno})",
                            "each line of a JSONL file must be one JSON object") from err
            ex = _parse_record(record, f"{path}:{lineno}", stats)
            if ex is not None:
                examples.append(ex)
    if not examples:
        raise InstructDataError(f"{path} holds no usable examples ({stats.records} records); {FORMAT_HINT}")
    return examples, stats


def hash_share(key: str) -> float:
    """A number in [0, 1) fixed by the example's content: its place in the train/validation split."""
    return int(key[:15], 16) / float(16 ** 15)


def split_examples(examples: list[Example], val_share: float) -> tuple[list[Example], list[Example]]:
    """(train, validation) by a hash of each example: an example keeps its split when the file grows."""
    val = [e for e in examples if hash_share(e.key) < val_share]
    train = [e for e in examples if hash_share(e.key) >= val_share]
    return train, val


# ------------------------------------------------------------------------------------------------
# Tokenizing


@dataclass
class TokenizedExamples:
    """Examples as token arrays: tokens[i] = end-of-text, prompt, response, end-of-text; targets[i]
    marks the tokens that are trained on (prediction targets), as a bool array of the same length."""

    tokens: list[np.ndarray]
    trained: list[np.ndarray]
    examples: list[Example]
    truncated: int = 0
    skipped_too_long: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def digest(self) -> str:
        h = hashlib.sha256()
        for t, m in zip(self.tokens, self.trained):
            h.update(t.tobytes())
            h.update(m.tobytes())
        return h.hexdigest()


def tokenize_examples(examples: list[Example], tokenizer, template: PromptTemplate, eot_id: int,
                      seq_len: int, too_long: str = "skip", train_on_prompt: bool = False) -> TokenizedExamples:
    """Tokenize; an example longer than seq_len + 1 tokens is skipped or (truncate) cut at the end,
    as long as a trained target remains. Both are counted (and warned about by the caller)."""
    if too_long not in TOO_LONG_POLICIES:
        raise InstructDataError(f"--too-long must be one of {TOO_LONG_POLICIES}, got {too_long!r}")
    out = TokenizedExamples([], [], [])
    for ex in examples:
        ids, mask = encode_pieces(tokenizer, ex.pieces(template), template)
        tokens = np.asarray([eot_id, *ids], dtype=np.int64)
        trained = np.asarray([False, *mask], dtype=bool)
        if train_on_prompt:
            trained[1:] = True
        if len(tokens) > seq_len + 1:
            if too_long == "skip" or not trained[1:seq_len + 1].any():
                out.skipped_too_long += 1
                if out.skipped_too_long <= 3:
                    log.warning("skipped %s: %d tokens, more than the %d a row holds", ex.source, len(tokens),
                                seq_len + 1)
                continue
            tokens, trained = tokens[:seq_len + 1], trained[:seq_len + 1]
            out.truncated += 1
        out.tokens.append(tokens)
        out.trained.append(trained)
        out.examples.append(ex)
    return out


# ------------------------------------------------------------------------------------------------
# Batching


def pack_rows(lengths: np.ndarray, order: np.ndarray, seq_len: int) -> list[list[int]]:
    """Best-fit-decreasing packing of examples into rows of seq_len inputs: examples longest first
    (ties in `order`, which is random per epoch), each into the row with the least room that still
    holds it. An example costs its length - 1 inputs (its leading end-of-text is the previous
    example's last token, or the row's first token), so a row's costs sum to at most seq_len."""
    import bisect

    rows: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in sorted(order.tolist(), key=lambda j: -int(lengths[j])):  # stable: ties keep the random order
        cost = int(lengths[i]) - 1
        at = bisect.bisect_left(rooms, (cost, -1))
        if at < len(rooms):
            room, r = rooms.pop(at)
            rows[r].append(int(i))
            bisect.insort(rooms, (room - cost, r))
        else:
            rows.append([int(i)])
            bisect.insort(rooms, (seq_len - cost, len(rows) - 1))
    return rows


def bucket_rows(lengths: np.ndarray, order: np.ndarray, rows_per_batch: int,
                rng: np.random.Generator) -> list[list[int]]:
    """One example per row; rows of a micro-batch (rows_per_batch consecutive rows) have similar lengths."""
    span = rows_per_batch * BUCKET_SPAN
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span].tolist(), key=lambda i: -int(lengths[i]))
        batches += [chunk[b:b + rows_per_batch] for b in range(0, len(chunk), rows_per_batch)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return [[i] for batch in batches for i in batch]


class InstructBatchLoader:
    """Stateful loader of (inputs, targets, real_tokens) micro-batches over tokenized examples.

    Rows are planned per epoch from (seed, epoch); micro-step k of rank r reads rows
    [k * micro * world + r * micro, ... + micro) of the concatenated epoch plans. The state is the
    number of micro-steps done."""

    def __init__(self, data: TokenizedExamples, seq_len: int, micro_batch_size: int, seed: int, eot_id: int,
                 batching: str = "pack", rank: int = 0, world_size: int = 1):
        if batching not in BATCHING_MODES:
            raise InstructDataError(f"--batching must be one of {BATCHING_MODES}, got {batching!r}")
        if len(data) == 0:
            raise InstructDataError("no training examples are left after the split and the length limit; "
                                    "use more data, a smaller --val-share, or --too-long truncate")
        self.data, self.seq_len, self.micro, self.seed = data, seq_len, micro_batch_size, seed
        self.eot_id, self.batching, self.rank, self.world = eot_id, batching, rank, world_size
        self.lengths = np.asarray([len(t) for t in data.tokens])
        self.micro_steps = 0
        self._epochs: list[tuple[int, list[list[int]]]] = []  # (first global row, rows) of planned epochs
        self._digest = data.digest()

    def plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        if self.batching == "bucket":
            return bucket_rows(self.lengths, order, self.micro * self.world, rng)
        rows = pack_rows(self.lengths, order, self.seq_len)
        return [rows[i] for i in rng.permutation(len(rows))]

    def _row(self, index: int) -> list[int]:
        while not self._epochs or index >= self._epochs[-1][0] + len(self._epochs[-1][1]):
            start = self._epochs[-1][0] + len(self._epochs[-1][1]) if self._epochs else 0
            self._epochs.append((start, self.plan(len(self._epochs))))
        for start, rows in reversed(self._epochs):
            if index >= start:
                return rows[index - start]
        raise IndexError(index)

    def row_tokens(self, row: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The row's tokens and trained flags: the first example whole, the others without their leading
        end-of-text."""
        toks = [self.data.tokens[row[0]]] + [self.data.tokens[i][1:] for i in row[1:]]
        flags = [self.data.trained[row[0]]] + [self.data.trained[i][1:] for i in row[1:]]
        return np.concatenate(toks), np.concatenate(flags)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        first = self.micro_steps * self.micro * self.world + self.rank * self.micro
        rows = [self.row_tokens(self._row(first + j)) for j in range(self.micro)]
        self.micro_steps += 1
        # The row counter only moves forward: forget the rows of epochs behind it (keep their offsets).
        for i in range(len(self._epochs) - 1):
            start, planned = self._epochs[i]
            if start + len(planned) <= first:
                self._epochs[i] = (start, [])
        return collate(rows, self.eot_id, self.seq_len if self.batching == "pack" else None)

    def state_dict(self) -> dict[str, Any]:
        return {"micro_steps": self.micro_steps, "rows_per_micro_step": self.micro * self.world,
                "seq_len": self.seq_len, "batching": self.batching, "data_digest": self._digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seq_len", self.seq_len), ("batching", self.batching), ("data_digest", self._digest),
                          ("rows_per_micro_step", self.micro * self.world)):
            if state.get(key) != mine:
                raise InstructDataError(
                    f"the checkpoint's loader was saved with {key}={state.get(key)!r}, this run has {mine!r}; "
                    f"resume with the same data, template, --seq-len, --batching and batch sizes, or start a new --run")
        self.micro_steps = int(state["micro_steps"])

    def close(self) -> None:
        pass


def collate(rows: list[tuple[np.ndarray, np.ndarray]], eot_id: int,
            width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(tokens, trained) rows -> inputs (B, W) padded with end-of-text, targets (B, W) with -1 for
    untrained and padded positions, and the number of real (non-padding) input tokens. W = width, or
    the longest row's inputs rounded up to a multiple of 8."""
    longest = max(len(t) - 1 for t, _ in rows)
    if width is None:
        width = -(-longest // 8) * 8
    inputs = np.full((len(rows), width), eot_id, dtype=np.int64)
    targets = np.full((len(rows), width), -1, dtype=np.int64)
    real = 0
    for b, (tokens, trained) in enumerate(rows):
        n = len(tokens) - 1
        inputs[b, :n] = tokens[:-1]
        targets[b, :n] = np.where(trained[1:], tokens[1:], -1)
        real += n
    return torch.from_numpy(inputs), torch.from_numpy(targets), real


def eval_batches(data: TokenizedExamples, batch_size: int, eot_id: int, rank: int = 0,
                 world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validation batches: one example per row (no packing: each answer is scored given only its own
    prompt, as at inference), examples sorted by length so padding is small. Rank r takes every
    world_size-th batch, and every rank gets the same number of batches (a rank short of one scores
    a copy of the first with every target ignored), so FSDP's collective forwards stay in step."""
    order = sorted(range(len(data)), key=lambda i: len(data.tokens[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    per_rank = -(-len(batches) // world_size)
    for k in range(per_rank):
        j = k * world_size + rank
        b = batches[j] if j < len(batches) else batches[0]
        inputs, targets, _ = collate([(data.tokens[i], data.trained[i]) for i in b], eot_id)
        if j >= len(batches):
            targets.fill_(-1)
        yield inputs, targets
