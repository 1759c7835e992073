"""CLI: `crawlgpt sft` (instruction fine-tuning), `crawlgpt chat`, `crawlgpt classify-train`, `crawlgpt classify`.

Every command reads a checkpoint of `crawlgpt pretrain` (or of an earlier fine-tuning) and its
tokenizer; training commands run `train.loop.train` with their own objective (see train/tune/sft.py and
train/tune/classify.py), so options shared with `pretrain` mean the same here. `evaluate --instructions`
and `sample --instruction` (in training.py) call `evaluate_instructions_cmd` and `instruction_prompt`
from this module.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from cli.training import (
    _fail,
    _is_main_process,
    checkpoint_option,
    data_option,
    device_option,
    run_option,
    tokenizer_option,
)

#: The book's instruction data, beside the checkout (what `make sft` uses unless INSTRUCT= is given).
DEFAULT_INSTRUCTIONS = "../shared/data/instruct/instruction-data.json"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)


def _resolve_device(device: str):
    import os

    from train.distributed import resolve_device

    return resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))


# --------------------------------------------------------------------------------------------------
# sft


@click.command("sft")
@data_option
@run_option
@checkpoint_option
@click.option("--instructions", type=click.Path(dir_okay=False, path_type=Path), default=Path(DEFAULT_INSTRUCTIONS),
              show_default=True, help="Alpaca JSON/JSONL (instruction, input, output) or chat JSONL (messages).")
@click.option("--out-run", default=None, help="Run name of the fine-tuned model [default: RUN-sft].")
@click.option("--template", type=click.Choice(["alpaca", "chat"]), default=None,
              help="Prompt template [default: the base checkpoint's; alpaca for a pretrained model].")
@click.option("--train-on-prompt", is_flag=True, default=False,
              help="Also train on prompt tokens (default: the loss covers response tokens only).")
@click.option("--val-share", type=float, default=0.1, show_default=True,
              help="Share of examples held out for validation (chosen by a hash of each example).")
@click.option("--batching", type=click.Choice(["pack", "bucket"]), default="pack", show_default=True,
              help="pack: several examples per row (little padding); bucket: one per row, similar lengths together.")
@click.option("--too-long", type=click.Choice(["skip", "truncate"]), default="skip", show_default=True,
              help="Examples longer than --seq-len: skip them or cut their end (counted either way).")
@click.option("--epochs", type=float, default=2.0, show_default=True,
              help="Passes over the training examples (ignored when --steps is given).")
@click.option("--steps", type=int, default=0, show_default=True, help="Optimizer steps; 0 = from --epochs.")
@click.option("--batch-rows", type=int, default=8, show_default=True,
              help="Rows of --seq-len tokens per optimizer step (all ranks), reached by gradient accumulation.")
@click.option("--micro-batch", type=int, default=0, show_default=True,
              help="Rows per device per forward pass; 0 = --batch-rows (at most 8 on CPU).")
@click.option("--seq-len", type=int, default=0, show_default=True, help="Tokens per row; 0 = the model's context.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate.")
@click.option("--min-lr", type=float, default=None, help="Final learning rate of the cosine [default: lr / 10].")
@click.option("--warmup-steps", type=int, default=None, help="Linear warmup steps [default: 5% of steps].")
@click.option("--weight-decay", type=float, default=0.1, show_default=True, help="AdamW weight decay (matrices only).")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Clip the gradient norm to this (0 = off).")
@click.option("--resume", is_flag=True, default=False,
              help="Continue from the newest checkpoint in DATA/runs/OUT_RUN (required if it has checkpoints).")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="torch.compile the decoder blocks.")
@device_option
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="bf16 autocast or fp32; auto = bf16 on CUDA, fp32 elsewhere.")
@click.option("--parallelism", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
              help="Under torchrun: ddp or fsdp (FSDP2).")
@click.option("--eval-every", type=int, default=None,
              help="Validation response loss every N steps and at the end [default: a fifth of the steps].")
@click.option("--ckpt-every", type=int, default=None, help="Checkpoint every N steps [default: --eval-every].")
@click.option("--keep-last", type=int, default=2, show_default=True, help="Checkpoints to keep.")
@click.option("--log-every", type=int, default=1, show_default=True, help="Progress line every N steps.")
@click.option("--responses", type=int, default=5, show_default=True,
              help="Held-out instructions answered before and after fine-tuning (responses.jsonl).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Tokens per answer in responses.jsonl.")
@click.option("--seed", type=int, default=1337, show_default=True, help="Seed of the example order.")
@tokenizer_option
@click.option("--tensorboard/--no-tensorboard", default=False, show_default=True,
              help="Write TensorBoard events to the run folder.")
def sft_cmd(data: Path, run: str, checkpoint: Path | None, instructions: Path, out_run: str | None,
            template: str | None, train_on_prompt: bool, val_share: float, batching: str, too_long: str,
            epochs: float, steps: int, batch_rows: int, micro_batch: int, seq_len: int, lr: float,
            min_lr: float | None, warmup_steps: int | None, weight_decay: float, grad_clip: float, resume: bool,
            compile_: bool, device: str, precision: str, parallelism: str, eval_every: int | None,
            ckpt_every: int | None, keep_last: int, log_every: int, responses: int, max_new_tokens: int,
            seed: int, tokenizer_path: Path | None, tensorboard: bool) -> None:
    """Instruction fine-tuning of a checkpoint: loss on response tokens only; writes DATA/runs/OUT_RUN/
    (checkpoints, metrics.jsonl, loss.png, responses.jsonl, sft-summary.json)."""
    import os

    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, TrainError
    from train.tune.sft import SFTConfig, SFTObjective, run_sft, steps_for_epochs

    base = checkpoint or data / "runs" / run
    out_dir = data / "runs" / (out_run or f"{run}-sft")
    tokenizer = tokenizer_path or data / "tokenizer" / "tokenizer.json"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        dev = _resolve_device(device)
        micro = micro_batch or (batch_rows if dev.type == "cuda" else min(batch_rows, 8))
        micro = max(1, min(micro, max(1, batch_rows // world)))
        sft_config = SFTConfig(base_checkpoint=str(base), instructions=str(instructions),
                               tokenizer_path=str(tokenizer), template=template, train_on_prompt=train_on_prompt,
                               val_share=val_share, batching=batching, too_long=too_long,
                               num_responses=responses, max_new_tokens=max_new_tokens)
        probe = SFTObjective(sft_config)
        probe.prepare(seq_len or None)  # to size the run from the data (and fail early on bad input)
        rows_len = probe.prepared_seq_len
        config = TrainConfig(
            run_dir=str(out_dir), max_steps=max(steps, 1), preset="auto", global_batch_tokens=batch_rows * rows_len,
            device=device, precision=precision, compile=compile_, parallelism=parallelism, resume=resume, seed=seed,
            data=DataConfig(shards_dir="", seq_len=seq_len or None, micro_batch_size=micro, seed=seed,
                            prefetch_batches=0),
            optim=OptimConfig(lr=lr, min_lr=min_lr if min_lr is not None else lr / 10, warmup_steps=warmup_steps,
                              weight_decay=weight_decay, grad_clip=grad_clip),
            log=LogConfig(every_steps=log_every, tensorboard=tensorboard))
        if steps <= 0:
            config = config.replace(max_steps=steps_for_epochs(probe, config, epochs))
        every = eval_every if eval_every is not None else max(1, config.max_steps // 5)
        config = config.replace(
            eval=EvalConfig(every_steps=every, sample_every_steps=every),
            checkpoint=CheckpointConfig(every_steps=every if ckpt_every is None else ckpt_every, keep_last=keep_last))
        result = run_sft(config, sft_config, device=dev, objective=probe)
    except TrainError as err:
        _fail(err)
    if not _is_main_process():
        return
    r = result.train
    rows = [("run", str(r.run_dir)), ("base", str(base)), ("steps", f"{r.final_step:,} of {config.max_steps:,}"),
            ("examples", f"{result.counts['train_examples']:,} train, {result.counts['val_examples']:,} validation"
                         f" ({result.counts['too_long_skipped']} too long skipped, "
                         f"{result.counts['too_long_truncated']} truncated, "
                         f"{sum(result.counts['skipped'].values())} empty)"),
            ("response loss before", f"{result.before['val_response_loss']:.4f} "
                                     f"(perplexity {result.before['val_response_ppl']:.2f})")]
    if result.after:
        rows.append(("response loss after", f"{result.after['val_response_loss']:.4f} "
                                            f"(perplexity {result.after['val_response_ppl']:.2f})"))
    rows += [("throughput", f"{r.tokens_per_s:,.0f} tokens/s"), ("checkpoint", str(r.checkpoint))]
    if result.responses_path:
        rows.append(("answers", str(result.responses_path)))
    click.echo("\n" + _table(rows))
    if r.interrupted:
        click.echo(f"stopped by a signal at step {r.final_step}; continue with the same command plus --resume",
                   err=True)
        raise SystemExit(128 + int(r.stop_signal or signal.SIGTERM))


# --------------------------------------------------------------------------------------------------
# Hooks for `evaluate --instructions` and `sample --instruction` (options of the commands in training.py)


def evaluate_instructions_cmd(ckpt: Path, instructions: Path, tokenizer: Path, batch: int, device: str,
                              template: str | None = None) -> None:
    from train.errors import TrainError
    from train.tune.sft import evaluate_instructions

    try:
        ev = evaluate_instructions(ckpt, instructions, tokenizer, template=template, batch_size=batch,
                                   device=_resolve_device(device))
    except TrainError as err:
        _fail(err)
    res = ev.result
    click.echo(_table([("checkpoint", f"{ckpt} ({ev.kind}, template {ev.template})"),
                       ("scored", f"{instructions}: {ev.examples:,} examples ({ev.skipped} skipped)"),
                       ("response tokens", f"{res.tokens:,}"), ("response loss", f"{res.loss:.4f} nats/token"),
                       ("perplexity", f"{res.perplexity:.2f}")]))


def sample_instruction_cmd(ckpt: Path, tokenizer_path: Path, instruction: str, input_text: str, max_new_tokens: int,
                           temperature: float, top_k: int, top_p: float, seed: int, num_samples: int,
                           device: str) -> None:
    """Answer one instruction formatted with the checkpoint's template (stops at end-of-text)."""
    from train.checkpoint import model_from_checkpoint
    from train.errors import TrainError
    from train.evaluate import check_tokenizer, load_tokenizer
    from train.tune.sft import TUNED_KINDS, eot_id_of, generate_answer, load_lm_checkpoint
    from train.tune.templates import template_from_checkpoint

    try:
        dev = _resolve_device(device)
        payload, path = load_lm_checkpoint(ckpt)
        tokenizer = load_tokenizer(tokenizer_path)
        check_tokenizer(tokenizer_path, tokenizer, payload)
        template = template_from_checkpoint(payload)
        template.check_tokenizer(tokenizer, f"tokenizer {tokenizer_path}")
        if payload.get("kind", "pretrain") not in TUNED_KINDS:
            click.echo(f"note: {path} is a base model, not instruction-tuned; formatting with the {template.name} "
                       f"template anyway (fine-tune it with `crawlgpt sft`)", err=True)
        model = model_from_checkpoint(payload).to(dev).eval()
        eot = eot_id_of(payload, tokenizer)
        pieces = template.instruction_prompt_pieces(instruction, input_text)
        for i in range(num_samples):
            answer = generate_answer(model, tokenizer, template, pieces, eot, dev, max_new_tokens,
                                     temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None,
                                     seed=seed + i, bf16=dev.type == "cuda")
            if num_samples > 1:
                click.echo(f"--- sample {i + 1} (seed {seed + i})")
            click.echo(answer)
    except TrainError as err:
        _fail(err)


