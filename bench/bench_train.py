"""Training throughput: the trainer against a minimal plain-PyTorch loop, compile off and on.

CPU (always): a fixed small model (4 layers, 256 wide, 4 heads, context 256, batch 16, vocab 16,384)
trained by `train.train` on synthetic token shards and by a bare loop over tensors already in memory
(no loader, no logging, no checkpoints): tokens/s and peak memory of each, and the trainer's overhead.
GPU (when CUDA is available): the gpt2-124m preset, bf16, compiled, context 1024: tokens/s, MFU, peak
memory, and the share of step time spent waiting for data.

Each case runs in its own process so that its peak memory is its own. Prints a table and writes JSON:

    python bench/bench_train.py                 # everything that this machine can run
    python bench/bench_train.py --steps 30 --out bench/results/train.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CPU_MODEL = dict(n_layer=4, d_model=256, n_head=4, n_kv_head=None, max_seq_len=256)
CPU_BATCH = 16
VOCAB = 16384
GPU_PRESET = "gpt2-124m"
GPU_VOCAB = 50304
GPU_SEQ = 1024
GPU_MICRO = 32
GPU_BATCH_TOKENS = 1 << 18


def write_random_shards(out_dir: Path, vocab_size: int, train_tokens: int, val_tokens: int) -> Path:
    """Uniform random documents: content does not matter for throughput, and they are made in a blink."""
    import numpy as np

    from pipeline.token_shards import write_token_shards

    rng = np.random.default_rng(0)
    eot = vocab_size - 1

    def docs(total: int) -> list:
        out, made = [], 0
        while made < total:
            n = int(rng.integers(200, 4000))
            out.append(np.append(rng.integers(0, eot, n), eot))
            made += n + 1
        return out

    write_token_shards(out_dir, {"train": docs(train_tokens), "val": docs(val_tokens)}, vocab_size=vocab_size,
                       eot_id=eot, tokenizer_hash="bench")
    return out_dir


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------------------------------
# Cases (each runs in a child process: `bench_train.py --case NAME ...`)


def case_plain(steps: int, warmup: int, compile_: bool) -> dict:
    """The same model and optimizer as the trainer, fed from one tensor in memory, nothing else."""
    import torch

    from model import GPT, preset_config

    torch.manual_seed(0)
    model = GPT(preset_config("tiny", VOCAB, **CPU_MODEL))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    if compile_:
        for block in model.blocks:
            block.compile()
    seq = CPU_MODEL["max_seq_len"]
    data = torch.randint(0, VOCAB, (steps, CPU_BATCH, seq + 1))
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        x, y = data[step, :, :-1], data[step, :, 1:]
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    measured = times[warmup:]
    return {"tokens_per_s": CPU_BATCH * seq * len(measured) / sum(measured), "peak_rss_mb": peak_rss_mb(),
            "params": model.num_params(), "step_s": sum(measured) / len(measured)}


def case_trainer(steps: int, warmup: int, compile_: bool, shards: str) -> dict:
    """train.train with eval, samples and periodic checkpoints off; every step logged (the worst case)."""
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
    from train.metrics import read_metrics

    run_dir = tempfile.mkdtemp(prefix="bench-train-")
    seq = CPU_MODEL["max_seq_len"]
    config = TrainConfig(
        run_dir=run_dir, max_steps=steps, preset="tiny", model_overrides=CPU_MODEL, device="cpu",
        global_batch_tokens=CPU_BATCH * seq, compile=compile_,
        data=DataConfig(shards_dir=shards, seq_len=seq, micro_batch_size=CPU_BATCH, prefetch_batches=2),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4),
        eval=EvalConfig(every_steps=0, sample_every_steps=0, max_tokens=seq * CPU_BATCH),
        checkpoint=CheckpointConfig(every_steps=0),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
    )
    stamps = [time.perf_counter()]  # the end of every step, as the caller sees it: loader, logging, all
    result = train(config, on_step=lambda step: stamps.append(time.perf_counter()))
    records = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"][warmup:]
    step_times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return {"tokens_per_s": CPU_BATCH * seq * len(step_times) / sum(step_times), "peak_rss_mb": peak_rss_mb(),
            "params": result.num_params, "step_s": sum(step_times) / len(step_times),
            "data_wait_share": sum(r["data_wait_share"] * t for r, t in zip(records, step_times)) / sum(step_times),
            "logged_tokens_per_s": sum(r["tokens_per_s"] for r in records) / len(records)}


def case_gpu(steps: int, warmup: int, shards: str) -> dict:
    import torch

    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
    from train.metrics import read_metrics

    run_dir = tempfile.mkdtemp(prefix="bench-train-gpu-")
    config = TrainConfig(
        run_dir=run_dir, max_steps=steps, preset=GPU_PRESET, device="cuda", precision="bf16", compile=True,
        global_batch_tokens=GPU_BATCH_TOKENS,
        data=DataConfig(shards_dir=shards, seq_len=GPU_SEQ, micro_batch_size=GPU_MICRO, prefetch_batches=8),
        optim=OptimConfig(lr=6e-4, min_lr=6e-5),
        eval=EvalConfig(every_steps=0, sample_every_steps=0, max_tokens=GPU_SEQ * GPU_MICRO),
        checkpoint=CheckpointConfig(every_steps=0),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
    )
    stamps = [time.perf_counter()]
    result = train(config, on_step=lambda step: stamps.append(time.perf_counter()))
    records = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"][warmup:]
    # log_every=1 makes every step end in loss.item(), a device sync, so the stamps time whole steps
    step_times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    total = sum(step_times)
    return {"device": torch.cuda.get_device_name(), "tokens_per_s": GPU_BATCH_TOKENS * len(step_times) / total,
            "mfu": sum(r["mfu"] * t for r, t in zip(records, step_times)) / total if records[0]["mfu"] else None,
            "peak_memory_gb": (result.peak_memory_bytes or 0) / 1e9, "params": result.num_params,
            "step_s": total / len(step_times),
            "data_wait_share": sum(r["data_wait_share"] * t for r, t in zip(records, step_times)) / total}


# --------------------------------------------------------------------------------------------------
# Driver


def run_case(name: str, args: argparse.Namespace, shards: Path | None, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--case", name, "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(args.threads)]
    if shards is not None:
        cmd += ["--shards", str(shards)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16, help="Optimizer steps per CPU case (default 16).")
    parser.add_argument("--warmup", type=int, default=3, help="Leading steps not timed (compilation) (default 3).")
    parser.add_argument("--gpu-steps", type=int, default=30, help="Optimizer steps of the GPU case (default 30).")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train.json",
                        help="JSON results file (default bench/results/train.json).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds of CPU cases; the best of each is kept (default 2).")
    parser.add_argument("--no-compile", action="store_true", help="Skip the compiled CPU cases.")
    parser.add_argument("--no-cpu", action="store_true", help="Skip the CPU cases.")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per case; 0 = torch's default (one per core) (default 0).")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # child process: run one case, print its JSON on the last line
        logging.basicConfig(level=logging.WARNING)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        kind, _, variant = args.case.partition("-")
        if kind == "plain":
            out = case_plain(args.steps, args.warmup, variant == "compile")
        elif kind == "trainer":
            out = case_trainer(args.steps, args.warmup, variant == "compile", args.shards)
        else:
            out = case_gpu(args.steps, args.warmup, args.shards)
        print(json.dumps(out))
        return

    import torch

    results: dict = {"torch": torch.__version__, "cpu_threads": args.threads or torch.get_num_threads(), "cpu_cases": {},
                     "cpu_model": {**CPU_MODEL, "batch": CPU_BATCH, "vocab": VOCAB}}
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        if not args.no_cpu:
            shards = write_random_shards(Path(tmp) / "cpu", VOCAB, train_tokens=2_000_000, val_tokens=50_000)
            variants = ["eager"] + ([] if args.no_compile else ["compile"])
            runs: dict[str, list[dict]] = {}
            # Plain and trainer back to back, several rounds, best of each: robust to other processes'
            # load coming and going (the CI machine has 2 cores shared with nothing, a laptop does not).
            for round_ in range(args.repeats):
                for variant in variants:
                    for kind in ("plain", "trainer"):
                        name = f"{kind}-{variant}"
                        print(f"running {name} (round {round_ + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
                        runs.setdefault(name, []).append(run_case(name, args, shards, args.steps, args.warmup))
            for name, attempts in runs.items():
                ok = [a for a in attempts if "tokens_per_s" in a]
                best = max(ok, key=lambda a: a["tokens_per_s"]) if ok else attempts[-1]
                results["cpu_cases"][name] = {**best, "all_tokens_per_s": [a.get("tokens_per_s") for a in attempts]}
            for variant in variants:
                plain, trainer = results["cpu_cases"][f"plain-{variant}"], results["cpu_cases"][f"trainer-{variant}"]
                if "tokens_per_s" in plain and "tokens_per_s" in trainer:
                    results["cpu_cases"][f"trainer-{variant}"]["overhead_pct"] = \
                        100 * (1 - trainer["tokens_per_s"] / plain["tokens_per_s"])
        if torch.cuda.is_available():
            shards = write_random_shards(Path(tmp) / "gpu", GPU_VOCAB, train_tokens=20_000_000, val_tokens=200_000)
            print("running gpu ...", file=sys.stderr, flush=True)
            results["gpu"] = run_case("gpu", args, shards, args.gpu_steps, min(args.warmup + 2, args.gpu_steps - 1))
            results["gpu"].update(preset=GPU_PRESET, seq_len=GPU_SEQ, micro_batch=GPU_MICRO,
                                  batch_tokens=GPU_BATCH_TOKENS, precision="bf16", compile=True)

    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")


def print_table(results: dict) -> None:
    m = results["cpu_model"]
    if results["cpu_cases"]:
        print(f"\nCPU ({results['cpu_threads']} threads, torch {results['torch']}): {m['n_layer']} layers, "
              f"{m['d_model']} wide, {m['n_head']} heads, context {m['max_seq_len']}, batch {m['batch']}, "
              f"vocab {m['vocab']}")
        print(f"{'case':<18}{'tokens/s':>12}{'step s':>10}{'peak RSS MB':>14}{'overhead':>11}")
        for name, r in results["cpu_cases"].items():
            if "error" in r:
                print(f"{name:<18}  failed: {r['error']}")
                continue
            overhead = f"{r['overhead_pct']:.1f}%" if "overhead_pct" in r else ""
            print(f"{name:<18}{r['tokens_per_s']:>12,.0f}{r['step_s']:>10.3f}{r['peak_rss_mb']:>14,.0f}{overhead:>11}")
    if "gpu" in results:
        g = results["gpu"]
        if "error" in g:
            print(f"\nGPU: failed: {g['error']}")
        else:
            mfu = f"{100 * g['mfu']:.1f}%" if g.get("mfu") is not None else "n/a"
            print(f"\nGPU {g['device']}: {g['preset']}, bf16, compiled, context {g['seq_len']}, "
                  f"{g['batch_tokens']:,} tokens/step")
            print(f"  {g['tokens_per_s']:,.0f} tokens/s | MFU {mfu} | peak memory {g['peak_memory_gb']:.1f} GB | "
                  f"data wait {100 * g['data_wait_share']:.2f}% of step time")
    else:
        print("\nGPU: no CUDA device here; GPU case skipped")


if __name__ == "__main__":
    main()
