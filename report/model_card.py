"""The model card `crawlgpt export` writes beside the weights: README.md in the Hugging Face format.

YAML metadata (license, language, library_name, pipeline_tag, tags, datasets, and a `model-index` with
the benchmark results found for the exported checkpoint, under lm-evaluation-harness's task and metric
names), then the architecture and size, training tokens, steps and hardware, the data pipeline in brief
(from the DATA folder's manifests: report/dataset_card.py), evaluation with chance levels, and limitations.

Results "for the checkpoint": the benchmark records of metrics.jsonl at the checkpoint's step (the
trainer's --benchmark hook), else the run's benchmark.json (`make benchmark`) when it is newer than the
checkpoint file and names this run or checkpoint. Nothing else is reported as the model's score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from formats.benchmark_tasks import TASKS
from report.dataset_card import pipeline_markdown, yaml_block

log = logging.getLogger(__name__)

#: Our task name -> lm-evaluation-harness's.
LM_EVAL_TASKS = {"lambada": "lambada_openai"}
#: Metrics reported in model-index (lm-eval names).
METRICS = ("acc", "acc_norm", "perplexity")
#: Dataset id and split of each task on the Hugging Face Hub, as lm-eval reads them.
DATASETS = {"piqa": ("baber/piqa", "validation"), "lambada": ("EleutherAI/lambada_openai", "test"),
            "hellaswag": ("Rowan/hellaswag", "validation"), "arc_easy": ("allenai/ai2_arc", "test"),
            "arc_challenge": ("allenai/ai2_arc", "test"), "winogrande": ("allenai/winogrande", "validation")}


def checkpoint_results(run_dir: Path, checkpoint: Path, step: int) -> tuple[list[dict], str]:
    """([{task, items, chance, acc, ...}], where they came from) for the exported checkpoint, or ([], "")."""
    by_task: dict[str, dict] = {}
    for line in _lines(run_dir / "metrics.jsonl"):
        if line.get("kind") == "benchmark" and line.get("step") == step:
            for key, value in line.items():
                task, metric = _split_key(key)
                if task and metric in METRICS:
                    by_task.setdefault(task, {"task": task})[metric] = value
    if by_task:
        return [{**r, "chance": _chance(r["task"])} for r in by_task.values()], f"metrics.jsonl, step {step}"
    bench = run_dir / "benchmark.json"
    if bench.is_file() and checkpoint.is_file() and bench.stat().st_mtime >= checkpoint.stat().st_mtime:
        try:
            report = json.loads(bench.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s is not a benchmark report; no results in the card", bench)
            return [], ""
        model = Path(str(report.get("model", ""))).resolve()
        if model in (run_dir.resolve(), checkpoint.resolve()):
            return [r for r in report.get("results", []) if isinstance(r, dict) and "task" in r], bench.name
    return [], ""


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in out if isinstance(r, dict)]


def _split_key(key: str) -> tuple[str | None, str]:
    """"arc_easy_acc_norm" -> ("arc_easy", "acc_norm") by the longest task name it starts with."""
    for task in sorted(TASKS, key=len, reverse=True):
        if key.startswith(task + "_"):
            return task, key[len(task) + 1:]
    return None, ""


def _chance(task: str) -> float | None:
    return {"lambada": 0.0, "piqa": 0.5, "winogrande": 0.5, "hellaswag": 0.25, "arc_easy": 0.25,
            "arc_challenge": 0.25}.get(task)


def model_index(name: str, results: list[dict]) -> list[dict]:
    entries = []
    for r in results:
        task = r["task"]
        dataset, split = DATASETS.get(task, (task, "test"))
        metrics = [{"type": m, "value": round(float(r[m]), 4), "name": f"{m} (zero-shot)"}
                   for m in METRICS if isinstance(r.get(m), (int, float))]
        if metrics:
            entries.append({"task": {"type": "text-generation", "name": "Text Generation"},
                            "dataset": {"name": LM_EVAL_TASKS.get(task, task), "type": dataset, "split": split},
                            "metrics": metrics})
    return [{"name": name, "results": entries}] if entries else []


def tokens_trained(run_dir: Path, step: int) -> int | None:
    seen = [r.get("tokens_seen") for r in _lines(run_dir / "metrics.jsonl")
            if r.get("kind") == "train" and isinstance(r.get("step"), int) and r["step"] <= step]
    seen = [s for s in seen if isinstance(s, int)]
    return max(seen) if seen else None


def model_card(name: str, export, run_dir: Path, summary: dict | None, license: str = "other") -> str:
    """The README.md text for an export (`train.export.hf.ExportResult`) of a checkpoint of `run_dir`."""
    info = export.info
    results, origin = checkpoint_results(run_dir, export.checkpoint, export.step)
    langs = (summary or {}).get("langs") or ["en"]
    meta = {"license": license, "language": langs, "library_name": "transformers",
            "pipeline_tag": "text-generation", "tags": ["crawlgpt", "llama", "causal-lm", info.get("kind", "pretrain")],
            "datasets": [Path(str(summary["source"])).name] if summary else []}
    index = model_index(name, results)
    if index:
        meta["model-index"] = index
    return f"---\n{yaml_block(meta)}\n---\n\n" + "\n\n".join(
        [f"# {name}", _model_part(export, run_dir), _data_part(summary), _eval_part(results, origin), _LIMITATIONS]) + "\n"


def _model_part(export, run_dir: Path) -> str:
    info = export.info
    mc, tc, hw = info.get("model_config", {}), info.get("train_config", {}), info.get("hardware")
    tokens = tokens_trained(run_dir, export.step)
    hardware = (f"{hw.get('world_size', 1)} x {hw.get('device')} ({hw.get('device_type')})" if hw
                else f"not recorded in this checkpoint (device setting {tc.get('device', '?')})")
    rows = [("architecture", f"Llama-style decoder ({mc.get('n_layer')} layers, d_model {mc.get('d_model')}, "
                             f"{mc.get('n_head')} heads, {mc.get('n_kv_head')} key/value heads, RoPE, RMSNorm, SwiGLU)"),
            ("parameters", f"{export.num_params:,}"), ("context", f"{mc.get('max_seq_len')} tokens"),
            ("vocabulary", f"{mc.get('vocab_size'):,} (byte-level BPE trained on the corpus)"),
            ("training", f"{info.get('kind', 'pretrain')}, step {export.step:,} of {tc.get('max_steps', '?')}, "
                         f"{tokens:,} tokens" if tokens else f"{info.get('kind', 'pretrain')}, step {export.step:,}"),
            ("batch", f"{tc.get('global_batch_tokens', '?')} tokens per step, precision {tc.get('precision', '?')}, "
                      f"parallelism {tc.get('parallelism', '?')}"),
            ("hardware", hardware), ("checkpoint", export.checkpoint.name)]
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    return f"## Model\n\n{table}\n\nLoad with `AutoModelForCausalLM.from_pretrained(\"{export.out_dir}\")`."


def _data_part(summary: dict | None) -> str:
    if summary is None:
        return "## Training data\n\nNot recorded (no DATA folder with finished stages was found)."
    return (f"## Training data\n\n{summary['documents']:,} documents ({summary['text_bytes'] / 1e6:,.1f} MB of text) "
            f"from {summary['source']}, curated by crawlgpt:\n\n{pipeline_markdown(summary)}")


def _eval_part(results: list[dict], origin: str) -> str:
    if not results:
        return "## Evaluation\n\nNo benchmark results for this checkpoint (run `make benchmark`, then export again)."
    rows = ["| task (lm-eval name) | items | metric | value | chance |", "|---|---:|---|---:|---:|"]
    for r in results:
        for m in METRICS:
            if isinstance(r.get(m), (int, float)):
                chance = r.get("chance") if m != "perplexity" else None
                rows.append(f"| {LM_EVAL_TASKS.get(r['task'], r['task'])} | {r.get('items', '?')} | {m} | "
                            f"{r[m]:.4g} | {'' if chance is None else chance} |")
    return (f"## Evaluation\n\nZero-shot, scored as lm-evaluation-harness scores them (from {origin}):\n\n"
            + "\n".join(rows))


_LIMITATIONS = ("## Limitations\n\nA small research model trained on filtered web text: it produces fluent-looking "
                "but unreliable text, repeats the biases and errors of its data, and has no safety tuning. "
                "Scores near the chance level mean the model has not learnt the task.")


def write_model_card(out_dir: Path, text: str) -> Path:
    """Write README.md into the export folder (under a temporary name, then renamed)."""
    path = Path(out_dir) / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
