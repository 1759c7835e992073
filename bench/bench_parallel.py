"""Model parallelism on CPU: step time of TP=2 and PP=2 against DDP=2, side by side, `small` preset.

Every case is one `torchrun --nproc-per-node 2` job of `train.train` on the same synthetic token
shards (uniform random tokens, vocabulary 16,384), the same model (`small`: 6 blocks, 512 wide,
8 heads, context 256) and the same global batch (16 windows of 256 tokens per step): DDP=2 runs 8
windows per rank, TP=2 and PP=2 run all 16 on both ranks between them (PP cut into 4 pipeline
micro-batches). Evaluation, samples and checkpoints are off; the first `--warmup` steps are not
timed. On CPU with gloo this measures communication overhead: DDP all-reduces the gradients once
per step, TP all-reduces activations twice per block in the forward and twice in the backward, PP
sends activations between stages and idles in the pipeline bubble. The figures that matter for
choosing a layout are on GPUs with NVLink (see docs/parallelism.md).

    python bench/bench_parallel.py                      # all cases, prints a table
    python bench/bench_parallel.py --steps 8 --out bench/results/parallel.json

With `--gpu` (one CUDA device) it measures instead what the issue asks of an H200: tokens/s, MFU and
peak memory of the `1b` preset (bf16, compiled, context 2048) with activation checkpointing none,
selective and full, and for each option the largest preset whose step fits in memory:

    python bench/bench_parallel.py --gpu --out bench/results/parallel-gpu.json
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

VOCAB = 16384
SEQ = 256
GLOBAL_WINDOWS = 16

#: name -> (ParallelConfig fields, micro-batch per rank, --parallelism, what it is)
CASES = {
    "ddp2": ({}, GLOBAL_WINDOWS // 2, "ddp", "DDP=2 (peer)"),
    "tp2": ({"tp": 2}, GLOBAL_WINDOWS, "ddp", "TP=2"),
    "pp2-1f1b": ({"pp": 2, "pp_schedule": "1f1b", "microbatches": 4}, GLOBAL_WINDOWS, "ddp",
                 "PP=2, 1F1B, 4 micro-batches"),
    "pp2-gpipe": ({"pp": 2, "pp_schedule": "gpipe", "microbatches": 4}, GLOBAL_WINDOWS, "ddp",
                  "PP=2, GPipe, 4 micro-batches"),
    "ddp2-ac": ({"activation_checkpointing": "full"}, GLOBAL_WINDOWS // 2, "ddp", "DDP=2, full activation ckpt"),
}

RUNNER = """
import json, sys, time
import torch
from train import TrainConfig, train
torch.set_num_threads(int(sys.argv[3]))
config = TrainConfig.from_dict(json.load(open(sys.argv[1])))
stamps = [time.perf_counter()]
result = train(config, on_step=lambda step: stamps.append(time.perf_counter()))
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    json.dump({"stamps": stamps, "params": result.num_params}, open(sys.argv[2], "w"))
"""


def run_case(name: str, shards: Path, steps: int, threads: int) -> dict:
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
    from train.config import ParallelConfig

    parallel, micro, parallelism, _ = CASES[name]
    work = Path(tempfile.mkdtemp(prefix=f"bench-parallel-{name}-"))
    config = TrainConfig(
        run_dir=str(work / "run"), max_steps=steps, preset="small", device="cpu", parallelism=parallelism,
        global_batch_tokens=GLOBAL_WINDOWS * SEQ,
        data=DataConfig(shards_dir=str(shards), seq_len=SEQ, micro_batch_size=micro, prefetch_batches=2,
                        verify_checksums=False),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4),
        eval=EvalConfig(every_steps=0, sample_every_steps=0, max_tokens=4 * SEQ * GLOBAL_WINDOWS),
        checkpoint=CheckpointConfig(every_steps=0),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
        parallel=ParallelConfig(**parallel),
    )
    (work / "config.json").write_text(json.dumps(config.to_dict()))
    (work / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(work / "runner.py"), str(work / "config.json"), str(work / "out.json"), str(threads)],
                          capture_output=True, text=True, env=env, cwd=work)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    out = json.loads((work / "out.json").read_text())
    return {"stamps": out["stamps"], "params": out["params"], "wall_s": time.perf_counter() - t0}


def summarise(result: dict, warmup: int) -> dict:
    stamps = result["stamps"]
    # the first stamp is the end of setup; drop the final step (its checkpoint and last evaluation)
    step_times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:-1] or [stamps[-1] - stamps[0]]
    step_s = sorted(step_times)[len(step_times) // 2]  # median: robust to other processes on a shared machine
    return {"step_s": step_s, "tokens_per_s": GLOBAL_WINDOWS * SEQ / step_s, "steps_timed": len(step_times),
            "params": result["params"], "wall_s": result["wall_s"]}


GPU_PRESETS = ("gpt2-124m", "350m", "1b")
GPU_VOCAB = 50304
GPU_MICRO = 8


GPU_RUNNER = """
import json, sys, time
import torch
from train import TrainConfig, train
from train.metrics import read_metrics
config = TrainConfig.from_dict(json.load(open(sys.argv[1])))
stamps = [time.perf_counter()]
try:
    result = train(config, on_step=lambda step: stamps.append(time.perf_counter()))
