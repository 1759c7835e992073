"""Instruction fine-tuning: `SFTObjective` for the one training loop, and `run_sft`, which wraps a run
with what a person wants to see: response loss before and after, and the model's answers to held-out
instructions before and after (`responses.jsonl`), beside the reference answers.

The model is the base checkpoint's GPT, unchanged in shape; the loss is the model's own cross-entropy
over response tokens only (targets of -1 elsewhere; see `train.tune.instruct_data`). Checkpoints are of
kind "sft": a plain GPT state dict plus the prompt template and what the data was, so every later
command (`evaluate --instructions`, `sample --instruction`, `chat`, alignment) formats prompts alike.
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

from model.gpt import GPT, GPTConfig
from formats.manifest import sha256_file, write_text_atomic
from train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    model_from_checkpoint,
    resolve_checkpoint,
)
from train.config import TrainConfig
from train.distributed import DistContext, all_reduce_sum
from train.errors import CheckpointKindError, RunDirError, SeqLenError, TrainError
from train.evaluate import EvalResult, autocast_context, check_tokenizer, load_tokenizer, sample_tokens, tokenizer_hash
from train.tune.instruct_data import (
    Example,
    InstructBatchLoader,
    InstructDataError,
    TokenizedExamples,
    eval_batches,
    read_instructions,
    split_examples,
    tokenize_examples,
)
from train.loop import train
from train.setup import TrainResult
from train.metrics import perplexity
from train.objective import LoopInfo, Objective
from train.tune.templates import PromptTemplate, encode_pieces, template_from_checkpoint
from train.errors import TrainConfigError
from train.tune.instruct_data import BATCHING_MODES, TOO_LONG_POLICIES
from train.distributed import resolve_device

log = logging.getLogger(__name__)

#: Kinds of checkpoint that hold a plain GPT taught to answer instructions (alignment keeps the shape).
TUNED_KINDS = ("sft", "dpo", "ppo")
#: Kinds of checkpoint that hold a plain GPT a person can prompt.
LM_KINDS = ("pretrain", *TUNED_KINDS)
RESPONSES_NAME = "responses.jsonl"
BEFORE_NAME = "sft-before.json"
SUMMARY_NAME = "sft-summary.json"


@dataclass(frozen=True)
class SFTConfig:
    base_checkpoint: str
    """Checkpoint file or run folder (its newest checkpoint) to fine-tune: a pretrain or sft checkpoint."""
    instructions: str
    """Alpaca JSON/JSONL or chat JSONL file of examples."""
    tokenizer_path: str
    """tokenizer.json the base model was trained with."""
    template: str | None = None
    """Prompt template: alpaca or chat; None = the base checkpoint's (alpaca for a pretrained model)."""
    train_on_prompt: bool = False
    """Also train on prompt tokens (the book's main chapter 7); default: response tokens only."""
    val_share: float = 0.1
    """Share of examples (chosen by a hash of each) held out for validation."""
    batching: str = "pack"
    """pack (several examples per row, little padding) or bucket (one per row, similar lengths together)."""
    too_long: str = "skip"
    """Examples longer than the row: skip them, or truncate their end (both counted)."""
    eval_batch_size: int = 8
    """Validation examples per forward pass."""
    num_responses: int = 5
    """Held-out instructions answered before and after fine-tuning in responses.jsonl (0 = none)."""
    max_new_tokens: int = 128
    """Tokens per answer in responses.jsonl and in training samples."""
    temperature: float = 0.7
    """Temperature of the sampled answers (the greedy ones use 0)."""
    top_k: int | None = 40
    """Top-k of the sampled answers."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_share < 1.0:
            raise TrainConfigError("--val-share", f"must be between 0 and 1, got {self.val_share}")
        if self.batching not in BATCHING_MODES:
            raise TrainConfigError("--batching", f"must be one of {BATCHING_MODES}, got {self.batching!r}")
        if self.too_long not in TOO_LONG_POLICIES:
            raise TrainConfigError("--too-long", f"must be one of {TOO_LONG_POLICIES}, got {self.too_long!r}")
        if self.num_responses < 0 or self.max_new_tokens < 1 or self.eval_batch_size < 1:
            raise TrainConfigError("--responses/--max-new-tokens/--eval-batch", "must be >= 0, >= 1 and >= 1")


def load_lm_checkpoint(checkpoint: str | Path, kinds: tuple[str, ...] = LM_KINDS,
                       need: str = "a pretrained or instruction-tuned model") -> tuple[dict[str, Any], Path]:
    """Read a checkpoint and check its kind."""
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    kind = payload.get("kind", "pretrain")
    if kind not in kinds:
        hints = {"classify": "it is a classifier: use `crawlgpt classify`",
                 "reward": "it is a reward model, which scores answers but does not write them",
                 "pretrain": "it is a base model: fine-tune it first with `crawlgpt sft` (or `make sft`)"}
        raise CheckpointKindError(f"{path} is a {kind!r} checkpoint, but this needs {need}; "
                        f"{hints.get(kind, 'pass a checkpoint of kind ' + ' or '.join(kinds))}")
    return payload, path


def eot_id_of(payload: dict[str, Any], tokenizer) -> int:
    eot = payload.get("data", {}).get("eot_id")
    if eot is None:
        eot = tokenizer.token_to_id("<|endoftext|>")
    if eot is None:
        raise TrainError("neither the checkpoint nor the tokenizer names an end-of-text token; use the tokenizer "
                         "made by `crawlgpt tokenizer`")
    return int(eot)


class SFTObjective(Objective):
    """Next-token loss on the response tokens of instruction examples, starting from a base checkpoint."""

    kind = "sft"

    def __init__(self, config: SFTConfig):
        self.config = config
        self.prepared_seq_len: int | None = None

    # ---- data -----------------------------------------------------------------------------------

    def prepare(self, seq_len: int | None = None) -> None:
        """Read the base checkpoint, tokenizer and examples (also usable without the loop, for the
        before/after figures). seq_len None = the base model's context."""
        cfg = self.config
        self.base_payload, self.base_path = load_lm_checkpoint(cfg.base_checkpoint)
        self.base_config = GPTConfig.from_dict(self.base_payload["model_config"])
        self.tokenizer = load_tokenizer(cfg.tokenizer_path)
        check_tokenizer(cfg.tokenizer_path, self.tokenizer, self.base_payload)
        self.eot_id = eot_id_of(self.base_payload, self.tokenizer)
        self.template = PromptTemplate(cfg.template) if cfg.template else template_from_checkpoint(self.base_payload)
        self.template.check_tokenizer(self.tokenizer, f"tokenizer {cfg.tokenizer_path}")
        context = self.base_config.max_seq_len
        seq_len = seq_len or context
        if seq_len > context:
            raise SeqLenError(f"--seq-len {seq_len} is longer than the base model's context of {context} tokens; "
                              f"use --seq-len {context} or less")
        examples, self.read_stats = read_instructions(cfg.instructions)
        train_ex, val_ex = split_examples(examples, cfg.val_share)
        if not val_ex:
            raise InstructDataError(f"{cfg.instructions}: no example fell into the validation share "
                                    f"{cfg.val_share} ({len(examples)} examples); raise --val-share or add examples")
        self.train_data = tokenize_examples(train_ex, self.tokenizer, self.template, self.eot_id, seq_len,
                                            cfg.too_long, cfg.train_on_prompt)
        self.val_data = tokenize_examples(val_ex, self.tokenizer, self.template, self.eot_id, seq_len,
                                          cfg.too_long, train_on_prompt=False)  # validation: responses only
        self.data_sha256 = sha256_file(cfg.instructions)
        self.prepared_seq_len = seq_len
        self._log_data()

    def _log_data(self) -> None:
        s, tr, va = self.read_stats, self.train_data, self.val_data
        skipped = tr.skipped_too_long + va.skipped_too_long
        truncated = tr.truncated + va.truncated
        if skipped or truncated:
            log.warning("%d examples longer than %d tokens %s", skipped + truncated, self.prepared_seq_len + 1,
                        f"skipped ({skipped})" if skipped else f"truncated ({truncated})")
        if s.skipped:
            log.warning("examples skipped while reading: %s", ", ".join(f"{k} {v}" for k, v in s.skipped.items()))
        tokens = sum(len(t) for t in tr.tokens)
        trained = sum(int(m.sum()) for m in tr.trained)
        log.info("instructions: %d records (%d alpaca, %d chat) -> %d train, %d validation examples; %s train "
                 "tokens, %.0f%% of them trained on; template %s", s.records, s.alpaca, s.chat, len(tr), len(va),
                 f"{tokens:,}", 100 * trained / max(tokens, 1), self.template.name)

    def counts(self) -> dict[str, Any]:
        s = self.read_stats
        return {"records": s.records, "alpaca": s.alpaca, "chat": s.chat, "skipped": dict(s.skipped),
                "train_examples": len(self.train_data), "val_examples": len(self.val_data),
                "too_long_skipped": self.train_data.skipped_too_long + self.val_data.skipped_too_long,
                "too_long_truncated": self.train_data.truncated + self.val_data.truncated}

    def setup(self, info: LoopInfo) -> None:
        super().setup(info)
        if self.prepared_seq_len is None or (info.seq_len and info.seq_len != self.prepared_seq_len):
            self.prepare(info.seq_len)

    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def data_info(self) -> dict[str, Any]:
        return {"vocab_size": self.tokenizer.get_vocab_size(), "eot_id": self.eot_id,
                "tokenizer_hash": tokenizer_hash(self.config.tokenizer_path),
                "instructions": str(self.config.instructions), "instructions_sha256": self.data_sha256,
                "train_on_prompt": self.config.train_on_prompt, **self.counts()}

    def model_config(self, preset_config: GPTConfig) -> GPTConfig:
        return self.base_config  # the base model's shape, whatever the preset says

    def seq_len(self, config: GPTConfig) -> int:
        return self.prepared_seq_len

    def init_weights(self, model: nn.Module) -> None:
        load_model_state(model, self.base_payload["model"])

    def check_resume(self, payload: dict[str, Any], path) -> None:
        saved = payload.get("data", {})
        if saved.get("instructions_sha256") != self.data_sha256:
            raise InstructDataError(f"checkpoint {path} was fine-tuned on other instruction data "
                                    f"({saved.get('instructions')}); resume with the same file or start a new --run")
        if template_from_checkpoint(payload) != self.template:
            raise InstructDataError(f"checkpoint {path} was fine-tuned with template "
                                    f"{template_from_checkpoint(payload).name!r}, this run uses "
                                    f"{self.template.name!r}; resume with --template "
                                    f"{template_from_checkpoint(payload).name} or start a new --run")

    def make_loader(self, model: nn.Module, seq_len: int) -> InstructBatchLoader:
        info = self.info
        return InstructBatchLoader(self.train_data, seq_len, info.micro_batch_size, info.seed, self.eot_id,
                                   self.config.batching, rank=info.ctx.rank, world_size=info.ctx.world_size)

    # ---- the step -------------------------------------------------------------------------------

    def loss(self, model, batch):
        inputs, targets, _ = batch
        inputs = inputs.to(self.info.device, non_blocking=True)
        targets = targets.to(self.info.device, non_blocking=True)
        _, loss = model(inputs, targets)
        return loss, {}

    def batch_tokens(self, batch) -> int:
        return batch[2]  # real tokens, not padding: tokens/s shows what padding costs

    # ---- evaluation -----------------------------------------------------------------------------

    def evaluate(self, model) -> dict[str, float]:
        ev = response_loss(model, self.val_data, self.eot_id, self.info.device, self.config.eval_batch_size,
                           bf16=self.info.bf16, ctx=self.info.ctx)
        return {"val_loss": ev.loss, "val_ppl": ev.perplexity, "val_tokens": ev.tokens}

    def sample(self, model, step: int) -> str | None:
        ex = self.val_data.examples[0]
        return generate_answer(model, self.tokenizer, self.template, ex.prompt_pieces(self.template), self.eot_id,
                               self.info.device, self.config.max_new_tokens, temperature=0.0,
                               bf16=self.info.bf16, stop_early=not self.sharded)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"template": self.template.to_dict(), "base_checkpoint": str(self.base_path)}


