"""CLI: `crawlgpt pretrain`, `crawlgpt evaluate`, `crawlgpt sample`.

Options map onto `train.config` fields; options whose best value depends on the hardware or the
preset default to "auto" (0 or unset) and are resolved here, in one place (`resolve_auto`), so that
`make pretrain` picks sensible values on a laptop CPU and on a GPU alike. Under torchrun every rank
runs this command; only rank 0 prints.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from pathlib import Path

import click

from formats.layout import run_dir, shards_dir, tokenizer_file
from cli.common import (checkpoint_option, data_option, device_option, fail, is_main, run_option,
                        tokenizer_option)
from cli.finetune import evaluate_instructions_cmd, sample_instruction_cmd
from model.presets import PRESETS
from train.defaults import (CPU_AUTO_STEPS, CPU_MICRO_BATCH, GPU_BATCH_TOKENS, GPU_MIN_STEPS, PRESET_LR,
                            TOKENS_PER_PARAM)
from cli.common import NON_NEGATIVE, POSITIVE, TEXT, given, sampling_options

PRESET_CHOICES = ["auto", *PRESETS]

def resolve_auto(preset: str, device: str, steps: int, tokens: int, batch_tokens: int, micro_batch: int,
                 seq_len: int, lr: float | None, compile_: bool | None, eval_every: int | None,
                 eval_tokens: int, log_every: int, corpus=None, world_size: int | None = None):
    """Fill in every "auto" option from the hardware, the preset and the corpus (`train.defaults`)."""
    from train.defaults import resolve_auto as resolve  # inside the command: keeps torch out of `crawlgpt --help`

    return resolve(preset, device, steps, tokens, batch_tokens, micro_batch, seq_len, lr, compile_, eval_every,
                   eval_tokens, log_every, corpus=corpus, world_size=world_size)


# --------------------------------------------------------------------------------------------------


@click.command("pretrain")
@data_option
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Token shards folder [default: DATA/shards].")
@run_option
@click.option("--preset", type=click.Choice(PRESET_CHOICES), default="auto", show_default=True,
              help="Model size; auto = small on CPU, gpt2-124m on GPU.")
@click.option("--steps", type=click.IntRange(min=0), default=0, show_default=True,
              help=f"Optimizer steps; 0 = auto ({CPU_AUTO_STEPS} on CPU, about ten minutes for `small` on 2 cores; "
                   f"on GPU one epoch of the train split, at most {TOKENS_PER_PARAM} tokens per parameter).")
@click.option("--tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train on this many tokens instead of giving --steps (steps = tokens / batch tokens).")
@click.option("--batch-tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help=f"Global batch in tokens per step, reached by gradient accumulation; 0 = auto "
                   f"(one micro-batch per rank on CPU; {GPU_BATCH_TOKENS:,} on GPU, halved while that gives "
                   f"fewer than {GPU_MIN_STEPS} steps).")
@click.option("--micro-batch", type=click.IntRange(min=0), default=0, show_default=True,
              help=f"Windows per device per forward pass; 0 = auto ({CPU_MICRO_BATCH} on CPU, by preset on GPU).")
@click.option("--seq-len", type=click.IntRange(min=0), default=0, show_default=True,
              help="Tokens per training window; 0 = the preset's context.")
@click.option("--lr", type=NON_NEGATIVE, default=None,
              help="Peak learning rate [default: by preset: " + ", ".join(f"{k} {v:g}" for k, v in PRESET_LR.items()) + "].")
@click.option("--min-lr", type=NON_NEGATIVE, default=None, help="Final learning rate of the cosine [default: lr / 10].")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None, help="Linear warmup steps [default: 5% of steps, at most 1000].")
@click.option("--weight-decay", type=NON_NEGATIVE, default=0.1, show_default=True, help="AdamW weight decay (matrices only).")
@click.option("--grad-clip", type=NON_NEGATIVE, default=1.0, show_default=True, help="Clip the gradient norm to this (0 = off).")
@click.option("--resume", is_flag=True, default=False, show_default=True,
              help="Continue from the newest checkpoint in DATA/runs/RUN (required if it has checkpoints).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the decoder blocks [default: on for CUDA, off otherwise].")
@device_option
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="bf16 autocast or fp32; auto = bf16 on CUDA, fp32 elsewhere.")
@click.option("--parallelism", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
              help="Under torchrun: ddp replicates the model, fsdp (FSDP2) shards it for models too big for one GPU.")
@click.option("--tp", type=int, default=1, show_default=True,
              help="Tensor-parallel ranks (split each block's heads and feed-forward); must divide the heads.")
@click.option("--sequence-parallel/--no-sequence-parallel", default=False, show_default=True,
              help="With --tp: split the norms and the residual stream along the sequence too (less memory).")
@click.option("--pp", type=int, default=1, show_default=True,
              help="Pipeline stages (split the blocks); the data-parallel size is world size / (tp x pp).")
@click.option("--pp-layers", default=None,
              help="Blocks per pipeline stage, comma-separated (e.g. 6,6,5,5) [default: an even split].")
@click.option("--pp-schedule", type=click.Choice(["gpipe", "1f1b"]), default="1f1b", show_default=True,
              help="Pipeline schedule: gpipe (all forwards, then all backwards) or 1f1b (less activation memory).")
@click.option("--microbatches", type=int, default=0, show_default=True,
              help="Pipeline micro-batches per micro-batch (must divide --micro-batch); 0 = --pp.")
@click.option("--activation-checkpointing", type=click.Choice(["none", "full", "selective"]), default="none",
              show_default=True, help="Recompute activations in the backward pass: every block's (full), or all "
                                      "but matmul and attention outputs (selective).")
@click.option("--checkpoint-format", type=click.Choice(["auto", "file", "dcp"]), default="auto", show_default=True,
              help="Checkpoints as one .pt file (file) or as a torch.distributed.checkpoint folder that every "
                   "rank writes its part of (dcp); auto = dcp under --tp/--pp, file otherwise.")
@click.option("--eval-every", type=click.IntRange(min=0), default=None,
              help="Validation loss (and a sample) every N steps, and at the end [default: a fifth of the steps].")
@click.option("--eval-tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help="Validation tokens per evaluation; 0 = auto (16,384 on CPU, 2,097,152 on GPU).")
@click.option("--sample-every", type=click.IntRange(min=0), default=None, help="Sample every N steps [default: --eval-every; 0 = never].")
@click.option("--prompt", type=TEXT, default="The", show_default=True, help="Fixed prompt of the training samples.")
@click.option("--sample-tokens", type=click.IntRange(min=0), default=48, show_default=True, help="Tokens per training sample.")
@click.option("--ckpt-every", type=click.IntRange(min=0), default=None,
              help="Checkpoint every N steps, at the end, and on SIGTERM/SIGINT [default: --eval-every].")
@click.option("--keep-last", type=click.IntRange(min=1), default=3, show_default=True, help="Checkpoints to keep.")
@click.option("--log-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Progress line and metrics record every N steps; 0 = auto (1 on CPU, 10 on GPU).")
@click.option("--seed", type=int, default=1337, show_default=True, help="Seed of initialisation and data order.")
@tokenizer_option
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True,
              help="Write TensorBoard events to DATA/runs/RUN/tensorboard (when tensorboard is installed).")
@click.option("--verify-shards/--no-verify-shards", default=True, show_default=True,
              help="Check every shard's sha256 against the manifest at start (slow for many GB).")
@click.option("--peak-tflops", type=POSITIVE, default=None,
              help="Device peak TFLOP/s for MFU [default: looked up from the GPU name; none on CPU].")
@click.option("--benchmark", "benchmarks", multiple=True, metavar="TASK",
              help="Score this zero-shot benchmark (piqa, lambada, hellaswag, ...) at every evaluation step, into "
                   "metrics.jsonl and loss.png (repeatable).")
@click.option("--benchmark-limit", type=int, default=500, show_default=True,
              help="Items of each --benchmark scored per evaluation; 0 = all.")
@click.option("--eval-dir", "benchmark_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("../shared/data/eval"), show_default=True, help="Folder of the --benchmark files.")
def pretrain_cmd(data: Path, shards: Path | None, run: str, preset: str, steps: int, tokens: int,
                 batch_tokens: int, micro_batch: int, seq_len: int, lr: float | None, min_lr: float | None,
                 warmup_steps: int | None, weight_decay: float, grad_clip: float, resume: bool,
                 compile_: bool | None, device: str, precision: str, parallelism: str, tp: int,
                 sequence_parallel: bool, pp: int,
                 pp_layers: str | None, pp_schedule: str, microbatches: int, activation_checkpointing: str,
                 checkpoint_format: str, eval_every: int | None,
                 eval_tokens: int, sample_every: int | None, prompt: str, sample_tokens: int,
                 ckpt_every: int | None, keep_last: int, log_every: int, seed: int, tokenizer_path: Path | None,
                 tensorboard: bool, verify_shards: bool, peak_tflops: float | None, benchmarks: tuple[str, ...],
                 benchmark_limit: int, benchmark_dir: Path) -> None:
    """Pretrain a GPT on DATA/shards; write DATA/runs/RUN/ (metrics.jsonl, loss.png, checkpoints/)."""
    from evals.scoring import benchmark_hook  # inside the command: keeps torch out of `crawlgpt --help`
    from train import TrainError, train
    from train.defaults import pretrain_config, read_corpus
    from train.config import ParallelConfig

    shards_path = shards or shards_dir(data)
    try:
        r = resolve_auto(preset, device, steps, tokens, batch_tokens, micro_batch, seq_len, lr, compile_,
                         eval_every, eval_tokens, log_every, corpus=read_corpus(shards_path),
                         world_size=max(1, int(os.environ.get("WORLD_SIZE", "1")) // (tp * pp)))
        if is_main():
            click.echo(f"pretrain: preset {r.preset}, {r.why_steps}, peak lr {r.lr:g}", err=True)
        config = pretrain_config(
            r, run_dir=run_dir(data, run), shards_dir=shards_path,
            tokenizer_path=tokenizer_path or tokenizer_file(data), device=device,
            precision=precision, parallelism=parallelism, resume=resume, seed=seed, seq_len=seq_len,
            min_lr=min_lr, warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
            sample_every=sample_every, prompt=prompt, sample_tokens=sample_tokens, ckpt_every=ckpt_every,
            keep_last=keep_last, tensorboard=tensorboard, verify_shards=verify_shards, peak_tflops=peak_tflops)
        config = config.replace(eval=dataclasses.replace(config.eval, benchmarks=benchmarks,
                                                         benchmark_limit=benchmark_limit or None,
                                                         benchmark_dir=str(benchmark_dir)))
        config = config.replace(parallel=ParallelConfig(  # train/parallel/, docs/parallelism.md
            tp=tp, sequence_parallel=sequence_parallel, pp=pp, pp_layers=_int_list(pp_layers), pp_schedule=pp_schedule,
            microbatches=microbatches, activation_checkpointing=activation_checkpointing,
            checkpoint_format=checkpoint_format))
        result = train(config, on_eval=benchmark_hook(config.eval, shards_path))
    except TrainError as err:
        fail(err)
    if not is_main():
        return
    rows = [("run", str(result.run_dir)), ("steps", f"{result.final_step:,} of {r.steps:,}"),
            ("parameters", f"{result.num_params:,}"),
            ("last training loss", f"{result.train_losses[-1][1]:.4f}" if result.train_losses else "n/a"),
            ("validation loss", f"{result.val_losses[-1][1]:.4f} (perplexity {math.exp(result.val_losses[-1][1]):.2f})"
             if result.val_losses else "n/a"),
            ("throughput", f"{result.tokens_per_s:,.0f} tokens/s"),
            ("checkpoint", str(result.checkpoint))]
    click.echo("\n" + "\n".join(f"{k:>20}  {v}" for k, v in rows))
    if result.interrupted:
        click.echo(f"stopped by a signal at step {result.final_step}; continue with the same command plus --resume",
                   err=True)
        raise SystemExit(128 + int(result.stop_signal or signal.SIGTERM))


def _int_list(text: str | None) -> tuple[int, ...] | None:
    from train.errors import TrainConfigError  # inside the command: keeps torch out of `crawlgpt --help`

    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise TrainConfigError("--pp-layers",
                               f"expected comma-separated block counts like 6,6,5,5, got {text!r}") from err


@click.command("evaluate")
@data_option
@run_option
@checkpoint_option
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Token shards to score [default: DATA/shards].")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True,
              help="Split of the shards to score.")
@click.option("--text", "text_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Score this UTF-8 text file instead of shards (needs the tokenizer).")
@click.option("--instructions", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Score the response tokens of this Alpaca/chat instruction file instead (docs/finetuning.md).")
@click.option("--template", type=click.Choice(["alpaca", "chat"]), default=None,
              help="With --instructions: the prompt template [default: the checkpoint's; alpaca for a base model].")
@tokenizer_option
@click.option("--seq-len", type=click.IntRange(min=0), default=0, show_default=True, help="Window length; 0 = the model's context.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per forward pass.")
@click.option("--max-tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help="Score at most this many tokens from the start of the split; 0 = all.")
@device_option
def evaluate_cmd(data: Path, run: str, checkpoint: Path | None, shards: Path | None, split: str,
                 text_path: Path | None, instructions: Path | None, template: str | None,
                 tokenizer_path: Path | None, seq_len: int, batch: int, max_tokens: int, device: str) -> None:
    """Loss and perplexity of a checkpoint on token shards, a text file, or instruction responses."""
    from train.distributed import resolve_device  # inside the command: keeps torch out of `crawlgpt --help`
    from train.errors import TrainError
    from train.evaluate import evaluate_checkpoint_on_shards, evaluate_checkpoint_on_text

    ckpt = checkpoint or run_dir(data, run)
    if instructions is not None:
        for name in ("seq_len", "max_tokens", "shards", "text_path"):
            if given(click.get_current_context(), name):
                flag = "--" + {"text_path": "text"}.get(name, name).replace("_", "-")
                raise click.UsageError(f"{flag} does not apply to --instructions: each example is scored whole, "
                                       f"up to the model's context; drop {flag}")

        return evaluate_instructions_cmd(ckpt, instructions, tokenizer_path or tokenizer_file(data),
                                         batch, device, template)
    try:
        dev = resolve_device(device)
        if text_path is not None:
            tok = tokenizer_path or tokenizer_file(data)
            result = evaluate_checkpoint_on_text(ckpt, text_path, tok, seq_len=seq_len or None, batch_size=batch,
                                                 device=dev)
            what = str(text_path)
        else:
            source = shards or shards_dir(data)
            result = evaluate_checkpoint_on_shards(ckpt, source, split=split, seq_len=seq_len or None,
                                                   batch_size=batch, max_tokens=max_tokens or None, device=dev)
            what = f"{source} ({split})"
    except TrainError as err:
        fail(err)
    rows = [("checkpoint", str(ckpt)), ("scored", what), ("tokens", f"{result.tokens:,}"),
            ("loss", f"{result.loss:.4f} nats/token"), ("bits per token", f"{result.loss / math.log(2):.4f}"),
            ("perplexity", f"{result.perplexity:.2f}")]
    click.echo("\n".join(f"{k:>15}  {v}" for k, v in rows))


@click.command("sample")
@data_option
@run_option
@checkpoint_option
@click.option("--prompt", type=TEXT, default="The", show_default=True, help="Text to continue.")
@click.option("--instruction", type=TEXT, default=None,
              help="Answer this instruction, formatted with the checkpoint's prompt template (instead of --prompt).")
@click.option("--input", "input_text", type=TEXT, default="",
              help="Input of --instruction (the Alpaca template's ### Input:).")
@sampling_options(max_new_tokens=200, temperature=0.8, top_k=50)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same text.")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True, help="Samples to draw (seeds seed, seed+1, ...).")
@tokenizer_option
@device_option
def sample_cmd(data: Path, run: str, checkpoint: Path | None, prompt: str, instruction: str | None, input_text: str,
               max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int, num_samples: int,
               tokenizer_path: Path | None, device: str) -> None:
    """Generate text from a checkpoint (stops at end-of-text)."""
    from train.distributed import resolve_device  # inside the command: keeps torch out of `crawlgpt --help`
    from train.errors import TrainError
    from train.evaluate import sample_text

    ckpt = checkpoint or run_dir(data, run)
    tok = tokenizer_path or tokenizer_file(data)
    if instruction is not None:
        return sample_instruction_cmd(ckpt, tok, instruction, input_text, max_new_tokens, temperature, top_k, top_p,
                                      seed, num_samples, device)
    try:
        dev = resolve_device(device)
        texts = sample_text(ckpt, prompt, tok, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k or None, top_p=top_p if top_p < 1 else None, seed=seed,
                            num_samples=num_samples, device=dev)
    except TrainError as err:
        fail(err)
    for i, text in enumerate(texts):
        if num_samples > 1:
            click.echo(f"--- sample {i + 1} (seed {seed + i})")
        click.echo(prompt + text)


def register(group: click.Group) -> None:
    group.add_command(pretrain_cmd)
    group.add_command(evaluate_cmd)
    group.add_command(sample_cmd)