# --------------------------------------------------------------------------------------------------
# chat


@click.command("chat")
@data_option
@run_option
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Fine-tuned checkpoint file or run folder [default: DATA/runs/RUN-sft].")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Tokens per answer at most.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="Softmax temperature; 0 = greedy.")
@click.option("--top-k", type=int, default=40, show_default=True, help="Sample among the k most likely tokens; 0 = all.")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="Sample among the smallest set of tokens whose probability reaches p; 1 = all.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler: the same seed, the same chat.")
@click.option("--system", default=None, help="A system message that opens the conversation.")
@click.option("--allow-base", is_flag=True, default=False,
              help="Also talk to a base (pretrained, not instruction-tuned) checkpoint.")
@tokenizer_option
@device_option
def chat_cmd(data: Path, run: str, checkpoint: Path | None, max_new_tokens: int, temperature: float, top_k: int,
             top_p: float, seed: int, system: str | None, allow_base: bool, tokenizer_path: Path | None,
             device: str) -> None:
    """Talk to a fine-tuned model, one message per line (also from a pipe). /reset forgets the
    conversation, /exit ends it. Answers stream as they are generated; in a pipe each answer is one
    line (line breaks in it written as \\n, backslashes as \\\\)."""
    from train.tune.chat import ChatInputError, ChatSession, GenerationOptions
    from train.checkpoint import model_from_checkpoint
    from train.errors import TrainError
    from train.evaluate import check_tokenizer, load_tokenizer
    from train.tune.sft import TUNED_KINDS, eot_id_of, load_lm_checkpoint
    from train.tune.templates import template_from_checkpoint

    ckpt = checkpoint or data / "runs" / f"{run}-sft"
    tok_path = tokenizer_path or data / "tokenizer" / "tokenizer.json"
    try:
        dev = _resolve_device(device)
        kinds = (*TUNED_KINDS, "pretrain") if allow_base else TUNED_KINDS
        payload, path = load_lm_checkpoint(ckpt, kinds, need="an instruction-tuned model (or pass --allow-base)")
        tokenizer = load_tokenizer(tok_path)
        check_tokenizer(tok_path, tokenizer, payload)
        template = template_from_checkpoint(payload)
        template.check_tokenizer(tokenizer, f"tokenizer {tok_path}")
        model = model_from_checkpoint(payload).to(dev).eval()
        options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k or None,
                                    top_p=top_p if top_p < 1 else None, seed=seed)
        session = ChatSession(model, tokenizer, template, eot_id_of(payload, tokenizer), dev, options, system)
    except TrainError as err:
        _fail(err)
    interactive = sys.stdin.isatty()
    click.echo(f"chatting with {path} ({template.name} template, context {model.config.max_seq_len} tokens); "
               f"/reset forgets the conversation, /exit ends it", err=True)
    while True:
        if interactive:
            click.echo("you> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        message = line.rstrip("\n").strip()
        if not message:
            continue
        if message in ("/exit", "/quit"):
            break
        if message == "/reset":
            session.reset()
            click.echo("(conversation reset)", err=True)
            continue
        trimmed = session.trimmed_turns
        try:
            if interactive:
                click.echo("model> ", nl=False, err=True)
            for piece in session.reply(message):
                # In a pipe each answer is one line: its own line breaks are written as \\n.
                click.echo(piece if interactive else piece.replace("\\", "\\\\").replace("\n", "\\n"), nl=False)
                sys.stdout.flush()
            click.echo()
        except ChatInputError as err:
            click.echo(f"error: {err}", err=True)
        if session.trimmed_turns > trimmed:
            click.echo(f"(the oldest {session.trimmed_turns - trimmed} turn(s) were dropped to fit the context)",
                       err=True)


# --------------------------------------------------------------------------------------------------
# classification


@click.command("classify-train")
@data_option
@run_option
@checkpoint_option
@click.option("--labelled", "labelled", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="TSV, CSV or JSONL file with a text and a label column (e.g. ../shared/data/classify/sms-spam.tsv).")
@click.option("--text-column", default="text", show_default=True, help="Name of the text column (or JSON field).")
@click.option("--label-column", default="label", show_default=True, help="Name of the label column (or JSON field).")
@click.option("--format", "file_format", type=click.Choice(["auto", "tsv", "csv", "jsonl"]), default="auto",
              show_default=True, help="File format; auto = from the extension.")
@click.option("--out-run", default=None, help="Run name of the classifier [default: RUN-classify].")
@click.option("--train-blocks", type=int, default=None,
              help="Train only the last N decoder blocks plus the head [default: all weights].")
@click.option("--val-share", type=float, default=0.1, show_default=True, help="Share of texts for validation (by hash).")
@click.option("--test-share", type=float, default=0.2, show_default=True, help="Share of texts for the test report (by hash).")
@click.option("--epochs", type=float, default=2.0, show_default=True, help="Passes over the training texts (unless --steps).")
@click.option("--steps", type=int, default=0, show_default=True, help="Optimizer steps; 0 = from --epochs.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Texts per optimizer step (all ranks).")
@click.option("--micro-batch", type=int, default=0, show_default=True, help="Texts per forward pass; 0 = --batch-size.")
@click.option("--seq-len", type=int, default=0, show_default=True,
              help="Tokens per text at most (longer texts are cut, and counted); 0 = the model's context.")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="Peak learning rate.")
