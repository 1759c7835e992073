"""Training runs under DATA/runs: loss curves, validation, benchmarks (per evaluation and the final
benchmark.json), and the before/after answers of instruction tuning (responses.jsonl)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from report import svg
from report.page import Section, esc, table, text_block

log = logging.getLogger(__name__)

#: Before/after answers shown per run.
ANSWERS = 3


def section(data_dir: Path) -> Section | None:
    runs_dir = data_dir / "runs"
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    parts = [_run(run) for run in runs]
    parts = [p for p in parts if p]
    if not parts:
        return None
    return Section("runs", "Training runs", "".join(parts))


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            out.append(record)
    return out


def _run(run: Path) -> str:
    metrics = read_jsonl(run / "metrics.jsonl")
    bench = _benchmark_file(run / "benchmark.json")
    answers = read_jsonl(run / "responses.jsonl")
    if not (metrics or bench or answers):
        return ""
    parts = [f"<h3>run {esc(run.name)}</h3>"]
    losses, others = _series(metrics)
    if losses:
        parts.append(svg.lines(losses, f"{run.name}: losses"))
    if others:
        parts.append(svg.lines(others, f"{run.name}: reward, KL, accuracy"))
    evals = [r for r in metrics if r.get("kind") == "benchmark"]
    if evals:
        keys = sorted({k for r in evals for k in r if k not in ("kind", "step")})
        parts.append(table(["step", *keys], [(r.get("step"), *(r.get(k, "") for k in keys)) for r in evals]))
    if bench:
        parts.append(bench)
    for a in answers[:ANSWERS]:
        prompt = a.get("instruction") or json.dumps(a.get("messages", ""), ensure_ascii=False)
        parts.append(f"<div class=\"doc\"><b>{esc(prompt[:300])}</b> {text_block(a.get('input') or '', 300)}"
                     f"before: {text_block(str(a.get('before_greedy', '')), 500)}"
                     f"after: {text_block(str(a.get('after_greedy', '')), 500)}"
                     f"reference: {text_block(str(a.get('reference', '')), 500)}</div>")
    return "".join(parts)


#: Words in a metric name that put it in the second chart (alignment runs: reward, KL, preference accuracy).
_OTHER_KEYS = ("reward", "kl", "accuracy", "margin", "win")


def _series(metrics: list[dict]) -> tuple[dict, dict]:
    """(loss series, reward/KL/accuracy series) by metric name: [(step, value)] from metrics.jsonl records."""
    losses: dict[str, list] = {}
    others: dict[str, list] = {}
    for r in metrics:
        step = r.get("step")
        if not isinstance(step, (int, float)) or r.get("kind") == "benchmark":
            continue
        for key, value in r.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if "loss" in key:
                losses.setdefault(key, []).append((step, float(value)))
            elif any(word in key for word in _OTHER_KEYS):
                others.setdefault(key, []).append((step, float(value)))
    return losses, others


def _benchmark_file(path: Path) -> str:
    if not path.is_file():
        return ""
    try:
        results = json.loads(path.read_text(encoding="utf-8")).get("results", [])
    except (ValueError, AttributeError):
        log.warning("report: %s is not a benchmark report; skipped", path)
        return ""
    rows = [(r.get("task"), r.get("items"), r.get("acc", r.get("acc_norm", "")), r.get("chance", ""),
             r.get("perplexity", "")) for r in results if isinstance(r, dict)]
    return "<p>Benchmarks (benchmark.json):</p>" + table(["task", "items", "accuracy", "chance", "perplexity"], rows)
