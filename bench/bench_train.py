"""Training throughput: the trainer against a minimal plain-PyTorch loop, compile off and on.

CPU (always): a fixed small model (4 layers, 256 wide, 4 heads, context 256, batch 16, vocab 16,384)
trained by `train.train` on synthetic token shards and by a bare loop over tensors already in memory
(no loader, no logging, no checkpoints): tokens/s and peak memory of each, and the trainer's overhead.
GPU (when CUDA is available): the gpt2-124m preset, bf16, compiled, context 1024, 524,288 tokens per
step (what `make pretrain` trains on one GPU): tokens/s, MFU (nanoGPT's 6N + 12·L·H·Q·T FLOPs per token
over the device's dense bf16 peak, e.g. 989 TFLOP/s for an H200), peak memory, and the share of step
time spent waiting for data. Then a sweep, one change per line: micro-batch 16/32/64, compile off,
SDPA backend flash/efficient (each alone), foreach instead of fused AdamW. `--tiny` runs the same GPU
cases at tiny sizes, on the CPU when there is no GPU: a dry run of the code path, not a measurement.

Each case runs in its own process so that its peak memory is its own. Prints a table and writes JSON:

    python bench/bench_train.py                 # everything that this machine can run
    python bench/bench_train.py --steps 30 --out bench/results/train.json
    python bench/bench_train.py --no-cpu        # the GPU cases only (bench/gpu_check.sh runs this)
    python bench/bench_train.py --no-cpu --tiny # their dry run on a CPU
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
GPU_BATCH_TOKENS = 1 << 19


def write_random_shards(out_dir: Path, vocab_size: int, train_tokens: int, val_tokens: int) -> Path:
    """Uniform random documents: content does not matter for throughput, and they are made in a blink."""
    import numpy as np

    from formats.token_shards import write_token_shards

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


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def use_sdpa_backend(name: str) -> None:
    """Allow only one scaled_dot_product_attention kernel ("default" leaves torch's own choice), so a
    backend that cannot run these shapes fails loudly instead of falling back to another."""
    import torch

    if name == "default":
        return
    if name not in SDPA_BACKENDS:
        raise ValueError(f"unknown SDPA backend {name!r}; choose default or one of {SDPA_BACKENDS}")
    torch.backends.cuda.enable_flash_sdp(name == "flash")
    torch.backends.cuda.enable_mem_efficient_sdp(name == "efficient")
    torch.backends.cuda.enable_math_sdp(name == "math")
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(name == "cudnn")


def use_adamw_implementation(name: str) -> None:
    """Make every torch.optim.AdamW the trainer builds use this implementation ("fused" or "foreach").

    The trainer always asks for fused on CUDA; the benchmark swaps the class in this child process
    only, so the sweep can compare without a trainer option that nobody else needs."""
    import torch

    if name not in ("fused", "foreach"):
        raise ValueError(f"unknown AdamW implementation {name!r}; choose fused or foreach")
    base = torch.optim.AdamW

    class AdamW(base):
        def __init__(self, params, **kwargs):
            kwargs.update(fused=name == "fused", foreach=name == "foreach")
            super().__init__(params, **kwargs)

    torch.optim.AdamW = AdamW


def case_gpu(steps: int, warmup: int, shards: str, variant: dict) -> dict:
    """One line of the GPU table: `train.train` on one device with the variant's settings, every step
    logged (each log ends in loss.item(), a device sync, so the on_step stamps time whole steps)."""
    import torch

    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
    from train.metrics import mfu, peak_flops, read_metrics

    use_sdpa_backend(variant["sdpa"])
    use_adamw_implementation(variant["optimizer"])
    device = torch.device(variant["device"])
    run_dir = tempfile.mkdtemp(prefix="bench-train-gpu-")
    config = TrainConfig(
        run_dir=run_dir, max_steps=steps, preset=variant["preset"], device=variant["device"],
        precision=variant["precision"], compile=variant["compile"], global_batch_tokens=variant["batch_tokens"],
        peak_tflops=variant.get("peak_tflops"), model_overrides=variant.get("model_overrides", {}),
        data=DataConfig(shards_dir=shards, seq_len=variant["seq_len"], micro_batch_size=variant["micro_batch"],
                        prefetch_batches=8),
        optim=OptimConfig(lr=6e-4, min_lr=6e-5),
        eval=EvalConfig(every_steps=0, sample_every_steps=0, max_tokens=variant["seq_len"] * variant["micro_batch"]),
        checkpoint=CheckpointConfig(every_steps=0),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stamps = [time.perf_counter()]
    result = train(config, on_step=lambda step: stamps.append(time.perf_counter()))
    records = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"][warmup:]
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    total = sum(step_times[warmup:])
    tokens_per_s = variant["batch_tokens"] * len(step_times[warmup:]) / total
    peak = peak_flops(device, variant.get("peak_tflops"))
    flops_per_token = result.model_config and _flops_per_token(result.model_config, variant["seq_len"])
    return {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "tokens_per_s": tokens_per_s, "step_s": total / len(step_times[warmup:]),
            "first_steps_s": sum(step_times[:warmup]),  # compilation and warm-up
            "flops_per_token": flops_per_token, "peak_tflops": peak / 1e12 if peak else None,
            "mfu": mfu(flops_per_token, tokens_per_s, peak),
            "mfu_logged": sum(r["mfu"] * t for r, t in zip(records, step_times[warmup:])) / total
            if records and records[0]["mfu"] is not None else None,
            "peak_memory_gb": (result.peak_memory_bytes or 0) / 1e9 if device.type == "cuda" else None,
            "peak_rss_mb": peak_rss_mb(), "params": result.num_params,
            "data_wait_share": sum(r["data_wait_share"] * t for r, t in zip(records, step_times[warmup:])) / total,
            "final_loss": records[-1]["loss"] if records else None}


def _flops_per_token(model_config, seq_len: int) -> float:
    """nanoGPT's count, from the model itself: 6 N + 12 L H Q T (see GPT.flops_per_token)."""
    import torch

    from model import GPT

    with torch.device("meta"):
        return GPT(model_config).flops_per_token(seq_len)


#: The headline GPU case: what `make pretrain` trains on one GPU on a large corpus (train/defaults.py).
GPU_BASE = dict(preset=GPU_PRESET, device="cuda", precision="bf16", seq_len=GPU_SEQ, micro_batch=GPU_MICRO,
                batch_tokens=GPU_BATCH_TOKENS, compile=True, sdpa="default", optimizer="fused")
#: Its stand-in on a CPU (`--tiny`): the same code path at sizes a laptop runs in seconds; the MFU is
#: computed against a nominal 1 TFLOP/s so the arithmetic runs too (it means nothing on a CPU).
TINY_BASE = dict(preset="tiny", device="cpu", precision="fp32", seq_len=64, micro_batch=8, batch_tokens=2 * 8 * 64,
                 compile=True, sdpa="default", optimizer="fused", peak_tflops=1.0)


def sweep_variants(base: dict, micro_batches: list[int], sdpa: list[str], compile_: bool) -> list[tuple[str, dict]]:
    """One change from the base per line: micro-batch, compile off, SDPA backend, AdamW implementation.
    The global batch stays a multiple of every micro-batch, so each line does the same work per step."""
    lines = []
    for micro in micro_batches:
        if micro != base["micro_batch"]:
            lines.append((f"micro-batch {micro}", {**base, "micro_batch": micro}))
    if base["compile"]:
        lines.append(("compile off", {**base, "compile": False}))
    for name in sdpa:
        lines.append((f"sdpa {name}", {**base, "sdpa": name}))
    lines.append(("adamw foreach", {**base, "optimizer": "foreach"}))
    if not compile_:
        lines = [(label, {**v, "compile": False}) for label, v in lines]
    return lines


# --------------------------------------------------------------------------------------------------
# Driver


def run_case(name: str, args: argparse.Namespace, shards: Path | None, steps: int, warmup: int,
             variant: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--case", name, "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(args.threads)]
    if shards is not None:
        cmd += ["--shards", str(shards)]
    if variant is not None:
        cmd += ["--variant", json.dumps(variant)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                              timeout=args.case_timeout or None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.case_timeout} s"}
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
    parser.add_argument("--gpu-steps", type=int, default=20, help="Optimizer steps of the headline GPU case (default 20).")
    parser.add_argument("--sweep-steps", type=int, default=8, help="Optimizer steps of each sweep line (default 8).")
    parser.add_argument("--gpu-warmup", type=int, default=3,
                        help="Leading GPU steps not timed (compilation, allocator warm-up) (default 3).")
    parser.add_argument("--no-sweep", action="store_true", help="Only the headline GPU case, no sweep.")
    parser.add_argument("--skip-headline", action="store_true", help="Only the sweep, not the headline GPU case.")
    parser.add_argument("--time-budget", type=float, default=0,
                        help="Seconds for all GPU cases; sweep lines that would start after it are not run (0 = no limit).")
    parser.add_argument("--micro-batches", default="16,32,64", help="Micro-batches of the sweep (default 16,32,64).")
    parser.add_argument("--sdpa", default="flash,efficient",
                        help="SDPA backends of the sweep, each alone (default flash,efficient; also cudnn, math).")
    parser.add_argument("--tiny", action="store_true",
                        help="Run the GPU cases at tiny sizes, on the CPU when there is no GPU (a dry run of the "
                             "GPU code path: the figures mean nothing).")
    parser.add_argument("--case-timeout", type=int, default=0, help="Seconds per case before it is stopped (0 = none).")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train.json",
                        help="JSON results file (default bench/results/train.json).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds of CPU cases; the best of each is kept (default 2).")
    parser.add_argument("--no-compile", action="store_true", help="Skip the compiled cases (CPU; and compile off in GPU cases).")
    parser.add_argument("--no-cpu", action="store_true", help="Skip the CPU cases.")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per case; 0 = torch's default (one per core) (default 0).")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
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
            out = case_gpu(args.steps, args.warmup, args.shards, json.loads(args.variant))
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
        if torch.cuda.is_available() or args.tiny:
            run_gpu_cases(args, Path(tmp), results)

    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")


