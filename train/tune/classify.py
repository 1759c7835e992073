"""Classification fine-tuning (the book's chapter 6): a pretrained GPT whose output head is replaced by a
linear layer over the classes, reading the hidden state of each text's last real token.

`ClassifyObjective` runs on the one training loop; `run_classify` wraps a run with the test-split
report (accuracy, per-class precision/recall/F1, confusion matrix table and PNG) and the supervised
fastText baseline on the same split. Checkpoints are of kind "classify": the GPT's weights under
`gpt.`, the head under `head.`, plus the class names and the columns read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.gpt import GPT, GPTConfig
from formats.manifest import write_text_atomic
from train.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint
from train.tune.classify_data import (
    EncodedTexts,
    TextBatchLoader,
    encode_texts,
    eval_text_batches,
    read_labelled,
    split_indices,
)
from train.tune.classify_report import ClassReport, class_report, fasttext_baseline, format_report, plot_confusion
from train.config import TrainConfig
from train.distributed import DistContext, all_reduce_sum
from train.errors import CheckpointKindError, TrainConfigError, TrainError
from train.evaluate import autocast_context, check_tokenizer, load_tokenizer, tokenizer_hash
from train.loop import train
from train.setup import TrainResult
from train.objective import LoopInfo, Objective
from train.tune.sft import eot_id_of, load_lm_checkpoint
from train.distributed import resolve_device

log = logging.getLogger(__name__)

REPORT_NAME = "classify-report.json"
CONFUSION_PNG = "confusion.png"


@dataclass(frozen=True)
class ClassifyConfig:
    base_checkpoint: str
    """Checkpoint file or run folder (its newest checkpoint): a pretrain or sft checkpoint."""
    data_path: str
    """TSV, CSV or JSONL file with a text and a label column."""
    tokenizer_path: str
    """tokenizer.json the base model was trained with."""
    text_column: str = "text"
    """Name of the text column (or JSON field)."""
    label_column: str = "label"
    """Name of the label column (or JSON field)."""
    file_format: str = "auto"
    """tsv, csv, jsonl, or auto (from the file extension)."""
    val_share: float = 0.1
    """Share of texts (by hash) for validation."""
    test_share: float = 0.2
    """Share of texts (by hash) for the final test report."""
    train_blocks: int | None = None
    """Train only the last N decoder blocks (plus the final norm and the head); None = all weights."""
    eval_batch_size: int = 16
    """Texts per forward pass when evaluating."""

    def __post_init__(self) -> None:
        if not (0 < self.val_share < 1 and 0 < self.test_share < 1 and self.val_share + self.test_share < 1):
            raise TrainConfigError("--val-share/--test-share", "each must be in (0, 1) and together below 1")
        if self.train_blocks is not None and self.train_blocks < 0:
            raise TrainConfigError("--train-blocks", f"must be >= 0, got {self.train_blocks}")
        if self.file_format not in ("auto", "tsv", "csv", "jsonl"):
            raise TrainConfigError("--format", f"must be auto, tsv, csv or jsonl, got {self.file_format!r}")


class GPTClassifier(nn.Module):
    """A GPT body and a linear head over the hidden state of each sequence's last real token."""

    def __init__(self, config: GPTConfig, num_classes: int):
        super().__init__()
        self.gpt = GPT(config)
        self.head = nn.Linear(config.d_model, num_classes)

    def forward(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids, last (B,) index of each row's last real token -> logits (B, classes)."""
        hidden = self.gpt.hidden_states(idx)  # (B, T, C)
        pooled = hidden[torch.arange(idx.size(0), device=idx.device), last]  # (B, C)
        return self.head(pooled)  # (B, classes)

    def set_trainable(self, train_blocks: int | None) -> None:
        """All weights (None), or only the last train_blocks blocks, the final norm and the head. The
        language-model head is never used; it is frozen unless tied to the (trained) embedding."""
        gpt = self.gpt
        if train_blocks is not None:
            for p in gpt.parameters():
                p.requires_grad = False
            for block in list(gpt.blocks)[len(gpt.blocks) - train_blocks:] if train_blocks else []:
                for p in block.parameters():
                    p.requires_grad = True
            for p in gpt.norm.parameters():
                p.requires_grad = True
        elif gpt.head.weight is not gpt.tok_emb.weight:
            gpt.head.weight.requires_grad = False


class ClassifyObjective(Objective):
    """Cross-entropy over classes of the hidden state of each text's last real token."""

    kind = "classify"

    def __init__(self, config: ClassifyConfig):
        self.config = config
        self.prepared_seq_len: int | None = None

    def prepare(self, seq_len: int | None = None) -> None:
        cfg = self.config
        self.base_payload, self.base_path = load_lm_checkpoint(cfg.base_checkpoint)
        self.base_config = GPTConfig.from_dict(self.base_payload["model_config"])
        if cfg.train_blocks is not None and cfg.train_blocks > self.base_config.n_layer:
            raise TrainConfigError("--train-blocks", f"the base model has {self.base_config.n_layer} blocks, "
                                                     f"got {cfg.train_blocks}")
        self.tokenizer = load_tokenizer(cfg.tokenizer_path)
        check_tokenizer(cfg.tokenizer_path, self.tokenizer, self.base_payload)
        self.eot_id = eot_id_of(self.base_payload, self.tokenizer)
        context = self.base_config.max_seq_len
        seq_len = seq_len or context
        if seq_len > context:
            raise TrainConfigError("--seq-len", f"{seq_len} is longer than the base model's context of {context}")
        data = read_labelled(cfg.data_path, cfg.text_column, cfg.label_column, cfg.file_format)
        self.classes = sorted(data.class_counts())
        index = {c: i for i, c in enumerate(self.classes)}
        self.splits = split_indices(data, cfg.val_share, cfg.test_share)
        self.texts = {s: [data.texts[i] for i in idx] for s, idx in self.splits.items()}
        self.labels = {s: [index[data.labels[i]] for i in idx] for s, idx in self.splits.items()}
        self.encoded: dict[str, EncodedTexts] = {
            s: encode_texts(self.texts[s], self.labels[s], self.tokenizer, self.eot_id, seq_len) for s in self.splits}
        self.skipped = dict(data.skipped)
        self.prepared_seq_len = seq_len
        self._log_data()

    def class_table(self) -> dict[str, dict[str, int]]:
        """Texts per class in each split."""
        return {s: {c: self.labels[s].count(i) for i, c in enumerate(self.classes)} for s in self.splits}

    def _log_data(self) -> None:
        table = self.class_table()
        total = {c: sum(table[s][c] for s in table) for c in self.classes}
        n = sum(total.values())
        log.info("classes: %s", ", ".join(f"{c} {k:,} ({100 * k / n:.1f}%)" for c, k in total.items()))
        if max(total.values()) > 3 * min(total.values()):
            log.warning("imbalanced classes: the largest has %.1fx the texts of the smallest; read the per-class "
                        "F1, not only the accuracy (always answering %r scores %.1f%%)",
                        max(total.values()) / min(total.values()), max(total, key=total.get),
                        100 * max(total.values()) / n)
        log.info("split: %s", "; ".join(f"{s} {len(self.labels[s]):,}" for s in self.splits))
        truncated = sum(e.truncated for e in self.encoded.values())
        if truncated:
            log.warning("%d texts longer than %d tokens were truncated", truncated, self.prepared_seq_len)
        if self.skipped:
            log.warning("rows skipped: %s", ", ".join(f"{k} {v}" for k, v in self.skipped.items()))

    # ---- Objective ------------------------------------------------------------------------------

    def setup(self, info: LoopInfo) -> None:
        super().setup(info)
        if self.prepared_seq_len is None or (info.seq_len and info.seq_len != self.prepared_seq_len):
            self.prepare(info.seq_len)

    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def data_info(self) -> dict[str, Any]:
        return {"vocab_size": self.tokenizer.get_vocab_size(), "eot_id": self.eot_id,
                "tokenizer_hash": tokenizer_hash(self.config.tokenizer_path), "path": str(self.config.data_path),
                "classes": self.classes, "split_counts": self.class_table(), "skipped": self.skipped}

    def model_config(self, preset_config: GPTConfig) -> GPTConfig:
        return self.base_config

    def seq_len(self, config: GPTConfig) -> int:
        return self.prepared_seq_len

    def build_model(self, config: GPTConfig) -> nn.Module:
        model = GPTClassifier(config, len(self.classes))
        model.set_trainable(self.config.train_blocks)
        return model

    def init_weights(self, model: nn.Module) -> None:
        load_model_state(model.gpt, self.base_payload["model"])
        nn.init.normal_(model.head.weight, std=0.02)
        nn.init.zeros_(model.head.bias)

    def check_resume(self, payload: dict[str, Any], path) -> None:
        if payload.get("classes") != self.classes:
            raise TrainError(f"checkpoint {path} was trained on classes {payload.get('classes')}, this data has "
                             f"{self.classes}; resume on the same data or start a new --run")

    def make_loader(self, model: nn.Module, seq_len: int) -> TextBatchLoader:
        info = self.info
        return TextBatchLoader(self.encoded["train"], info.micro_batch_size, info.seed, self.eot_id,
                               rank=info.ctx.rank, world_size=info.ctx.world_size)

    def loss(self, model, batch):
        inputs, last, labels, _ = batch
        device = self.info.device
        logits = model(inputs.to(device), last.to(device))  # (B, classes)
        labels = labels.to(device)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"accuracy": (logits.argmax(dim=-1) == labels).float().mean()}

    def batch_tokens(self, batch) -> int:
        return batch[3]

    def evaluate(self, model) -> dict[str, float]:
        loss, accuracy, n = evaluate_split(model, self.encoded["val"], self.eot_id, self.info.device,
                                           self.config.eval_batch_size, self.info.bf16, self.info.ctx)
        return {"val_loss": loss, "val_accuracy": accuracy, "val_texts": n}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"classes": self.classes, "base_checkpoint": str(self.base_path),
                "classify": {"text_column": self.config.text_column, "label_column": self.config.label_column,
                             "train_blocks": self.config.train_blocks, "seq_len": self.prepared_seq_len}}


