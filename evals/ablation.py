"""The data ablation (`make ablation`): does the curated corpus train a better model than the raw crawl?

Two arms, identical in everything but the data: the same model, token budget, schedule and seeds,
trained on (a) token shards of the raw crawl (`crawlgpt shards --from raw`: every readable document,
no filter, no dedup) and (b) the curated corpus (`crawlgpt shards`), both made with the same tokenizer.
Every run trains through the one training loop (`train.train`), writing a checkpoint at each
evaluation step; afterwards each checkpoint is scored on held-out clean text that is in neither corpus
(loss and perplexity, the same tokens for every run), and the last one on the benchmarks.

A difference between the arms counts only when it is larger than the seeds' spread: the summary says
"separated" when the ranges (min to max over seeds) of the two arms do not overlap.

Outputs in DATA/ablation/: `results.json` (every run, every figure), `ablation.png` (held-out loss
against tokens, one line per run, mean per arm) and the table the command prints. Finished runs are
not trained again (their last checkpoint is reused), so a rerun with more seeds trains only the new ones.
"""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from train.data import eval_windows
from train.evaluate import TokenArray, evaluate_loss
from train.config import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
from train.checkpoint import latest_checkpoint, load_checkpoint
from evals.scoring import BenchmarkConfig, CrawlGPTScoring, run_benchmarks
from train import train
from train.checkpoint import list_checkpoint_steps, model_from_checkpoint
from train.data import open_split
from train.evaluate import load_tokenizer

from formats.figures import pyplot, save_figure
from formats.manifest import write_text_atomic

from formats.json_records import decode_utf8, parse_record

log = logging.getLogger(__name__)


class AblationError(ValueError):
    """The ablation cannot run (missing shards or held-out text, arms made with different tokenizers)."""


@dataclass(frozen=True)
class AblationConfig:
    data_dir: str = "data"
    """Data folder: shards of both arms and the tokenizer are read from it, results go to DATA/ablation."""
    arms: tuple[tuple[str, str], ...] = (("raw", "shards-raw"), ("curated", "shards"))
    """(name, shards folder under DATA) of each arm."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """One run per arm and seed (model initialisation and data order)."""
    preset: str = "tiny"
    """Model preset; see model/gpt.py."""
    model_overrides: tuple[tuple[str, Any], ...] = ()
    """Model fields replacing the preset's."""
    steps: int = 150
    """Optimizer steps of every run."""
    batch_tokens: int = 4096
    """Tokens per step: steps x batch_tokens is each run's token budget."""
    seq_len: int = 128
    """Tokens per window."""
    lr: float = 3e-3
    """Peak learning rate (cosine to lr/10, 5% warmup)."""
    eval_points: int = 3
    """Held-out evaluations per run (checkpoints written at evenly spaced steps, the last at the end)."""
    heldout: str = "../shared/data/reference/reference-dev.jsonl.zst"
    """JSONL(.zst) with a "text" field: clean text in neither corpus (for the dev crawl: Wikipedia and book
    documents that the crawl does not hold). Do not use text the quality classifier was trained on."""
    heldout_tokens: int = 16_384
    """Held-out tokens scored per evaluation."""
    tasks: tuple[str, ...] = ("piqa", "lambada")
    """Benchmarks scored on each run's last checkpoint."""
    benchmark_limit: int | None = 200
    """Items per benchmark (None = all)."""
    eval_dir: str = "../shared/data/eval"
    """Folder of the benchmark files."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    out: str = ""
    """Folder of the runs and results; "" = DATA/ablation. Use one folder per budget: a run folder is resumed."""

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise AblationError(f"--seeds must be distinct and at least one, got {self.seeds}")
        if self.steps < 1 or self.batch_tokens < self.seq_len or self.eval_points < 1:
            raise AblationError("--steps and --eval-points must be >= 1 and --batch-tokens >= --seq-len")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.data_dir) / "ablation"

    def eval_steps(self) -> list[int]:
        every = max(1, self.steps // self.eval_points)
        return sorted({min(self.steps, every * (i + 1)) for i in range(self.eval_points)} | {self.steps})


@dataclass
class RunResult:
    arm: str
    seed: int
    run_dir: str
    heldout: list[tuple[int, float]] = field(default_factory=list)
    """(tokens seen, held-out loss) at each evaluated checkpoint."""
    benchmarks: dict[str, dict[str, float]] = field(default_factory=dict)
    """task -> metrics of the last checkpoint."""
    train_seconds: float = 0.0
    """Wall time of training (0 when an earlier run's checkpoint was reused)."""

    @property
    def final_loss(self) -> float:
        return self.heldout[-1][1]


def read_heldout(path: str | Path, tokenizer, eot_id: int, max_tokens: int) -> np.ndarray:
    """Documents of a JSONL(.zst) file as one token stream: end-of-text, document, end-of-text, ... (as in
    the shards), cut to max_tokens + 1 tokens."""
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"held-out text {path} does not exist; pass --heldout FILE.jsonl[.zst]")
    raw = path.read_bytes()
    if path.suffix == ".zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    tokens: list[int] = []
    for number, line in enumerate(decode_utf8(raw, str(path), AblationError).splitlines(), 1):
        if not line.strip():
            continue
        record = parse_record(line, f"{path}:{number}", AblationError)
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise AblationError(f"{path}:{number}: expected a JSON object with a \"text\" string")
        tokens.append(eot_id)
        tokens += tokenizer.encode(text, add_special_tokens=False).ids
        if len(tokens) > max_tokens:
            break
    if len(tokens) < 2:
        raise AblationError(f"{path} holds no text to score")
    return np.asarray(tokens[:max_tokens + 1], dtype=np.int64)