def run_gpu_cases(args: argparse.Namespace, tmp: Path, results: dict) -> None:
    """The headline case, then the sweep (one change each), appended to results as they finish."""
    import torch

    base = dict(TINY_BASE if args.tiny else GPU_BASE)
    if args.tiny and torch.cuda.is_available():
        base.update(device="cuda", precision="bf16", peak_tflops=None)
    if args.no_compile:
        base["compile"] = False
    vocab = 512 if args.tiny else GPU_VOCAB
    train_tokens = 200_000 if args.tiny else 40_000_000
    shards = write_random_shards(tmp / "gpu", vocab, train_tokens=train_tokens, val_tokens=train_tokens // 100)
    start = time.perf_counter()
    if not args.skip_headline:
        print(f"running gpu: {base['preset']} on {base['device']} ...", file=sys.stderr, flush=True)
        warmup = min(args.gpu_warmup, args.gpu_steps - 1)
        results["gpu"] = {**run_case("gpu", args, shards, args.gpu_steps, warmup, base), **base}
    if args.no_sweep:
        return
    results["gpu_sweep"] = []
    micro_batches = [int(m) for m in args.micro_batches.split(",") if m]
    if args.tiny:
        micro_batches = [max(1, m // 4) for m in micro_batches]  # 4, 8, 16 around the tiny base of 8
    sdpa = [name for name in args.sdpa.split(",") if name]
    for label, variant in sweep_variants(base, micro_batches, sdpa, compile_=not args.no_compile):
        if variant["batch_tokens"] % (variant["micro_batch"] * variant["seq_len"]):
            variant["batch_tokens"] = variant["micro_batch"] * variant["seq_len"]
        left = args.time_budget - (time.perf_counter() - start) if args.time_budget else None
        if left is not None and left < 20:
            line = {"error": "not run: the time budget was spent"}
        else:
            print(f"running gpu sweep: {label} ...", file=sys.stderr, flush=True)
            if left is not None:
                args.case_timeout = int(left) if not args.case_timeout else min(args.case_timeout, int(left))
            line = run_case("gpu", args, shards, args.sweep_steps, min(args.gpu_warmup, args.sweep_steps - 1),
                            variant)
        results["gpu_sweep"].append({"line": label, **line, **variant})


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
    if "gpu" not in results and "gpu_sweep" not in results:
        print("\nGPU: no CUDA device here; GPU case skipped (--tiny runs its code path on the CPU)")
        return
    print("\n" + "\n".join(gpu_table(results)))


def gpu_table(results: dict) -> list[str]:
    """The GPU lines: a title, the column header, the headline case, then the sweep."""
    lines = results.get("gpu_sweep", [])
    g = results.get("gpu") or (lines[0] if lines else {})
    done = [r for r in [results.get("gpu"), *lines] if r and "error" not in r]
    name = done[0].get("device_name", g.get("device")) if done else g.get("device")
    peak = done[0].get("peak_tflops") if done else None
    out = [f"GPU cases on {name}: {g.get('preset')}, {g.get('precision')}, context {g.get('seq_len')}, "
           f"{g.get('batch_tokens', 0):,} tokens/step; MFU = nanoGPT's 6N + 12·L·H·Q·T FLOPs per token over "
           f"{peak or 'n/a'} TFLOP/s (dense bf16 peak)", format_gpu_line("", {}, header=True).rstrip()]
    if "gpu" in results:
        out.append(format_gpu_line("headline", results["gpu"]))
    out += [format_gpu_line(line["line"], line) for line in lines]
    return out


def format_gpu_line(label: str, r: dict, header: bool = False) -> str:
    """One line of the GPU table (the column header instead when asked)."""
    if header:
        return (f"{'line':<18}{'micro':>6}{'compile':>8}{'sdpa':>10}{'adamw':>8}{'tokens/s':>12}{'MFU':>8}"
                f"{'peak GB':>9}{'data wait':>10}{'warm-up s':>10}")
    if "error" in r:
        return f"{label:<18}  failed: {r['error']}"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    memory = f"{r['peak_memory_gb']:.1f}" if r.get("peak_memory_gb") is not None else "n/a"
    return (f"{label:<18}{r['micro_batch']:>6}{'on' if r['compile'] else 'off':>8}{r['sdpa']:>10}"
            f"{r['optimizer']:>8}{r['tokens_per_s']:>12,.0f}{mfu:>8}{memory:>9}"
            f"{100 * r['data_wait_share']:>9.2f}%{r['first_steps_s']:>10.1f}")


if __name__ == "__main__":
    main()