except torch.OutOfMemoryError:
    json.dump({"oom": True}, open(sys.argv[2], "w"))
    raise SystemExit(0)
records = [r for r in read_metrics(config.run_dir + "/metrics.jsonl") if r["kind"] == "train"]
json.dump({"stamps": stamps, "params": result.num_params, "peak_memory_gb": (result.peak_memory_bytes or 0) / 1e9,
           "mfu": [r.get("mfu") for r in records]}, open(sys.argv[2], "w"))
"""


def run_gpu_case(preset: str, recompute: str, shards: Path, steps: int, device: str = "cuda") -> dict:
    """One process on one device; bf16 and compiled on CUDA. Returns the step stamps or {"oom": True}."""
    from model.gpt import PRESETS
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig
    from train.config import ParallelConfig

    work = Path(tempfile.mkdtemp(prefix=f"bench-parallel-gpu-{preset}-{recompute}-"))
    seq = PRESETS[preset]["max_seq_len"]
    on_cuda = device.startswith("cuda")
    config = TrainConfig(
        run_dir=str(work / "run"), max_steps=steps, preset=preset, device=device,
        precision="bf16" if on_cuda else "fp32", compile=on_cuda, global_batch_tokens=GPU_MICRO * seq,
        data=DataConfig(shards_dir=str(shards), seq_len=seq, micro_batch_size=GPU_MICRO, prefetch_batches=4,
                        verify_checksums=False),
        optim=OptimConfig(lr=3e-4, min_lr=3e-5),
        eval=EvalConfig(every_steps=0, sample_every_steps=0, max_tokens=4 * GPU_MICRO * seq),
        checkpoint=CheckpointConfig(every_steps=0),
        log=LogConfig(every_steps=1, tensorboard=False, plot=False),
        parallel=ParallelConfig(activation_checkpointing=recompute),
    )
    (work / "config.json").write_text(json.dumps(config.to_dict()))
    (work / "runner.py").write_text(GPU_RUNNER)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(work / "runner.py"), str(work / "config.json"), str(work / "out.json")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=work)
    if proc.returncode != 0 or not (work / "out.json").is_file():
        print(proc.stderr[-4000:], file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    out = json.loads((work / "out.json").read_text())
    if out.get("oom"):
        return {"oom": True}
    stamps = out["stamps"]
    step_times = [b - a for a, b in zip(stamps, stamps[1:])][2:-1] or [stamps[-1] - stamps[0]]
    step_s = sorted(step_times)[len(step_times) // 2]
    mfus = [m for m in out["mfu"][2:-1] if m is not None]
    return {"step_s": step_s, "tokens_per_s": GPU_MICRO * seq / step_s, "mfu": sorted(mfus)[len(mfus) // 2] if mfus
            else None, "peak_memory_gb": out["peak_memory_gb"], "params": out["params"],
            "wall_s": time.perf_counter() - t0}


def main_gpu(args: argparse.Namespace) -> None:
    from bench_train import write_random_shards

    shards = write_random_shards(Path(tempfile.mkdtemp(prefix="bench-parallel-gpu-shards-")) / "shards", GPU_VOCAB,
                                 train_tokens=20_000_000, val_tokens=200_000)
    presets = args.gpu_presets.split(",")
    results: dict[str, dict] = {}
    for recompute in ("none", "selective", "full"):
        for preset in presets:
            print(f"{preset}, activation checkpointing {recompute} ...", file=sys.stderr, flush=True)
            results[f"{preset}/{recompute}"] = run_gpu_case(preset, recompute, shards, args.steps, args.device)
    precision = "bf16, compiled" if args.device.startswith("cuda") else "fp32"
    print(f"\none device ({args.device}), micro-batch {GPU_MICRO} at each preset's context, {precision}\n")
    print(f"{'preset':<11}{'recompute':<11}{'tokens/s':>10}{'MFU':>7}{'peak GB':>9}")
    for key, r in results.items():
        preset, recompute = key.split("/")
        if "step_s" not in r:
            print(f"{preset:<11}{recompute:<11}  {'out of memory' if r.get('oom') else r.get('error')}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{preset:<11}{recompute:<11}{r['tokens_per_s']:>10,.0f}{mfu:>7}{r['peak_memory_gb']:>9.1f}")
    for recompute in ("none", "selective", "full"):
        fits = [p for p in presets if "step_s" in results[f"{p}/{recompute}"]]
        print(f"largest preset that fits with activation checkpointing {recompute}: {fits[-1] if fits else 'none'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "device": args.device, "results": results}, indent=2))
    print(f"\nwritten {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="Optimizer steps per case (default 8).")
    parser.add_argument("--warmup", type=int, default=2, help="Leading steps not timed (default 2).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1: 2 processes "
                                                               "on 2 cores).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds over all cases; the best of each is kept "
                                                                "(default 2).")
    parser.add_argument("--cases", default=",".join(CASES), help=f"Comma-separated subset of {', '.join(CASES)}.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "parallel.json",
                        help="JSON results file (default bench/results/parallel.json).")
    parser.add_argument("--gpu", action="store_true", help="Measure one CUDA device instead (see above).")
    parser.add_argument("--gpu-presets", default=",".join(GPU_PRESETS),
                        help=f"Presets of --gpu, smallest first (default {','.join(GPU_PRESETS)}).")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of --gpu's code
    args = parser.parse_args()
    if args.gpu:
        main_gpu(args)
        return

    from bench_train import write_random_shards

    shards = write_random_shards(Path(tempfile.mkdtemp(prefix="bench-parallel-shards-")) / "shards", VOCAB,
                                 train_tokens=2_000_000, val_tokens=50_000)
    results: dict[str, dict] = {}
    for round_ in range(args.repeats):  # rounds interleave the cases, so a busy spell hits them alike
        for name in args.cases.split(","):
            print(f"round {round_ + 1}: {name} ...", file=sys.stderr, flush=True)
            raw = run_case(name, shards, args.steps, args.threads)
            r = raw if "error" in raw else summarise(raw, args.warmup)
            best = results.get(name)
            if best is None or "error" in best or ("error" not in r and r["step_s"] < best["step_s"]):
                results[name] = r
    peer = results.get("ddp2", {}).get("step_s")
    print(f"\nsmall preset, global batch {GLOBAL_WINDOWS} x {SEQ} tokens, 2 gloo processes on CPU, "
          f"{args.threads} thread(s) each, median of {args.steps - args.warmup - 1} steps, best of "
          f"{args.repeats} rounds\n")
    print(f"{'case':<34}{'step s':>9}{'tokens/s':>11}{'vs DDP=2':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{CASES[name][3]:<34}  error: {r['error']}")
            continue
        ratio = f"{r['step_s'] / peer:.2f}x" if peer else "n/a"
        print(f"{CASES[name][3]:<34}{r['step_s']:>9.2f}{r['tokens_per_s']:>11,.0f}{ratio:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                                    "repeats": args.repeats,
                                    "results": results}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
