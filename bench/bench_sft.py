"""Fine-tuning: SFT throughput against pretraining of the same model, response loss before and after
SFT, and classification against a fastText baseline on the same split.

Three parts (all by default), each on a pretrained checkpoint of the dev crawl (`--data DATA --run RUN`,
e.g. what `make pretrain` leaves) and the data in ../shared/data:

- throughput: `train.train` for --steps steps with the pretraining objective (token shards) and with
  the SFT objective (the instruction file, packed and bucketed), same model, micro-batch and row length,
  one after the other on this machine. Reports all tokens/s (real tokens, padding not counted),
  response tokens/s, and the ratio of SFT to pretraining (target: all tokens >= 0.9x).
- sft: `run_sft` for --sft-epochs epochs: validation response loss before and after, five held-out
  answers before and after, time.
- classify: `run_classify` on sms-spam.tsv: test accuracy and spam F1 of the fine-tuned model and of
  fastText on the same split, and the time of each.

    python bench/bench_sft.py --data data --run default
    python bench/bench_sft.py --data data --run default --parts throughput --steps 20
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def train_config(run_dir: Path, steps: int, micro: int, seq_len: int, shards: str = "", lr: float = 1e-4,
                 eval_every: int = 0, device: str = "cpu"):
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig

    return TrainConfig(
        run_dir=str(run_dir), max_steps=steps, preset="auto", global_batch_tokens=micro * seq_len, device=device,
        data=DataConfig(shards_dir=shards, seq_len=seq_len, micro_batch_size=micro, prefetch_batches=2,
                        verify_checksums=False),
        optim=OptimConfig(lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 20)),
        eval=EvalConfig(every_steps=eval_every, max_tokens=micro * seq_len, sample_every_steps=0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=1),
        log=LogConfig(every_steps=max(1, steps // 10), tensorboard=False, plot=False))


def throughput(args, base: Path, tokenizer: Path, out: dict) -> None:
    """Pretraining vs SFT tokens/s of the same model (the first log interval, warm-up, is not counted)."""
    from model.gpt import GPTConfig
    from train import train
    from train.checkpoint import load_checkpoint, resolve_checkpoint
    from train.objective import PretrainObjective
    from train.tune.sft import SFTConfig, SFTObjective

    payload = load_checkpoint(resolve_checkpoint(base))
    config = GPTConfig.from_dict(payload["model_config"])
    seq_len = config.max_seq_len

    class PretrainFromBase(PretrainObjective):
        """Pretraining objective with the base model's shape (the preset does not matter)."""

        def model_config(self, preset_config):
            return config

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("pretrain", lambda: PretrainFromBase(str(args.data / "shards")))]
        for batching in ("pack", "bucket"):
            sft = SFTConfig(base_checkpoint=str(base), instructions=str(args.instructions),
                            tokenizer_path=str(tokenizer), batching=batching, num_responses=0)
            runs.append((f"sft-{batching}", lambda sft=sft: SFTObjective(sft)))
        for name, make in runs:
            objective = make()
            cfg = train_config(Path(tmp) / name, args.steps, args.micro, seq_len,
                               shards=str(args.data / "shards"), device=args.device)
            result = train(cfg, objective=objective)
            row = {"tokens_per_s": result.tokens_per_s}
            if name.startswith("sft"):
                data = objective.train_data
                real = sum(len(t) - 1 for t in data.tokens)
                trained = sum(int(m[1:].sum()) for m in data.trained)
                row["response_share"] = trained / real
                row["response_tokens_per_s"] = result.tokens_per_s * trained / real
                loader = objective.make_loader(None, seq_len)
                real = numel = 0
                for _ in range(len(loader.plan(0)) // args.micro):  # one epoch
                    inputs, _, n = loader.next_batch()
                    real += n
                    numel += inputs.numel()
                row["fill"] = real / numel  # share of batch positions that are real tokens
            rows[name] = row
    base_tps = rows["pretrain"]["tokens_per_s"]
    for name, row in rows.items():
        row["ratio_to_pretrain"] = row["tokens_per_s"] / base_tps if base_tps else None
    out["throughput"] = {"model": config.to_dict(), "steps": args.steps, "micro_batch": args.micro,
                         "seq_len": seq_len, "rows": rows}
    print(f"\nthroughput: {args.steps} steps, micro-batch {args.micro} x {seq_len} tokens, "
          f"{config.n_layer} layers x {config.d_model} wide, device {args.device}")
    print(f"{'run':<14}{'all tokens/s':>14}{'response tok/s':>16}{'batch fill':>12}{'vs pretrain':>13}")
    for name, row in rows.items():
        resp = f"{row['response_tokens_per_s']:,.0f}" if "response_tokens_per_s" in row else "-"
        fill = f"{row['fill']:.1%}" if "fill" in row else "100%"
        print(f"{name:<14}{row['tokens_per_s']:>14,.0f}{resp:>16}{fill:>12}{row['ratio_to_pretrain']:>12.2f}x")


def sft_quality(args, base: Path, tokenizer: Path, out: dict) -> None:
    from train.tune.sft import SFTConfig, SFTObjective, run_sft

    run_dir = args.data / "runs" / "bench-sft"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    sft = SFTConfig(base_checkpoint=str(base), instructions=str(args.instructions), tokenizer_path=str(tokenizer),
                    num_responses=5, max_new_tokens=64)
    objective = SFTObjective(sft)
    objective.prepare()
    seq_len = objective.prepared_seq_len
    cfg = train_config(run_dir, 1, args.micro, seq_len, lr=args.sft_lr, eval_every=0, device=args.device)
    cfg = cfg.replace(global_batch_tokens=args.sft_rows * seq_len)
    start = time.perf_counter()
    result = run_sft(cfg, sft, epochs=args.sft_epochs, objective=objective)
    seconds = time.perf_counter() - start
    answers = [json.loads(line) for line in (run_dir / "responses.jsonl").read_text().splitlines()]
    out["sft"] = {"before": result.before, "after": result.after, "steps": result.train.final_step,
                  "epochs": args.sft_epochs, "seconds": seconds, "counts": result.counts, "answers": answers}
    print(f"\nSFT: {args.sft_epochs} epochs, {result.train.final_step} steps, {seconds:.0f}s; "
          f"{result.counts['train_examples']} train / {result.counts['val_examples']} validation examples "
          f"({result.counts['too_long_skipped']} longer than the context skipped)")
    print(f"validation response loss: before {result.before['val_response_loss']:.3f} "
          f"(ppl {result.before['val_response_ppl']:.1f}), after {result.after['val_response_loss']:.3f} "
          f"(ppl {result.after['val_response_ppl']:.1f})")
    for a in answers:
        prompt = a["messages"][-1]["content"] if "messages" in a else (a["instruction"] + " " + a["input"]).strip()
        print(f"- prompt: {prompt[:100]!r}\n  reference: {a['reference'][:100]!r}\n"
              f"  before: {a['before_greedy'][:100]!r}\n  after:  {a['after_greedy'][:100]!r}")


def classification(args, base: Path, tokenizer: Path, out: dict) -> None:
    from train.tune.classify import ClassifyConfig, run_classify

    run_dir = args.data / "runs" / "bench-classify"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    config = ClassifyConfig(base_checkpoint=str(base), data_path=str(args.labelled), tokenizer_path=str(tokenizer),
                            train_blocks=args.train_blocks)
    seq_len = args.classify_seq_len
    cfg = train_config(run_dir, 1, args.classify_batch, seq_len, lr=args.classify_lr, device=args.device)
    start = time.perf_counter()
    result = run_classify(cfg, config, epochs=args.classify_epochs)
    seconds = time.perf_counter() - start - (result.baseline_seconds or 0)
    spam = result.report.classes.index("spam") if "spam" in result.report.classes else -1
    rows = {"fine-tuned GPT": (result.report, seconds), "fastText": (result.baseline, result.baseline_seconds)}
    out["classify"] = {name: {**rep.to_dict(), "seconds": s} for name, (rep, s) in rows.items() if rep is not None}
    out["classify"]["class_table"] = result.class_table
    print(f"\nclassification: {args.labelled.name}, {args.classify_epochs} epochs, train blocks "
          f"{args.train_blocks or 'all'}; test split {sum(result.class_table['test'].values()):,} texts")
    print(f"{'model':<16}{'accuracy':>10}{'F1 (spam)':>11}{'macro F1':>10}{'time':>9}")
    for name, (rep, s) in rows.items():
        if rep is None:
            continue
        f1 = rep.f1[spam] if spam >= 0 else float("nan")
        print(f"{name:<16}{rep.accuracy:>10.4f}{f1:>11.4f}{sum(rep.f1) / len(rep.f1):>10.4f}{s:>8.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "data", help="DATA folder (shards/, tokenizer/, runs/).")
    parser.add_argument("--run", default="default", help="Pretrained run under DATA/runs to fine-tune.")
    parser.add_argument("--parts", default="throughput,sft,classify", help="Comma-separated parts to run.")
    parser.add_argument("--instructions", type=Path, default=SHARED / "instruct" / "instruction-data.json")
    parser.add_argument("--labelled", type=Path, default=SHARED / "classify" / "sms-spam.tsv")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="Steps per throughput run.")
    parser.add_argument("--micro", type=int, default=8, help="Rows per micro-batch.")
    parser.add_argument("--sft-epochs", type=float, default=2.0)
    parser.add_argument("--sft-rows", type=int, default=8, help="Rows per SFT step.")
    parser.add_argument("--sft-lr", type=float, default=3e-4)
    parser.add_argument("--classify-epochs", type=float, default=1.0)
    parser.add_argument("--classify-batch", type=int, default=16)
    parser.add_argument("--classify-seq-len", type=int, default=128)
    parser.add_argument("--classify-lr", type=float, default=1e-4)
    parser.add_argument("--train-blocks", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sft.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    base = args.data / "runs" / args.run
    tokenizer = args.data / "tokenizer" / "tokenizer.json"
    if not base.is_dir() or not tokenizer.is_file():
        print(f"skipping: needs a pretrained run {base} and {tokenizer}; run `make pretrain` (or pass --data/--run)")
        return
    out: dict = {"torch_threads": torch.get_num_threads()}
    parts = args.parts.split(",")
    if "throughput" in parts:
        throughput(args, base, tokenizer, out)
    if "sft" in parts:
        if not args.instructions.is_file():
            print(f"skipping sft: {args.instructions} is absent")
        else:
            sft_quality(args, base, tokenizer, out)
    if "classify" in parts:
        if not args.labelled.is_file():
            print(f"skipping classify: {args.labelled} is absent")
        else:
            classification(args, base, tokenizer, out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