@click.option("--weight-decay", type=float, default=0.1, show_default=True, help="AdamW weight decay (matrices only).")
@click.option("--resume", is_flag=True, default=False, help="Continue from the newest checkpoint of DATA/runs/OUT_RUN.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also train and report a supervised fastText classifier on the same split.")
@device_option
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="bf16 autocast or fp32; auto = bf16 on CUDA, fp32 elsewhere.")
@click.option("--eval-every", type=int, default=None, help="Validation every N steps [default: a fifth of the steps].")
@click.option("--log-every", type=int, default=10, show_default=True, help="Progress line every N steps.")
@click.option("--seed", type=int, default=1337, show_default=True, help="Seed of the head and of the text order.")
@tokenizer_option
def classify_train_cmd(data: Path, run: str, checkpoint: Path | None, labelled: Path, text_column: str,
                       label_column: str, file_format: str, out_run: str | None, train_blocks: int | None,
                       val_share: float, test_share: float, epochs: float, steps: int, batch_size: int,
                       micro_batch: int, seq_len: int, lr: float, weight_decay: float, resume: bool, baseline: bool,
                       device: str, precision: str, eval_every: int | None, log_every: int, seed: int,
                       tokenizer_path: Path | None) -> None:
    """Fine-tune a checkpoint as a text classifier; report accuracy, per-class P/R/F1 and the confusion
    matrix on the test split beside a fastText baseline (DATA/runs/OUT_RUN/)."""
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, TrainError
    from train.tune.classify import ClassifyConfig, run_classify

    base = checkpoint or data / "runs" / run
    tokenizer = tokenizer_path or data / "tokenizer" / "tokenizer.json"
    micro = micro_batch or batch_size
    try:
        dev = _resolve_device(device)
        config = ClassifyConfig(base_checkpoint=str(base), data_path=str(labelled), tokenizer_path=str(tokenizer),
                                text_column=text_column, label_column=label_column, file_format=file_format,
                                val_share=val_share, test_share=test_share, train_blocks=train_blocks)
        # The loop counts batches in tokens; one "row" per text of up to the model's context.
        from train.tune.sft import load_lm_checkpoint

        payload, _ = load_lm_checkpoint(base)
        rows_len = seq_len or payload["model_config"]["max_seq_len"]
        every = eval_every or 0
        tconfig = TrainConfig(
            run_dir=str(data / "runs" / (out_run or f"{run}-classify")), max_steps=max(steps, 1), preset="auto",
            global_batch_tokens=batch_size * rows_len, device=device, precision=precision, resume=resume, seed=seed,
            data=DataConfig(shards_dir="", seq_len=seq_len or None, micro_batch_size=micro, seed=seed,
                            prefetch_batches=0),
            optim=OptimConfig(lr=lr, min_lr=lr / 10, weight_decay=weight_decay),
            eval=EvalConfig(every_steps=every, sample_every_steps=0),
            checkpoint=CheckpointConfig(every_steps=every, keep_last=2),
            log=LogConfig(every_steps=log_every, tensorboard=False))
        result = run_classify(tconfig, config, device=dev, epochs=None if steps > 0 else epochs, baseline=baseline)
    except TrainError as err:
        _fail(err)
    if not _is_main_process():
        return
    table = result.class_table
    classes = list(next(iter(table.values())))
    click.echo("\ntexts per class and split:")
    click.echo(_table([("", "  ".join(f"{c:>8}" for c in classes))] +
                      [(s, "  ".join(f"{table[s][c]:8,}" for c in classes)) for s in table]))
    if result.report_text:
        click.echo("\n" + result.report_text)
    click.echo("\n" + _table([("run", str(result.train.run_dir)), ("checkpoint", str(result.train.checkpoint)),
                               ("steps", f"{result.train.final_step:,}")]))
    if result.train.interrupted:
        click.echo("stopped by a signal; continue with the same command plus --resume", err=True)
        raise SystemExit(128 + int(result.train.stop_signal or signal.SIGTERM))


