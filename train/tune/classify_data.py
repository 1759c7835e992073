"""Labelled text for classification fine-tuning: TSV, CSV or JSONL with a text and a label column,
a stratified hash-stable train/validation/test split, and a stateful loader of padded batches.

A row without text or label is a counted skip; a file without the named columns, a malformed JSON
line, or a label column with a single class is an error that names the file, the line and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from train.errors import TrainError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class ClassifyDataError(TrainError):
    """Labelled data that cannot be used: the message names the file, the line and the fix."""


@dataclass
class LabelledData:
    texts: list[str]
    labels: list[str]
    sources: list[str]
    """`file:line` of each row."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows not used, by reason."""

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))


def file_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise ClassifyDataError(f"cannot tell the format of {path} from its extension; pass --format tsv, csv or jsonl")


def _rows(path: Path, fmt: str, text_column: str, label_column: str) -> Iterator[tuple[int, Any, Any]]:
    """(line number, text, label) per row; a value is None when the row lacks it."""
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ClassifyDataError(f"{path}:{lineno}: is not valid JSON ({err.msg}); each line must be one "
                                            f"JSON object with {text_column!r} and {label_column!r}") from err
                if not isinstance(record, dict):
                    raise ClassifyDataError(f"{path}:{lineno}: is a JSON {type(record).__name__}, not an object "
                                            f"with {text_column!r} and {label_column!r}")
                yield lineno, record.get(text_column), record.get(label_column)
        return
    with open(path, encoding="utf-8", newline="") as f:
        # Tab-separated files are read without quoting: SMS text holds stray quote characters.
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ClassifyDataError(f"{path} is empty; it needs a header row naming the columns")
        for name, option in ((text_column, "--text-column"), (label_column, "--label-column")):
            if name not in header:
                raise ClassifyDataError(f"{path}: the header has no column {name!r} (columns: "
                                        f"{', '.join(header)}); pass {option} with one of them")
        ti, li = header.index(text_column), header.index(label_column)
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            yield lineno, row[ti] if ti < len(row) else None, row[li] if li < len(row) else None


def read_labelled(path: str | Path, text_column: str = "text", label_column: str = "label",
                  fmt: str = "auto") -> LabelledData:
    path = Path(path)
    if not path.is_file():
        raise ClassifyDataError(f"labelled file {path} does not exist; pass a TSV, CSV or JSONL file "
                                f"(e.g. ../shared/data/classify/sms-spam.tsv)")
    data = LabelledData([], [], [])
    try:
        for lineno, text, label in _rows(path, file_format(path, fmt), text_column, label_column):
            reason = None
            if label is None or (isinstance(label, str) and not label.strip()):
                reason = "missing_label"
            elif not isinstance(text, str) or not text.strip():
                reason = "missing_text"
            if reason:
                data.skipped[reason] = data.skipped.get(reason, 0) + 1
                if data.skipped[reason] <= 3:
                    log.warning("skipped %s:%d: %s", path, lineno, reason.replace("_", " "))
                continue
            data.texts.append(text)
            data.labels.append(str(label).strip())
            data.sources.append(f"{path}:{lineno}")
    except UnicodeDecodeError as err:
        raise ClassifyDataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8") from err
    classes = data.class_counts()
    if len(classes) < 2:
        raise ClassifyDataError(
            f"the label column {label_column!r} of {path} has {len(classes)} class(es) "
            f"({', '.join(classes) or 'none'}) in {len(data.labels)} rows; a classifier needs at least two: "
            f"check --label-column")
    return data


def split_of(text: str, val_share: float, test_share: float) -> str:
    """The split of a text, fixed by its hash: the same text always lands in the same split (so
    duplicates never straddle train and test), and it keeps its split when the file grows. The same
    thresholds apply to every class, so each split holds each class in the file's proportions."""
    u = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16) / float(16 ** 15)
    if u < test_share:
        return "test"
    if u < test_share + val_share:
        return "val"
    return "train"


def split_indices(data: LabelledData, val_share: float, test_share: float) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, text in enumerate(data.texts):
        out[split_of(text, val_share, test_share)].append(i)
    for name, idx in out.items():
        if not idx:
            raise ClassifyDataError(f"the {name} split is empty ({len(data.texts)} rows); use more data or "
                                    f"larger --val-share/--test-share")
    return out