def heldout_loss(model, tokens: np.ndarray, seq_len: int, batch_size: int = 16) -> float:

    stream = TokenArray(tokens)
    batch_size = max(1, min(batch_size, (len(tokens) - 1) // seq_len))
    return evaluate_loss(model, eval_windows(stream, seq_len, batch_size, 0, 1, None), torch.device("cpu")).loss


def _train_config(config: AblationConfig, shards_dir: Path, run_dir: Path, seed: int):

    steps = config.eval_steps()
    every = steps[0] if len(steps) > 1 else config.steps
    return TrainConfig(
        run_dir=str(run_dir), max_steps=config.steps, preset=config.preset,
        model_overrides=dict(config.model_overrides), global_batch_tokens=config.batch_tokens, device="cpu",
        precision="fp32", resume=True, seed=seed, handle_signals=False,
        data=DataConfig(shards_dir=str(shards_dir), seq_len=config.seq_len,
                        micro_batch_size=max(1, config.batch_tokens // config.seq_len), seed=seed, prefetch_batches=0),
        optim=OptimConfig(lr=config.lr, min_lr=config.lr / 10),
        eval=EvalConfig(every_steps=every, max_tokens=4 * config.seq_len * 8, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=every, keep_last=len(steps) + 1),
        log=LogConfig(every_steps=max(1, config.steps // 20), tensorboard=False, plot=False),
    )


def _check_same_run(run_dir: Path, train_config) -> None:
    """A run folder is reused only for the same training settings (else its curve would be another run's)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return
    saved = load_checkpoint(latest).get("train_config", {})
    wanted = train_config.to_dict()
    keys = ("max_steps", "preset", "model_overrides", "global_batch_tokens", "seed", "data", "optim")
    diffs = [k for k in keys if saved.get(k) != wanted[k] and not (k == "data" and _same_data(saved.get(k), wanted[k]))]
    if diffs:
        raise AblationError(f"{run_dir} holds a run made with other settings ({', '.join(diffs)} differ); give this "
                            f"budget its own folder with --out, or delete {run_dir}")


def _same_data(saved: dict | None, wanted: dict) -> bool:
    return saved is not None and all(saved.get(k) == wanted[k] for k in ("shards_dir", "seq_len", "seed"))


def run_ablation(config: AblationConfig, on_run: Callable[[str, int, int, int], None] | None = None) -> list[RunResult]:
    """Train and evaluate every (arm, seed); write results.json and ablation.png; return the runs."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    data = Path(config.data_dir)
    hashes = {}
    for arm, folder in config.arms:
        if not (data / folder / "manifest.json").is_file():
            make = "crawlgpt shards --from raw" if "raw" in folder else "make shards"
            raise AblationError(f"arm {arm!r}: {data / folder} has no finished token shards; run `{make}` first")
        hashes[arm] = open_split(data / folder, "train", verify_checksums=False).tokenizer_hash
    if len(set(hashes.values())) != 1:
        raise AblationError(f"the arms' shards were made with different tokenizers {hashes}; make both with "
                            f"DATA/tokenizer/tokenizer.json")
    tokenizer_path = data / config.arms[0][1] / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path)
    eot_id = open_split(data / config.arms[0][1], "train", verify_checksums=False).eot_id
    heldout = read_heldout(config.heldout, tokenizer, eot_id, config.heldout_tokens)
    bench_config = BenchmarkConfig(tasks=config.tasks, eval_dir=config.eval_dir, limit=config.benchmark_limit)

    results = []
    total = len(config.arms) * len(config.seeds)
    for arm, folder in config.arms:
        for seed in config.seeds:
            run_dir = config.out_dir / arm / f"seed-{seed}"
            if on_run is not None:
                on_run(arm, seed, len(results) + 1, total)
            result = RunResult(arm, seed, str(run_dir))
            train_config = _train_config(config, data / folder, run_dir, seed)
            _check_same_run(run_dir, train_config)
            if config.steps not in list_checkpoint_steps(run_dir):
                start = time.perf_counter()
                train(train_config)
                result.train_seconds = time.perf_counter() - start
            available = set(list_checkpoint_steps(run_dir))
            for step in config.eval_steps():
                if step not in available:
                    continue
                payload = load_checkpoint(run_dir / "checkpoints" / f"step-{step:08d}.pt")
                model = model_from_checkpoint(payload).eval()
                result.heldout.append((step * config.batch_tokens, heldout_loss(model, heldout, config.seq_len)))
            if config.tasks:
                scorer = CrawlGPTScoring(model, load_tokenizer(tokenizer_path), eot_id, name=f"{arm}/seed-{seed}")
                for task in run_benchmarks(scorer, bench_config):
                    result.benchmarks[task.task] = task.metrics
            log.info("%s seed %d: held-out loss %.4f %s", arm, seed, result.final_loss,
                     {t: round(m["acc"], 4) for t, m in result.benchmarks.items()})
            results.append(result)
    write_results(config, results)
    return results


# --------------------------------------------------------------------------------------------------
# Summary


def summarize(results: list[RunResult], arms: list[str]) -> dict[str, Any]:
    """Per arm: mean, sample std, min and max over seeds of each figure; whether the arms separate."""
    figures: dict[str, dict[str, list[float]]] = {arm: {} for arm in arms}
    for r in results:
        values = {"heldout_loss": r.final_loss}
        for tokens, loss in r.heldout[:-1]:  # the curve: is the difference there at smaller budgets too?
            values[f"heldout_loss@{tokens:,}"] = loss
        for task, metrics in r.benchmarks.items():
            for key in ("acc", "acc_norm", "perplexity"):
                if key in metrics:
                    values[f"{task}_{key}"] = metrics[key]
        for key, value in values.items():
            figures[r.arm].setdefault(key, []).append(value)
    summary: dict[str, Any] = {"arms": {}, "separated": {}}
    for arm, by_key in figures.items():
        summary["arms"][arm] = {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                                    "min": min(v), "max": max(v), "n": len(v)} for k, v in by_key.items()}
    if len(arms) == 2:
        a, b = (summary["arms"][arm] for arm in arms)
        for key in a.keys() & b.keys():
            # With one seed there is no spread to compare with: never call that a result.
            enough = min(a[key]["n"], b[key]["n"]) >= 2
            apart = enough and (a[key]["max"] < b[key]["min"] or b[key]["max"] < a[key]["min"])
            summary["separated"][key] = {"difference": a[key]["mean"] - b[key]["mean"], "ranges_apart": apart}
    return summary


def _order(key: str) -> tuple:
    if key.startswith("heldout_loss@"):
        return (0, int(key.split("@")[1].replace(",", "")))
    return (0, float("inf")) if key == "heldout_loss" else (1, key)


def table_rows(summary: dict[str, Any], arms: list[str]) -> list[tuple[str, ...]]:
    keys = sorted({k for arm in arms for k in summary["arms"][arm]}, key=_order)
    rows = []
    for key in keys:
        cells = [key]
        for arm in arms:
            s = summary["arms"][arm].get(key)
            scale = 100 if key.endswith("acc") or key.endswith("acc_norm") else 1
            cells.append("-" if s is None else f"{scale * s['mean']:.3f} ± {scale * s['std']:.3f} "
                                               f"[{scale * s['min']:.3f}, {scale * s['max']:.3f}]")
        sep = summary["separated"].get(key)
        cells.append("-" if sep is None else f"{sep['difference'] * (100 if 'acc' in key else 1):+.3f} "
                                             f"({'separated' if sep['ranges_apart'] else 'inside the spread'})")
        rows.append(tuple(cells))
    return rows


def write_results(config: AblationConfig, results: list[RunResult]) -> dict[str, Any]:
    arms = [a for a, _ in config.arms]
    summary = summarize(results, arms)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": {**asdict(config), "tokens_per_run": config.steps * config.batch_tokens},
              "summary": summary, "runs": [asdict(r) for r in results]}
    write_text_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    plot_ablation(results, arms, out / "ablation.png", config)
    return summary


def plot_ablation(results: list[RunResult], arms: list[str], png: Path, config: AblationConfig) -> Path | None:
    plt = pyplot("matplotlib is not installed: no ablation plot")
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = dict(zip(arms, ("tab:red", "tab:blue", "tab:green", "tab:orange")))
    for arm in arms:
        runs = [r for r in results if r.arm == arm and r.heldout]
        for r in runs:
            ax.plot(*zip(*r.heldout), color=colours[arm], alpha=0.35, linewidth=1)
        if runs:
            points = sorted({t for r in runs for t, _ in r.heldout})
            means = [statistics.fmean(l for r in runs for t, l in r.heldout if t == p) for p in points]
            ax.plot(points, means, color=colours[arm], marker="o", linewidth=2,
                    label=f"{arm} (mean of {len(runs)} seeds)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats per token)")
    model = config.preset + "".join(f" {k}={v}" for k, v in config.model_overrides)
    ax.set_title(f"data ablation: {model}, {config.steps} steps x {config.batch_tokens:,} tokens, "
                 f"held-out {Path(config.heldout).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png, dpi=100, bbox_inches="tight")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