# ------------------------------------------------------------------------------------------------
# Response loss and answers


@torch.no_grad()
def response_loss(model: nn.Module, data: TokenizedExamples, eot_id: int, device: torch.device,
                  batch_size: int = 8, bf16: bool = False, ctx: DistContext | None = None) -> EvalResult:
    """Mean cross-entropy over the trained (response) tokens of the examples, each scored on its own."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of token losses, tokens)
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    for inputs, targets in eval_batches(data, batch_size, eot_id, rank, world):
        inputs, targets = inputs.to(device), targets.to(device)
        count = int((targets != -1).sum())
        with autocast_context(device, bf16):
            _, loss = model(inputs, targets)  # mean over the scored tokens (every rank runs each forward)
        if count:
            totals[0] += loss.double() * count
            totals[1] += count
    if ctx is not None:
        all_reduce_sum(totals, ctx)
    model.train(was_training)
    tokens = int(totals[1].item())
    loss = float(totals[0].item() / max(tokens, 1))
    return EvalResult(loss=loss, perplexity=perplexity(loss), tokens=tokens)


def generate_answer(model: nn.Module, tokenizer, template: PromptTemplate, pieces: list[tuple[str, bool, bool]],
                    eot_id: int, device: torch.device, max_new_tokens: int, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = 0, bf16: bool = False,
                    stop_early: bool = True) -> str:
    """The model's answer to a prompt given as template pieces (`Example.prompt_pieces`,
    `PromptTemplate.instruction_prompt_pieces`): end-of-text, the prompt, then text up to end-of-text."""
    ids = [eot_id, *encode_pieces(tokenizer, pieces, template)[0]]
    context = model.config.max_seq_len if hasattr(model, "config") else len(ids) + max_new_tokens
    if len(ids) >= context:
        return f"(prompt of {len(ids)} tokens does not fit the {context}-token context)"
    new = sample_tokens(model, ids, min(max_new_tokens, context - len(ids)), device, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed, eot_id=eot_id if stop_early else None, bf16=bf16)
    if eot_id in new:
        new = new[:new.index(eot_id)]
    return tokenizer.decode(new)


def answer_examples(model: GPT, tokenizer, template: PromptTemplate, examples: list[Example], eot_id: int,
                    device: torch.device, cfg: SFTConfig) -> list[dict[str, str]]:
    """Greedy and sampled answers to each example."""
    out = []
    for i, ex in enumerate(examples):
        pieces = ex.prompt_pieces(template)
        greedy = generate_answer(model, tokenizer, template, pieces, eot_id, device, cfg.max_new_tokens,
                                 temperature=0.0, bf16=device.type == "cuda")
        sampled = generate_answer(model, tokenizer, template, pieces, eot_id, device, cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_k=cfg.top_k, seed=i,
                                  bf16=device.type == "cuda")
        out.append({"greedy": greedy, "sampled": sampled})
    return out


# ------------------------------------------------------------------------------------------------
# A whole fine-tuning run


@dataclass
class SFTResult:
    train: TrainResult
    """What the loop returned (run folder, losses, checkpoint, throughput)."""
    before: dict[str, Any]
    """Validation response loss and perplexity of the base model."""
    after: dict[str, Any] | None
    """The same for the fine-tuned model (None when the run was interrupted)."""
    responses_path: Path | None
    counts: dict[str, Any]


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _evaluate_and_answer(model: GPT, objective: SFTObjective, device: torch.device) -> tuple[dict, list[dict]]:
    cfg = objective.config
    ev = response_loss(model, objective.val_data, objective.eot_id, device, cfg.eval_batch_size,
                       bf16=device.type == "cuda")
    held_out = objective.val_data.examples[:cfg.num_responses]
    answers = answer_examples(model, objective.tokenizer, objective.template, held_out, objective.eot_id, device, cfg)
    return {"val_response_loss": ev.loss, "val_response_ppl": ev.perplexity, "val_response_tokens": ev.tokens}, answers


def steps_for_epochs(objective: SFTObjective, train_config: TrainConfig, epochs: float) -> int:
    """Optimizer steps that read the training examples about `epochs` times."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    seq_len = objective.prepared_seq_len
    micro = train_config.data.micro_batch_size
    loader = InstructBatchLoader(objective.train_data, seq_len, micro, train_config.data.seed, objective.eot_id,
                                 objective.config.batching, world_size=world)
    rows_per_step = max(1, train_config.global_batch_tokens // (micro * seq_len * world)) * micro * world
    return max(1, round(epochs * len(loader.plan(0)) / rows_per_step))


def run_sft(train_config: TrainConfig, sft_config: SFTConfig, device: torch.device | None = None,
            epochs: float | None = None, objective: SFTObjective | None = None) -> SFTResult:
    """Fine-tune: figures and answers of the base model (once per run folder), the loop, then figures and
    answers of the fine-tuned model; writes responses.jsonl and sft-summary.json in the run folder.
    With epochs, the number of steps is computed from the data (train_config.max_steps is replaced).
    objective: an SFTObjective already prepared for sft_config (saves reading the data twice)."""
    run_dir = Path(train_config.run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is not None and not train_config.resume:  # fail before the minutes of "before" answers
        raise RunDirError(f"{run_dir} already holds checkpoints (newest {latest.name}); pass --resume to "
                          f"continue that run, or choose a new --out-run name")
    device = device or resolve_device(train_config.device, int(os.environ.get("LOCAL_RANK", "0")))
    if objective is None or objective.prepared_seq_len is None:
        objective = SFTObjective(sft_config)
        objective.prepare(train_config.data.seq_len)
    if epochs is not None:
        train_config = train_config.replace(max_steps=steps_for_epochs(objective, train_config, epochs))
        log.info("%g epochs of %d examples: %d steps", epochs, len(objective.train_data), train_config.max_steps)
    before_path = run_dir / BEFORE_NAME
    before: dict[str, Any] = {}
    if _is_main():
        if before_path.is_file():
            before = json.loads(before_path.read_text())
        else:
            base = model_from_checkpoint(objective.base_payload).to(device)
            figures, answers = _evaluate_and_answer(base, objective, device)
            before = {**figures, "answers": answers}
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(before_path, before)
            del base
        log.info("before fine-tuning: validation response loss %.4f (perplexity %.2f)",
                 before["val_response_loss"], before["val_response_ppl"])
    result = train(train_config, objective=objective)
    after = None
    responses = None
    if _is_main() and not result.interrupted and result.checkpoint is not None:
        tuned = model_from_checkpoint(load_checkpoint(result.checkpoint)).to(device)
        figures, answers = _evaluate_and_answer(tuned, objective, device)
        after = {**figures}
        responses = run_dir / RESPONSES_NAME
        held_out = objective.val_data.examples[:sft_config.num_responses]
        lines = []
        for ex, b, a in zip(held_out, before.get("answers", []), answers):
            prompt = {"messages": ex.prompt_messages()} if ex.messages is not None else \
                {"instruction": ex.instruction, "input": ex.input}
            lines.append(json.dumps({"source": ex.source, **prompt, "reference": ex.reference,
                                     "before_greedy": b["greedy"], "before_sampled": b["sampled"],
                                     "after_greedy": a["greedy"], "after_sampled": a["sampled"]},
                                    ensure_ascii=False))
        _write_text(responses, "".join(line + "\n" for line in lines))
        summary = {"before": {k: v for k, v in before.items() if k != "answers"}, "after": after,
                   "counts": objective.counts(), "template": objective.template.to_dict(),
                   "checkpoint": str(result.checkpoint), "steps": result.final_step,
                   "tokens_per_s": result.tokens_per_s, "config": asdict(sft_config)}
        _write_json(run_dir / SUMMARY_NAME, summary)
        log.info("after fine-tuning: validation response loss %.4f (perplexity %.2f); answers in %s",
                 after["val_response_loss"], after["val_response_ppl"], responses)
    return SFTResult(train=result, before={k: v for k, v in before.items() if k != "answers"}, after=after,
                     responses_path=responses, counts=objective.counts())


def _write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------
# `evaluate --instructions`


@dataclass(frozen=True)
class InstructionEval:
    result: EvalResult
    """Response-token loss, perplexity and tokens scored."""
    kind: str
    """The checkpoint's kind."""
    template: str
    """The template used (the checkpoint's; alpaca for a base model)."""
    examples: int
    """Examples scored."""
    skipped: int
    """Examples not scored (empty response, longer than the context)."""


def evaluate_instructions(checkpoint: str | Path, instructions: str | Path, tokenizer_path: str | Path,
                          template: str | None = None, batch_size: int = 8,
                          device: torch.device = torch.device("cpu")) -> InstructionEval:
    """Response-token loss of any pretrain or sft checkpoint on every example of an instruction file."""
    payload, path = load_lm_checkpoint(checkpoint)
    tokenizer = load_tokenizer(tokenizer_path)
    check_tokenizer(tokenizer_path, tokenizer, payload)
    tmpl = PromptTemplate(template) if template else template_from_checkpoint(payload)
    tmpl.check_tokenizer(tokenizer, f"tokenizer {tokenizer_path}")
    eot = eot_id_of(payload, tokenizer)
    model = model_from_checkpoint(payload).to(device).eval()
    examples, stats = read_instructions(instructions)
    data = tokenize_examples(examples, tokenizer, tmpl, eot, model.config.max_seq_len, "skip")
    if len(data) == 0:
        raise InstructDataError(f"every example of {instructions} is longer than the model's context")
    ev = response_loss(model, data, eot, device, batch_size, bf16=device.type == "cuda")
    return InstructionEval(result=ev, kind=payload.get("kind", "pretrain"), template=tmpl.name, examples=len(data),
                           skipped=sum(stats.skipped.values()) + data.skipped_too_long)