@torch.no_grad()
def evaluate_split(model: nn.Module, data: EncodedTexts, pad_id: int, device: torch.device, batch_size: int = 16,
                   bf16: bool = False, ctx: DistContext | None = None) -> tuple[float, float, int]:
    """(mean loss, accuracy, texts) over a split (every rank calls it under torchrun)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # (loss sum, correct, texts)
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    for inputs, last, labels, positions in eval_text_batches(data, batch_size, pad_id, rank, world):
        labels = labels.to(device)
        with autocast_context(device, bf16):
            logits = model(inputs.to(device), last.to(device))  # every rank runs each forward (FSDP)
        if not positions:
            continue
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        totals[1] += (logits.argmax(dim=-1) == labels).sum()
        totals[2] += len(labels)
    if ctx is not None:
        all_reduce_sum(totals, ctx)
    model.train(was_training)
    n = max(int(totals[2].item()), 1)
    return float(totals[0].item() / n), float(totals[1].item() / n), int(totals[2].item())


@torch.no_grad()
def predict(model: GPTClassifier, data: EncodedTexts, pad_id: int, device: torch.device,
            batch_size: int = 16) -> torch.Tensor:
    """Class probabilities (N, classes) in the data's order."""
    model.eval()
    out = torch.zeros(len(data.tokens), model.head.out_features)
    for inputs, last, _, positions in eval_text_batches(data, batch_size, pad_id):
        with autocast_context(device, device.type == "cuda"):
            logits = model(inputs.to(device), last.to(device))
        out[positions] = logits.float().softmax(dim=-1).cpu()
    return out


