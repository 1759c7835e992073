"""Batched log-likelihood scoring of benchmark items, for crawlgpt checkpoints and Hugging Face folders.

Scoring follows lm-evaluation-harness (`HFLM.loglikelihood`), so figures are comparable:

- A request (context, continuation) is encoded the harness's way: trailing spaces of the context move
  to the front of the continuation; the whole string is encoded and the continuation is the tokens
  after the context's own tokens (so a merge across the boundary is scored as the harness scores it).
- End-of-text is put before every context: our documents start after end-of-text in training, so this
  is the state a model sees at the start of a text. The harness does the same with `add_bos_token=True`
  (our export names end-of-text as bos); without it, it prepends end-of-text only to empty contexts.
- Sequences longer than the context window lose tokens on the left (a continuation longer than the
  whole window, which only models with very short contexts meet, is scored on its last window tokens).
- The log-likelihood of a continuation is the sum of its tokens' log-probabilities; it is "greedy" when
  every token is the model's most likely one.

Metrics per task: `acc` (the choice with the highest summed log-likelihood is right), `acc_norm` (the
same after dividing by the choice's length in characters, the harness's normalisation), and for
LAMBADA `acc` (the whole last word is the greedy continuation) and `perplexity` (exp of minus the mean
log-likelihood of the last word). Standard errors are the binomial ones the harness prints.

Batching: the requests of a task are sorted by length, longest first, and scored `batch_size` rows at a
time, right-padded (padding after a sequence cannot change a causal model's earlier positions). The
output head runs only at the continuation positions, not at every position.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from formats.benchmark_tasks import TASKS, Item, Request, chance_accuracy, load_task

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Models: one small adapter each for our GPT and for a transformers causal LM


class ScoringModel:
    """What scoring needs from a model: encode text, the final hidden states, the output head."""

    name: str
    max_seq_len: int
    prefix_id: int
    device: torch.device

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) final-normed hidden states."""
        raise NotImplementedError

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, C) hidden states -> (N, V) logits."""
        raise NotImplementedError


class CrawlGPTScoring(ScoringModel):
    """Our GPT with the `tokenizers` tokenizer it was trained with. `forward_model` is the module to call
    when the model is wrapped (FSDP2 gathers its weights only inside the wrapper's forward): then the
    full logits come from its forward, at the cost of the head at every position."""

    def __init__(self, model, tokenizer, eot_id: int, name: str = "crawlgpt", forward_model=None):
        self.model, self.tokenizer, self.prefix_id, self.name = model, tokenizer, eot_id, name
        self.forward_model = forward_model
        self.max_seq_len = model.config.max_seq_len
        self.device = next(model.parameters()).device
        self.tokenizer.encode_special_tokens = True  # "<|endoftext|>" in benchmark text stays text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        if self.forward_model is not None:
            logits, _ = self.forward_model(idx, targets=torch.full_like(idx, -1))  # (B, T, V)
            return logits
        return self.model.hidden_states(idx)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.forward_model is not None else self.model.head(hidden)


class HFScoring(ScoringModel):
    """A transformers causal LM folder (e.g. our export): base model for hidden states, its output embeddings."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        config = model.config
        self.max_seq_len = int(getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError(f"{name}: the tokenizer has neither a bos nor an eos token to start a text with")
        self.prefix_id = int(prefix)
        self.device = next(model.parameters()).device
        self._trunk = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        self._head = model.get_output_embeddings()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        return self._trunk(input_ids=idx).last_hidden_state

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head(hidden)


def is_hf_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def load_scoring_model(path: str | Path, device: torch.device = torch.device("cpu"),
                       tokenizer: str | Path | None = None) -> ScoringModel:
    """A Hugging Face model folder (has config.json), else a crawlgpt checkpoint file or run folder.

    Checkpoints are read through `train.checkpoint` (via `train.evaluate.load_for_inference`), so base,
    SFT and aligned checkpoints all load here the same way as everywhere else.
    """
    if is_hf_folder(path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        return HFScoring(model, AutoTokenizer.from_pretrained(path), name=str(path))
    from train.evaluate import check_tokenizer, load_for_inference, load_tokenizer
    from train.export.hf import find_tokenizer

    model, payload, ckpt = load_for_inference(path, device)
    tok_path = find_tokenizer(payload, tokenizer)
    tok = load_tokenizer(tok_path)
    check_tokenizer(tok_path, tok, payload)
    eot = payload.get("data", {}).get("eot_id")
    if eot is None:
        eot = tok.token_to_id("<|endoftext|>")
    return CrawlGPTScoring(model, tok, int(eot), name=str(ckpt))


# --------------------------------------------------------------------------------------------------
# Scoring


def encode_request(model: ScoringModel, request: Request) -> tuple[list[int], list[int]]:
    """(context ids with the prefix token first, continuation ids), split as the harness splits them."""
    context, continuation = request.context, request.continuation
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = model.encode(context + continuation)
    context_ids = model.encode(context) if context else []
    return [model.prefix_id] + context_ids, whole[len(context_ids):]


@torch.no_grad()
def score_requests(model: ScoringModel, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 32,
                   on_progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(summed log-probability, greedy?) of each continuation given its context, in the order given."""
    window = model.max_seq_len
    prepared = []  # (input ids, continuation ids scored)
    cut = 0
    for context_ids, continuation_ids in pairs:
        if not continuation_ids:
            raise ValueError("a continuation encodes to no tokens; nothing to score")
        tokens = (context_ids + continuation_ids)[-(window + 1):]
        if len(continuation_ids) > window:  # only its last `window` tokens can be predicted in one window
            continuation_ids = continuation_ids[-window:]
            cut += 1
        prepared.append((tokens[:-1], continuation_ids))
    if cut:
        log.warning("%d continuations are longer than the model's context of %d tokens: only their last %d "
                    "tokens are scored", cut, window, window)
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(prepared)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = len(prepared[chunk[0]][0])
        idx = torch.zeros((len(chunk), width), dtype=torch.long)  # (B, T), right-padded with id 0
        rows, positions, targets, owners = [], [], [], []
        for row, i in enumerate(chunk):
            inputs, continuation = prepared[i]
            idx[row, :len(inputs)] = torch.tensor(inputs)
            first = len(inputs) - len(continuation)  # the logit at position p predicts token p + 1
            rows += [row] * len(continuation)
            positions += range(first, len(inputs))
            targets += continuation
            owners += [i] * len(continuation)
        idx = idx.to(model.device)
        hidden = model.hidden(idx)  # (B, T, C)
        picked = hidden[torch.tensor(rows, device=idx.device), torch.tensor(positions, device=idx.device)]  # (N, C)
        logits = model.head(picked).float()  # (N, V)
        target = torch.tensor(targets, device=idx.device)  # (N,)
        token_logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]  # (N,)
        hit = logits.argmax(dim=-1) == target  # (N,)
        sums: dict[int, list] = {}
        for owner, lp, h in zip(owners, token_logp.tolist(), hit.tolist()):
            entry = sums.setdefault(owner, [0.0, True])
            entry[0] += lp
            entry[1] = entry[1] and h
        for i, (lp, greedy) in sums.items():
            results[i] = (lp, greedy)
        if on_progress is not None:
            on_progress(len(chunk))
    return results  # type: ignore[return-value]


@dataclass
class TaskResult:
    task: str
    """Task name."""
    items: int
    """Items scored."""
    metrics: dict[str, float]
    """acc, acc_stderr, acc_norm, acc_norm_stderr; LAMBADA: acc, acc_stderr, perplexity."""
    chance: float
    """Accuracy of uniform guessing."""
    seconds: float
    """Wall time of scoring (encoding included)."""
    tokens: int = 0
    """Tokens fed to the model (context and continuation, all requests)."""
    per_item: list[dict[str, Any]] = field(default_factory=list)
    """Per item: id, the log-likelihoods and what was predicted (for inspection)."""

    def to_json(self, with_items: bool = False) -> dict[str, Any]:
        out = {"task": self.task, "items": self.items, "chance": self.chance, "seconds": round(self.seconds, 3),
               "tokens": self.tokens, **self.metrics}
        if with_items:
            out["per_item"] = self.per_item
        return out


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def evaluate_items(model: ScoringModel, task: str, items: list[Item], batch_size: int = 32,
                   on_progress: Callable[[int], None] | None = None) -> TaskResult:
    """Score every request of the items and compute the task's metrics."""
    kind = TASKS[task].kind if task in TASKS else "multiple_choice"
    start = time.perf_counter()
    flat = [(i, r) for i, item in enumerate(items) for r in item.requests]
    pairs = [encode_request(model, r) for _, r in flat]
    scores = score_requests(model, pairs, batch_size, on_progress)
    per_item: list[dict[str, Any]] = [{"id": item.id, "loglik": [], "greedy": []} for item in items]
    for (i, _), (lp, greedy) in zip(flat, scores):
        per_item[i]["loglik"].append(lp)
        per_item[i]["greedy"].append(greedy)
    n = len(items)
    if kind == "last_word":
        correct = [entry["greedy"][0] for entry in per_item]
        acc = sum(correct) / n
        mean_ll = sum(entry["loglik"][0] for entry in per_item) / n
        metrics = {"acc": acc, "acc_stderr": _stderr(acc, n), "perplexity": math.exp(-mean_ll)}
    else:
        hits = hits_norm = 0
        for item, entry in zip(items, per_item):
            ll = entry["loglik"]
            pred = max(range(len(ll)), key=lambda j: ll[j])
            pred_norm = max(range(len(ll)), key=lambda j: ll[j] / max(item.choice_chars[j], 1))
            entry.update(label=item.label, pred=pred, pred_norm=pred_norm)
            hits += pred == item.label
            hits_norm += pred_norm == item.label
        metrics = {"acc": hits / n, "acc_stderr": _stderr(hits / n, n),
                   "acc_norm": hits_norm / n, "acc_norm_stderr": _stderr(hits_norm / n, n)}
    tokens = sum(len(c) + len(t) for c, t in pairs)
    return TaskResult(task, n, metrics, chance_accuracy(items, kind), time.perf_counter() - start, tokens, per_item)


@dataclass(frozen=True)
class BenchmarkConfig:
    tasks: tuple[str, ...] = ("piqa", "lambada")
    """Tasks to run (see formats.benchmark_tasks.TASKS)."""
    eval_dir: str = "../shared/data/eval"
    """Folder holding the tasks' files under their release names."""
    files: tuple[tuple[str, str], ...] = ()
    """(task, path) pairs that override where a task's file is."""
    limit: int | None = None
    """Score only the first N items of each task (a quick look; not comparable with published figures)."""
    batch_size: int = 32
    """Sequences per forward pass."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(TASKS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")


def load_items(config: BenchmarkConfig) -> dict[str, list[Item]]:
    return {t: load_task(t, config.eval_dir, dict(config.files), config.limit) for t in config.tasks}


def run_benchmarks(model: ScoringModel, config: BenchmarkConfig, items: dict[str, list[Item]] | None = None,
                   on_start: Callable[[str, int], None] | None = None,
                   on_progress: Callable[[int], None] | None = None) -> list[TaskResult]:
    """Every configured task; on_start(task, requests) before each, on_progress(requests done) per batch."""
    items = items if items is not None else load_items(config)
    results = []
    for task in config.tasks:
        if on_start is not None:
            on_start(task, sum(len(i.requests) for i in items[task]))
        result = evaluate_items(model, task, items[task], config.batch_size, on_progress)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if not k.endswith("stderr"))
        log.info("%s: %s (%d items, %.1fs)", task, shown, result.items, result.seconds)
        results.append(result)
    return results


def results_table_rows(results: list[TaskResult]) -> list[tuple[str, ...]]:
    """(task, items, acc, acc_norm, perplexity, chance, seconds) rows for the text table."""
    rows = []
    for r in results:
        m = r.metrics

        def pct(key: str) -> str:
            return f"{100 * m[key]:.2f} ± {100 * m[key + '_stderr']:.2f}" if key in m else "-"

        rows.append((r.task, f"{r.items:,}", pct("acc"), pct("acc_norm"),
                     f"{m['perplexity']:.2f}" if "perplexity" in m else "-",
                     f"{100 * r.chance:.1f}" if r.chance else "~0", f"{r.seconds:.1f}"))
    return rows


RESULTS_HEADER = ("task", "items", "acc %", "acc_norm %", "perplexity", "chance %", "seconds")


class TrainingBenchmark:
    """The quick benchmark `pretrain --benchmark TASK` runs at every evaluation step.

    Items are read and the tokenizer loaded once, at the start of training; each call scores the model
    as it is and returns flat metrics (`piqa_acc`, `piqa_acc_norm`, `lambada_perplexity`, ...) for
    metrics.jsonl. The tokenizer must be the one the shards were made with (checked by hash).
    """

    def __init__(self, tasks: Sequence[str], eval_dir: str, limit: int | None, tokenizer_path: str | Path,
                 tokenizer_hash: str, eot_id: int, batch_size: int = 32):
        from train.errors import TrainConfigError, VocabMismatchError
        from train.evaluate import load_tokenizer
        from train.evaluate import tokenizer_hash as file_hash

        try:
            self.config = BenchmarkConfig(tasks=tuple(tasks), eval_dir=eval_dir, limit=limit, batch_size=batch_size)
            self.items = load_items(self.config)
        except (ValueError, OSError) as err:
            raise TrainConfigError("--benchmark", str(err)) from err
        if file_hash(tokenizer_path) != tokenizer_hash:
            raise VocabMismatchError(f"tokenizer {tokenizer_path} is not the one the shards were made with; "
                                     f"pass the shards' tokenizer with --tokenizer")
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.eot_id = eot_id

    def __call__(self, model, forward_model=None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        if forward_model is not None:
            forward_model.eval()
        # Compiled blocks would recompile for every padded batch width; scoring is short, so run it eagerly.
        stance = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") \
            else contextlib.nullcontext()
        try:
            scorer = CrawlGPTScoring(model, self.tokenizer, self.eot_id, forward_model=forward_model)
            with stance:
                results = run_benchmarks(scorer, self.config, self.items)
        finally:
            model.train(was_training)
            if forward_model is not None:
                forward_model.train(was_training)
        return {f"{r.task}_{k}": v for r in results for k, v in r.metrics.items() if not k.endswith("stderr")}
