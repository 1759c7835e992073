"""`crawlgpt benchmark` against lm-evaluation-harness, and the cost of `crawlgpt export`.

1. Export: time and peak memory (RSS) of `crawlgpt export` for a `small`-preset checkpoint (random
   weights: the cost does not depend on them), each in its own process.
2. Scoring: the same exported model scored on PIQA and LAMBADA by `crawlgpt benchmark --model DIR`
   (our scorer on the transformers model), by `crawlgpt benchmark --checkpoint` (our scorer on our
   model), and by lm-evaluation-harness (`lm_eval --model hf`, `add_bos_token=True`, local task configs
   that point at the same files and spell out the same prompts as the harness's own `piqa` and
   `lambada_openai`). Accuracies side by side, wall time of each, same torch thread count.

The harness lives in its own environment (it pins its own dependencies): pass its python with
--peer-python or BENCH_LMEVAL_PYTHON. Without it, part 2 reports our figures only.

    python bench/bench_eval.py --checkpoint data/runs/default --limit 500 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCORERS = ("ours_checkpoint", "ours_hf", "lm_eval")
sys.path.insert(0, str(REPO))

PIQA_TASK = """task: piqa_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {piqa}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

LAMBADA_TASK = """task: lambada_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {lambada}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes of this child alone, its output) of a command in its own process."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child only
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{text[-4000:]}")
    return seconds, usage.ru_maxrss * 1024, text


def bench_export(work: Path) -> dict:
    """Export a `small` checkpoint (vocab 16,384, random weights) in a fresh process: time and peak RSS."""
    import torch

    from model.gpt import GPT, preset_config
    from pipeline.tokenizer_train import TokenizerConfig, build_tokenizer, make_trainer, pad_vocab
    from train.checkpoint import checkpoint_path, save_checkpoint
    from train.evaluate import tokenizer_hash

    # A real byte-level BPE padded to 16,384 ids (what the export copies does not depend on its merges).
    tok_config = TokenizerConfig(vocab_size=16384, min_frequency=1)
    tokenizer = build_tokenizer(tok_config.pattern)
    tokenizer.train_from_iterator(["The cat sat on the mat and looked at the garden."] * 50,
                                  trainer=make_trainer(tok_config))
    pad_vocab(tokenizer, 16384, tok_config.reserved_tokens)
    tok = work / "tok" / "tokenizer.json"
    tok.parent.mkdir(parents=True)
    tokenizer.save(str(tok))
    config = preset_config("small", 16384)
    model = GPT(config)
    ckpt = checkpoint_path(work / "small-run", 1)
    save_checkpoint(ckpt, {"step": 1, "model": model.state_dict(), "model_config": config.to_dict(),
                           "data": {"vocab_size": 16384, "eot_id": 0, "tokenizer_hash": tokenizer_hash(tok),
                                    "shards_dir": str(tok.parent)}})
    params = model.num_params()
    del model
    cmd = [sys.executable, "-m", "cli", "export", "--checkpoint", str(ckpt), "--out", str(work / "small-hf"),
           "--tokenizer", str(tok), "--overwrite"]
    seconds, peak, _ = run_timed(cmd, {"PYTHONPATH": str(REPO)})
    size = (work / "small-hf" / "model.safetensors").stat().st_size
    return {"preset": "small", "parameters": params, "seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20),
            "checkpoint_mb": round(ckpt.stat().st_size / 2**20, 1), "safetensors_mb": round(size / 2**20, 1),
            "torch_threads": torch.get_num_threads()}


def ours(target: list[str], eval_dir: Path, limit: int, threads: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cli", "benchmark", *target, "--tasks", "piqa,lambada",
           "--eval-dir", str(eval_dir), "--threads", str(threads), "--json", str(out)]
    if limit:
        cmd += ["--limit", str(limit)]
    seconds, peak, _ = run_timed(cmd, {"PYTHONPATH": str(REPO)})
    report = json.loads(out.read_text())
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 2**20),
            "tasks": {r["task"]: {k: r[k] for k in ("items", "acc", "acc_norm", "perplexity", "seconds") if k in r}
                      for r in report["results"]}}


def harness(peer: str, model_dir: Path, eval_dir: Path, limit: int, threads: int, work: Path) -> dict:
    """lm_eval on the exported folder with local copies of piqa and lambada_openai."""
    tasks = work / "lmeval_tasks"
    tasks.mkdir(exist_ok=True)
    merged = work / "piqa_merged.jsonl"
    labels = (eval_dir / "piqa-valid-labels.lst").read_text().split()
    with open(eval_dir / "piqa-valid.jsonl") as src, open(merged, "w") as dst:
        for line, label in zip((l for l in src if l.strip()), labels):
            dst.write(json.dumps({**json.loads(line), "label": int(label)}) + "\n")
    (tasks / "piqa_local.yaml").write_text(PIQA_TASK.format(piqa=merged))
    (tasks / "lambada_local.yaml").write_text(LAMBADA_TASK.format(lambada=(eval_dir / "lambada_test.jsonl").resolve()))
    out = work / "lmeval_out"
    cmd = [peer, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},add_bos_token=True,dtype=float32",
           "--tasks", "piqa_local,lambada_local", "--include_path", str(tasks), "--batch_size", "32",
           "--device", "cpu", "--output_path", str(out)]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    seconds, peak, log = run_timed(cmd, env)
    found = sorted(out.rglob("results_*.json"))
    if not found:
        raise SystemExit(f"lm_eval wrote no results under {out}:\n{log[-3000:]}")
    results = json.loads(found[-1].read_text())["results"]
    pick = {"piqa": results["piqa_local"], "lambada": results["lambada_local"]}
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 2**20),
            "tasks": {t: {k.split(",")[0]: v for k, v in r.items()
                          if k.split(",")[0] in ("acc", "acc_norm", "perplexity")}
                      for t, r in pick.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="Checkpoint (or run folder) to export and score.")
    parser.add_argument("--tokenizer", type=Path, default=None, help="Its tokenizer.json [default: the shards' copy].")
    parser.add_argument("--eval-dir", type=Path, default=REPO.parent / "shared" / "data" / "eval")
    parser.add_argument("--limit", type=int, default=0, help="Items per task (0 = all).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every scorer.")
    parser.add_argument("--peer-python", default=os.environ.get("BENCH_LMEVAL_PYTHON"),
                        help="python of the environment with lm-eval installed.")
    parser.add_argument("--skip-export-bench", action="store_true", help="Do not time the `small` export.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eval.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    report: dict = {"threads": args.threads, "limit": args.limit or None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_export_bench:
            report["export_small"] = bench_export(work)
            print(f"export (small): {report['export_small']}", flush=True)
        if args.checkpoint is not None:
            from train.export.hf import export_checkpoint

            start = time.perf_counter()
            model_dir = export_checkpoint(args.checkpoint, work / "hf", args.tokenizer).out_dir
            report["export_seconds"] = round(time.perf_counter() - start, 2)
            tok = ["--tokenizer", str(args.tokenizer)] if args.tokenizer else []
            report["ours_checkpoint"] = ours(["--checkpoint", str(args.checkpoint), *tok], args.eval_dir, args.limit,
                                             args.threads, work / "ours_ckpt.json")
            print(f"ours (checkpoint): {report['ours_checkpoint']}", flush=True)
            report["ours_hf"] = ours(["--model", str(model_dir)], args.eval_dir, args.limit, args.threads,
                                     work / "ours_hf.json")
            print(f"ours (HF folder): {report['ours_hf']}", flush=True)
            if args.peer_python:
                report["lm_eval"] = harness(args.peer_python, model_dir, args.eval_dir, args.limit, args.threads, work)
                print(f"lm-eval (HF folder): {report['lm_eval']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    rows = []
    for task in ("piqa", "lambada"):
        for metric in ("acc", "acc_norm", "perplexity"):
            cells = [report[k]["tasks"][task].get(metric) for k in SCORERS if k in report]
            if any(c is not None for c in cells):
                rows.append((f"{task} {metric}", *[f"{c:.4f}" if c is not None else "-" for c in cells]))
    rows.append(("wall seconds", *[str(report[k]["seconds"]) for k in SCORERS if k in report]))
    for row in rows:
        print("  ".join(f"{c:>18}" for c in row))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