# ------------------------------------------------------------------------------------------------
# Loading a classifier


def load_classifier(checkpoint: str | Path, device: torch.device) -> tuple[GPTClassifier, dict[str, Any], Path]:
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    kind = payload.get("kind", "pretrain")
    if kind != "classify":
        raise CheckpointKindError(f"{path} is a {kind!r} checkpoint, not a classifier; train one with "
                        f"`crawlgpt classify-train --checkpoint {path} --data FILE`")
    model = GPTClassifier(GPTConfig.from_dict(payload["model_config"]), len(payload["classes"]))
    load_model_state(model, payload["model"])
    return model.to(device).eval(), payload, path


def classify_texts(checkpoint: str | Path, texts: list[str], tokenizer_path: str | Path,
                   device: torch.device = torch.device("cpu"), batch_size: int = 16) -> list[tuple[str, float]]:
    """(label, probability) of each text."""
    model, payload, _ = load_classifier(checkpoint, device)
    tokenizer = load_tokenizer(tokenizer_path)
    check_tokenizer(tokenizer_path, tokenizer, payload)
    eot = eot_id_of(payload, tokenizer)
    seq_len = payload.get("classify", {}).get("seq_len") or model.gpt.config.max_seq_len
    data = encode_texts(texts, [0] * len(texts), tokenizer, eot, seq_len)
    probs = predict(model, data, eot, device, batch_size)
    best = probs.argmax(dim=-1)
    classes = payload["classes"]
    return [(classes[int(k)], float(probs[i, k])) for i, k in enumerate(best)]