@click.command("classify")
@data_option
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="Classifier checkpoint file or run folder (from `crawlgpt classify-train`).")
@click.argument("source", type=click.Path(allow_dash=True, dir_okay=False, path_type=Path))
@click.option("--batch", type=int, default=16, show_default=True, help="Texts per forward pass.")
@tokenizer_option
@device_option
def classify_cmd(data: Path, checkpoint: Path, source: Path, batch: int, tokenizer_path: Path | None,
                 device: str) -> None:
    """Classify each line of SOURCE (a file, or - for standard input): prints label<TAB>probability<TAB>text."""
    from train.tune.classify import classify_texts
    from train.errors import TrainError

    if str(source) == "-":
        lines = sys.stdin.read().splitlines()
    else:
        if not source.is_file():
            raise click.ClickException(f"{source} does not exist; pass a text file (one text per line) or -")
        lines = source.read_text(encoding="utf-8").splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        return
    try:
        results = classify_texts(checkpoint, texts, tokenizer_path or data / "tokenizer" / "tokenizer.json",
                                 device=_resolve_device(device), batch_size=batch)
    except TrainError as err:
        _fail(err)
    for text, (label, prob) in zip(texts, results):
        click.echo(f"{label}\t{prob:.4f}\t{text}")


def register(group: click.Group) -> None:
    group.add_command(sft_cmd)
    group.add_command(chat_cmd)
    group.add_command(classify_train_cmd)
    group.add_command(classify_cmd)