# ------------------------------------------------------------------------------------------------
# Tokens and batches


@dataclass
class EncodedTexts:
    tokens: list[np.ndarray]
    """End-of-text, then the text's tokens (cut to the row length)."""
    labels: np.ndarray
    """Class index per text."""
    truncated: int = 0


def encode_texts(texts: list[str], labels: list[int], tokenizer, eot_id: int, max_tokens: int) -> EncodedTexts:
    """Each text as end-of-text + its tokens (as pretraining documents start), cut to max_tokens."""
    previous = getattr(tokenizer, "encode_special_tokens", None)
    if previous is not None:
        tokenizer.encode_special_tokens = True  # text never yields control tokens
    try:
        encoded = tokenizer.encode_batch([t for t in texts], add_special_tokens=False)
    finally:
        if previous is not None:
            tokenizer.encode_special_tokens = previous
    out = EncodedTexts([], np.asarray(labels, dtype=np.int64))
    for enc in encoded:
        ids = [eot_id, *enc.ids]
        if len(ids) > max_tokens:
            ids = ids[:max_tokens]
            out.truncated += 1
        out.tokens.append(np.asarray(ids, dtype=np.int64))
    return out


def collate_texts(tokens: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """inputs (B, W) padded at the end to a multiple of 8, the index of each row's last real token (B,),
    and the number of real tokens."""
    width = -(-max(len(t) for t in tokens) // 8) * 8
    inputs = np.full((len(tokens), width), pad_id, dtype=np.int64)
    for b, t in enumerate(tokens):
        inputs[b, :len(t)] = t
    last = np.asarray([len(t) - 1 for t in tokens], dtype=np.int64)
    return torch.from_numpy(inputs), torch.from_numpy(last), int(sum(len(t) for t in tokens))


class TextBatchLoader:
    """Stateful loader of (inputs, last_index, labels, real_tokens) micro-batches: epochs in an order
    fixed by (seed, epoch); micro-step k of rank r reads examples [k*micro*world + r*micro, +micro)
    of the concatenated epoch orders. The state is the number of micro-steps done."""

    def __init__(self, data: EncodedTexts, micro_batch_size: int, seed: int, pad_id: int, rank: int = 0,
                 world_size: int = 1):
        self.data, self.micro, self.seed, self.pad_id, self.rank, self.world = \
            data, micro_batch_size, seed, pad_id, rank, world_size
        self.micro_steps = 0
        self._orders: dict[int, np.ndarray] = {}

    def _example(self, index: int) -> int:
        n = len(self.data.tokens)
        epoch, pos = divmod(index, n)
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
        return int(self._orders[epoch][pos])

    def next_batch(self):
        first = self.micro_steps * self.micro * self.world + self.rank * self.micro
        idx = [self._example(first + j) for j in range(self.micro)]
        self.micro_steps += 1
        inputs, last, real = collate_texts([self.data.tokens[i] for i in idx], self.pad_id)
        return inputs, last, torch.from_numpy(self.data.labels[idx]), real

    def state_dict(self) -> dict[str, Any]:
        return {"micro_steps": self.micro_steps, "examples_per_micro_step": self.micro * self.world,
                "num_examples": len(self.data.tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("examples_per_micro_step", self.micro * self.world), ("num_examples", len(self.data.tokens))):
            if state.get(key) != mine:
                raise ClassifyDataError(f"the checkpoint's loader was saved with {key}={state.get(key)}, this run has "
                                        f"{mine}; resume with the same data and batch sizes, or start a new --run")
        self.micro_steps = int(state["micro_steps"])

    def close(self) -> None:
        pass


def eval_text_batches(data: EncodedTexts, batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1):
    """Batches of (inputs, last, labels, positions) in length order (little padding); rank r takes every
    world_size-th batch, and every rank gets the same number (a rank short of one gets a copy of the
    first with no positions, to score nothing), so FSDP's collective forwards stay in step."""
    order = sorted(range(len(data.tokens)), key=lambda i: len(data.tokens[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    per_rank = -(-len(batches) // world_size)
    for k in range(per_rank):
        j = k * world_size + rank
        b = batches[j] if j < len(batches) else batches[0]
        inputs, last, _ = collate_texts([data.tokens[i] for i in b], pad_id)
        yield inputs, last, torch.from_numpy(data.labels[b]), (b if j < len(batches) else [])