# ------------------------------------------------------------------------------------------------
# A whole run with its report


@dataclass
class ClassifyResult:
    train: TrainResult
    report: ClassReport | None
    """Test split, fine-tuned model (None when the run was interrupted)."""
    baseline: ClassReport | None
    """Test split, fastText."""
    baseline_seconds: float | None
    class_table: dict[str, dict[str, int]]
    report_text: str = ""


def run_classify(train_config: TrainConfig, config: ClassifyConfig, device: torch.device | None = None,
                 epochs: float | None = None, baseline: bool = True) -> ClassifyResult:
    """Train the classifier, then report on the test split beside the fastText baseline
    (classify-report.json, classify-report.txt and confusion.png in the run folder)."""

    run_dir = Path(train_config.run_dir)
    device = device or resolve_device(train_config.device, int(os.environ.get("LOCAL_RANK", "0")))
    objective = ClassifyObjective(config)
    objective.prepare(train_config.data.seq_len)
    if epochs is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        micro = train_config.data.micro_batch_size
        per_step = max(1, train_config.global_batch_tokens // (micro * objective.prepared_seq_len * world)) \
            * micro * world
        steps = max(1, round(epochs * len(objective.encoded["train"].tokens) / per_step))
        train_config = train_config.replace(max_steps=steps)
        log.info("%g epochs of %d texts: %d steps", epochs, len(objective.encoded["train"].tokens), steps)
    result = train(train_config, objective=objective)
    out = ClassifyResult(train=result, report=None, baseline=None, baseline_seconds=None,
                         class_table=objective.class_table())
    if int(os.environ.get("RANK", "0")) != 0 or result.interrupted or result.checkpoint is None:
        return out
    model, _, _ = load_classifier(result.checkpoint, device)
    probs = predict(model, objective.encoded["test"], objective.eot_id, device, config.eval_batch_size)
    out.report = class_report(objective.labels["test"], probs.argmax(dim=-1).tolist(), objective.classes)
    reports = {"fine-tuned GPT": out.report}
    text = format_report(out.report, f"fine-tuned GPT, test split ({len(objective.labels['test']):,} texts)")
    if baseline:
        base = fasttext_baseline(objective.texts["train"], objective.labels["train"], objective.texts["test"],
                                 objective.labels["test"], objective.classes)
        if base is not None:
            out.baseline, out.baseline_seconds = base.report, base.seconds
            reports["fastText"] = base.report
            text += "\n\n" + format_report(base.report, f"fastText baseline, same split ({base.seconds:.1f}s)")
    plot_confusion(reports, run_dir / CONFUSION_PNG)
    out.report_text = text
    summary = {"test": out.report.to_dict(), "fasttext": out.baseline.to_dict() if out.baseline else None,
               "fasttext_seconds": out.baseline_seconds, "class_table": out.class_table,
               "checkpoint": str(result.checkpoint), "steps": result.final_step, "config": asdict(config)}
    write_text_atomic(run_dir / REPORT_NAME, json.dumps(summary, indent=2) + "\n")
    (run_dir / "classify-report.txt").write_text(text + "\n")
    return out
