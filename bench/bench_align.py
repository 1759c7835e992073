"""Alignment benchmarks and the end-to-end measurement on the shared preference data.

`ppo`: where a PPO iteration's time goes (generation, reward-model scoring, the forward passes that
prepare the rollout, and the minibatch updates), and generation tokens/s with the KV cache against
the same sampling without it (the peer: every new token recomputes the whole sequence). Random
weights: speed does not depend on what the model learned.

`real`: reward model, DPO and PPO on ../shared/data/instruct/instruction-data-with-preference.json.
There is no pretrained model in the shared data, so the script first makes one: a BPE tokenizer
trained on the reference documents and the instructions, then a small GPT trained from scratch on
the 1,100 alpaca-formatted instruction examples (instruction-data.json) — a stand-in for `crawlgpt
sft` (its checkpoint is kind "pretrain", so the alignment commands warn). Then: reward-model validation
accuracy before/after; DPO implicit-reward validation accuracy before/after; PPO against that reward
model; win rates of the PPO and DPO policies against the stand-in on held-out prompts, judged by the
reward model, with the KL each paid, and sample answers side by side.

    python bench/bench_align.py ppo  [--preset small] [--out bench/results/align_ppo.json]
    python bench/bench_align.py real [--work /tmp/align-real] [--sft-steps 300] ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

log = logging.getLogger("bench_align")


# ------------------------------------------------------------------------------------------------
# PPO: time split and KV cache


def bench_ppo(args) -> dict:
    import torch

    from model.gpt import GPT, preset_config
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
    from train.checkpoint import save_checkpoint
    from train.metrics import read_metrics
    from train.align.ppo import PPOConfig, PPOObjective, generate_responses
    from train.align.reward import RewardModel, split_reward_state

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    vocab = 4096
    config = preset_config(args.preset, vocab)
    data = {"vocab_size": vocab, "eot_id": vocab - 1, "tokenizer_hash": "bench"}
    torch.manual_seed(0)
    policy_path = save_checkpoint(work / "policy.pt", {"step": 0, "model": GPT(config).state_dict(),
                                                       "model_config": config.to_dict(), "kind": "sft", "data": data})
    rm_path = save_checkpoint(work / "rm.pt", {"step": 0, **split_reward_state(RewardModel(config).state_dict()),
                                               "model_config": config.to_dict(), "kind": "reward", "data": data})
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab - 1, (args.prompt_len,), generator=g).tolist() for _ in range(64)]

    # -- generation with and without the KV cache (no end-of-text: every row runs to max_new_tokens)
    model = GPT(config).eval()
    batch = prompts[:args.rollout_prompts]
    gen = {}
    for use_cache in (True, False):
        gen_g = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        out = generate_responses(model, batch, args.max_new_tokens, 0.7, None, gen_g, eot_id=-1,
                                 device=torch.device("cpu"), use_cache=use_cache)
        elapsed = time.perf_counter() - t0
        gen["cache" if use_cache else "no_cache"] = sum(len(r) for r in out) / elapsed
    gen["speedup"] = gen["cache"] / gen["no_cache"]

    # -- PPO iterations on the loop: split of the iteration time
    cfg = PPOConfig(rollout_prompts=args.rollout_prompts, minibatch=args.minibatch, epochs=4,
                    max_new_tokens=args.max_new_tokens, val_prompts=1)
    objective = PPOObjective(policy_path, cfg, reward_checkpoint=rm_path, prompt_ids=(prompts[:48], prompts[48:]))
    steps = args.iterations * cfg.steps_per_iteration
    stamps = []
    train_cfg = TrainConfig(run_dir=str(work / "run"), max_steps=steps, preset="tiny", handle_signals=False,
                            data=DataConfig(micro_batch_size=args.minibatch, seed=0, prefetch_batches=0),
                            optim=OptimConfig(lr=1e-5, min_lr=1e-5, warmup_steps=0),
                            eval=EvalConfig(every_steps=0, sample_every_steps=0),
                            checkpoint=CheckpointConfig(every_steps=0), log=LogConfig(every_steps=1, tensorboard=False,
                                                                                      plot=False))
    import shutil
    shutil.rmtree(work / "run", ignore_errors=True)
    start = time.perf_counter()
    train(train_cfg, on_step=lambda s: stamps.append(time.perf_counter()), objective=objective)
    records = [r for r in read_metrics(work / "run" / "metrics.jsonl") if r["kind"] == "train"]
    per_iter = cfg.steps_per_iteration
    iterations = []
    for i in range(1, args.iterations):  # skip the first iteration (warm-up)
        rec = records[i * per_iter]  # first step of iteration i + 1 carries its rollout's stats
        total = stamps[(i + 1) * per_iter - 1] - stamps[i * per_iter - 1]
        rollout = rec["gen_s"] + rec["score_s"] + rec["prepare_s"]
        iterations.append({"total_s": total, "gen_s": rec["gen_s"], "score_s": rec["score_s"],
                           "prepare_s": rec["prepare_s"], "update_s": total - rollout,
                           "gen_tokens_per_s": rec["gen_tokens_per_s"]})
    del start
    mean = {k: sum(it[k] for it in iterations) / len(iterations) for k in iterations[0]}
    return {"preset": args.preset, "threads": args.threads, "rollout_prompts": args.rollout_prompts,
            "max_new_tokens": args.max_new_tokens, "prompt_len": args.prompt_len, "generation_tokens_per_s": gen,
            "iteration_mean": mean, "iterations_measured": len(iterations)}


def print_ppo(r: dict) -> None:
    g, m = r["generation_tokens_per_s"], r["iteration_mean"]
    print(f"PPO, preset {r['preset']}, {r['rollout_prompts']} prompts of {r['prompt_len']} tokens, "
          f"{r['max_new_tokens']} new tokens, {r['threads']} threads")
    print(f"  generation tokens/s: KV cache {g['cache']:,.0f}, without {g['no_cache']:,.0f} "
          f"(x{g['speedup']:.2f})")
    print(f"  one iteration: {m['total_s']:.2f} s = generation {m['gen_s']:.2f} s "
          f"({100 * m['gen_s'] / m['total_s']:.0f}%), scoring {m['score_s']:.2f} s "
          f"({100 * m['score_s'] / m['total_s']:.0f}%), rollout forward passes {m['prepare_s']:.2f} s "
          f"({100 * m['prepare_s'] / m['total_s']:.0f}%), updates {m['update_s']:.2f} s "
          f"({100 * m['update_s'] / m['total_s']:.0f}%)")


# ------------------------------------------------------------------------------------------------
# The shared preference data, end to end


def make_tokenizer(path: Path, vocab_size: int) -> Path:
    import zstandard
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [json.loads(line)["text"] for line in zstandard.ZstdDecompressor().stream_reader(
        open(SHARED / "reference" / "reference-dev.jsonl.zst", "rb")).read().decode().splitlines()[:1500]]
    for rec in json.loads((SHARED / "instruct" / "instruction-data.json").read_text()):
        texts.append(f"{rec['instruction']}\n{rec['input']}\n{rec['output']}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_sft_standin(work: Path, tok_path: Path, args) -> Path:
    """A GPT trained from scratch on the alpaca-formatted instruction examples (prompt + output + eot)."""
    import numpy as np
    from tokenizers import Tokenizer

    from formats.token_shards import write_token_shards
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
    from train.evaluate import tokenizer_hash
    from train.tune.templates import PromptTemplate

    tok = Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id("<|endoftext|>")
    template = PromptTemplate()
    docs = []
    for rec in json.loads((SHARED / "instruct" / "instruction-data.json").read_text()):
        text = template.prompt(rec["instruction"], rec["input"]) + rec["output"]
        docs.append(np.array([eot] + tok.encode(text).ids + [eot]))
    # Documents are concatenated in the shards: windows of 256 see a whole example and part of the next.
    write_token_shards(work / "sft-shards", {"train": docs[:1000], "val": docs[1000:]}, vocab_size=tok.get_vocab_size(),
                       eot_id=eot, tokenizer_hash=tokenizer_hash(tok_path))
    run = work / "runs" / "real-sft"
    config = TrainConfig(
        run_dir=str(run), max_steps=args.sft_steps, preset="small", resume=True,
        model_overrides=dict(n_layer=args.layers, d_model=args.width, n_head=args.width // 64),
        data=DataConfig(shards_dir=str(work / "sft-shards"), seq_len=256, micro_batch_size=8, seed=0),
        global_batch_tokens=8 * 256, optim=OptimConfig(lr=2e-3, min_lr=2e-4),
        eval=EvalConfig(every_steps=max(1, args.sft_steps // 4), sample_every_steps=0, max_tokens=16384),
        checkpoint=CheckpointConfig(every_steps=max(1, args.sft_steps // 4)), log=LogConfig(every_steps=10,
                                                                                            tensorboard=False))
    result = train(config)
    log.info("sft stand-in: val loss %.3f after %d steps", result.val_losses[-1][1], result.final_step)
    return run


def cli(*argv: str) -> str:
    from click.testing import CliRunner

    from cli import main

    t0 = time.perf_counter()
    out = CliRunner().invoke(main, list(argv), catch_exceptions=False)
    if out.exit_code != 0:
        raise SystemExit(f"crawlgpt {' '.join(argv)} failed:\n{out.output}")
    log.info("crawlgpt %s: %.0f s", argv[0], time.perf_counter() - t0)
    return out.output


def bench_real(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    tok = work / "tokenizer" / "tokenizer.json"
    if not tok.is_file():
        make_tokenizer(tok, args.vocab)
    timings = {}
    t0 = time.perf_counter()
    make_sft_standin(work, tok, args)
    timings["sft_s"] = time.perf_counter() - t0
    pairs = str(SHARED / "instruct" / "instruction-data-with-preference.json")
    common = ["--data", str(work), "--run", "real", "--tokenizer", str(tok), "--resume", "--eval-every", "0"]
    out = {}
    t0 = time.perf_counter()
    out["reward"] = cli("reward-train", *common, "--pairs", pairs, "--steps", str(args.reward_steps), "--lr", "3e-4",
                        "--batch-pairs", "16", "--micro-batch", "8", "--max-len", "256")
    timings["reward_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["dpo"] = cli("dpo", *common, "--pairs", pairs, "--steps", str(args.dpo_steps), "--lr", "1e-4",
                     "--batch-pairs", "16", "--micro-batch", "8", "--max-len", "256")
    timings["dpo_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["ppo"] = cli("ppo", *common, "--prompts", pairs, "--iterations", str(args.ppo_iterations),
                     "--rollout-prompts", "16", "--minibatch", "8", "--micro-batch", "8", "--epochs", "4",
                     "--max-new-tokens", "48", "--lr", "3e-5", "--val-prompts", "32")
    timings["ppo_s"] = time.perf_counter() - t0
    out["compare"] = cli("align-compare", "--data", str(work), "--run", "real", "--tokenizer", str(tok),
                         "--prompts", pairs, "--num-prompts", str(args.compare_prompts), "--max-new-tokens", "48",
                         "--show", "3")
    for name, text in out.items():
        print(f"=== {name}\n{text}")
    print("timings (s):", {k: round(v) for k, v in timings.items()})
    return {"outputs": out, "timings": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ppo")
    p.add_argument("--preset", default="small")
    p.add_argument("--rollout-prompts", type=int, default=8)
    p.add_argument("--minibatch", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/bench-align-ppo")
    p.add_argument("--out", default=None)
    r = sub.add_parser("real")
    r.add_argument("--work", default="/tmp/bench-align-real")
    r.add_argument("--vocab", type=int, default=4096)
    r.add_argument("--layers", type=int, default=2)
    r.add_argument("--width", type=int, default=128)
    r.add_argument("--sft-steps", type=int, default=200)
    r.add_argument("--reward-steps", type=int, default=100)
    r.add_argument("--dpo-steps", type=int, default=50)
    r.add_argument("--ppo-iterations", type=int, default=10)
    r.add_argument("--compare-prompts", type=int, default=64)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = bench_ppo(args) if args.what == "ppo" else bench_real(args)
    if args.what == "ppo":
        print_ppo(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
