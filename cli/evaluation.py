"""CLI: `crawlgpt export` (Hugging Face folder) and `crawlgpt benchmark` (zero-shot accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from formats.layout import run_dir, tokenizer_file
from cli.common import checkpoint_option, data_option, device_option, fail, run_option, tokenizer_option
from cli.common import COUNT, POSITIVE, POSITIVE_INT, CountProgress, real_folder


def _check_export_folder(out_dir: Path, data: Path) -> None:
    """An export writes config.json, model.safetensors and tokenizer files into --out: never into the
    working folder, the data folder, the home folder or any folder above them (`--out .`, `--out /`)."""
    out = Path(real_folder(out_dir))
    for name, folder in (("the current folder", Path.cwd()), ("the data folder", data), ("your home folder", Path.home())):
        inside = Path(real_folder(folder))
        if out == inside or out in inside.parents:
            raise click.BadParameter(f"{out_dir} is {name} or a folder above it; an export needs a folder of its own, "
                                     f"e.g. --out exports/my-model", param_hint="--out")


@click.command("export")
@data_option
@run_option
@checkpoint_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hugging Face folder to write (config.json, model.safetensors, tokenizer files).")
@click.option("--gguf", "gguf_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also (or only) write a float32 GGUF file for llama.cpp (needs `pip install gguf`).")
@tokenizer_option
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Weight dtype in model.safetensors (float32 is exact; the halves are half the size).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export in --out.")
@click.option("--license", "card_license", default="other", show_default=True,
              help="Licence of the weights in the model card's metadata (a Hugging Face licence id).")
def export_cmd(data: Path, run: str, checkpoint: Path | None, out_dir: Path | None, gguf_path: Path | None,
               tokenizer_path: Path | None, dtype: str, overwrite: bool, card_license: str) -> None:
    """Write a checkpoint as a Hugging Face LlamaForCausalLM folder (transformers, lm-eval, vLLM load it),
    with its model card (README.md: architecture, training, data pipeline, benchmark results)."""
    from train.errors import TrainError  # inside the command: keeps torch out of `crawlgpt --help`
    from train.export.hf import ExportConfig, export_checkpoint, export_gguf
    from report.dataset_card import corpus_summary
    from report.model_card import model_card, write_model_card
    from pipeline.errors import InputError

    if out_dir is None and gguf_path is None:
        raise click.UsageError("give --out DIR (Hugging Face folder), --gguf FILE, or both")
    if out_dir is not None:
        _check_export_folder(out_dir, data)
    ckpt = checkpoint or run_dir(data, run)
    tok = tokenizer_path or tokenizer_file(data)
    tok = tok if tok.is_file() else tokenizer_path
    try:
        if gguf_path is not None:
            click.echo(f"GGUF: {export_gguf(ckpt, gguf_path, tok, overwrite=overwrite)}")
        if out_dir is None:
            return
        result = export_checkpoint(ckpt, out_dir, tok, ExportConfig(dtype=dtype, overwrite=overwrite))
    except TrainError as err:
        fail(err)
    try:
        summary = corpus_summary(data)
    except InputError:
        summary = None  # a checkpoint exported away from its DATA folder: the card says the data is not recorded
    run_folder = result.checkpoint.parent.parent if result.checkpoint.parent.name == "checkpoints" else ckpt
    card = write_model_card(result.out_dir, model_card(f"crawlgpt-{run}", result, Path(run_folder), summary,
                                                       license=card_license))
    rows = [("checkpoint", str(result.checkpoint)), ("exported to", str(result.out_dir)),
            ("parameters", f"{result.num_params:,}"), ("model.safetensors", f"{result.bytes_written / 2**20:.1f} MiB"),
            ("model card", str(card)), ("time", f"{result.seconds:.1f}s")]
    click.echo("\n".join(f"{k:>18}  {v}" for k, v in rows))
    click.echo(f"load it with: AutoModelForCausalLM.from_pretrained({str(result.out_dir)!r})")


def _task_files(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        task, sep, path = value.partition("=")
        if not sep or not task or not path:
            raise click.BadParameter(f"{value!r}: expected TASK=PATH", param_hint="--file")
        pairs.append((task, path))
    return tuple(pairs)


@click.command("benchmark")
@data_option
@run_option
@checkpoint_option
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A Hugging Face model folder (e.g. from `crawlgpt export`) instead of a checkpoint.")
@click.option("--tasks", default="piqa,lambada", show_default=True,
              help="Comma-separated: piqa, lambada, hellaswag, arc_easy, arc_challenge, winogrande.")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("../shared/data/eval"),
              show_default=True, help="Folder with the tasks' files under their public release names.")
@click.option("--file", "files", multiple=True, metavar="TASK=PATH",
              help="Where one task's file is, when not in --eval-dir under its release name (repeatable).")
@click.option("--limit", type=COUNT, default=0, show_default=True,
              help="Score only the first N items of each task (a quick look); 0 = all.")
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True, help="Sequences per forward pass.")
@click.option("--threads", type=COUNT, default=0, show_default=True, help="torch CPU threads; 0 = torch's default.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results (and per-item scores) as JSON to this file.")
@tokenizer_option
@device_option
def benchmark_cmd(data: Path, run: str, checkpoint: Path | None, model_dir: Path | None, tasks: str, eval_dir: Path,
                  files: tuple[str, ...], limit: int, batch_size: int, threads: int, json_path: Path | None,
                  tokenizer_path: Path | None, device: str) -> None:
    """Zero-shot accuracy on PIQA, LAMBADA, HellaSwag, ARC and WinoGrande, scored as lm-evaluation-harness does."""
    import torch

    from evals.scoring import (RESULTS_HEADER, BenchmarkConfig,  # inside the command: keeps torch out of --help
                               load_items, load_scoring_model, results_table_rows, run_benchmarks)
    from formats.benchmark_tasks import BenchmarkDataError
    from pipeline.stage import format_table
    from train.distributed import resolve_device
    from train.errors import TrainError

    if threads > 0:
        torch.set_num_threads(threads)
    target = model_dir or checkpoint or run_dir(data, run)
    tok = tokenizer_path or tokenizer_file(data)
    bar: list[CountProgress] = []
    try:
        config = BenchmarkConfig(tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), eval_dir=str(eval_dir),
                                 files=_task_files(files), limit=limit or None, batch_size=batch_size)
        items = load_items(config)
        model = load_scoring_model(target, resolve_device(device), tok if tok.is_file() else tokenizer_path)

        def on_start(task: str, requests: int) -> None:
            if bar:
                bar.pop().close()
            bar.append(CountProgress(task, requests, "requests"))

        results = run_benchmarks(model, config, items, on_start=on_start, on_progress=lambda n: bar[-1].update(n))
    except (TrainError, BenchmarkDataError, ValueError) as err:
        fail(err)
    finally:
        if bar:
            bar.pop().close()
    click.echo(f"\nmodel: {target}" + (f" (first {limit} items per task)" if limit else ""))
    click.echo(format_table(results_table_rows(results), RESULTS_HEADER))
    if json_path is not None:
        report = {"model": str(target), "limit": limit or None, "threads": torch.get_num_threads(),
                  "results": [r.to_json(with_items=True) for r in results]}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        click.echo(f"results: {json_path}")


def _overrides(values: tuple[str, ...]) -> tuple[tuple[str, object], ...]:
    import ast

    pairs = []
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected FIELD=VALUE, e.g. d_model=256", param_hint="--override")
        try:
            pairs.append((key, ast.literal_eval(raw)))
        except (ValueError, SyntaxError):
            raise click.BadParameter(f"{value!r}: {raw!r} is not a number or literal", param_hint="--override")
    return tuple(pairs)


def _check_model(preset: str, overrides: tuple[tuple[str, object], ...]) -> None:
    """Refuse a preset or override that builds no model before any run starts (e.g. d_model=-64)."""
    from model.gpt import ModelConfigError, preset_config  # inside the command: keeps torch out of `crawlgpt --help`

    try:
        preset_config(preset, 256, **dict(overrides))  # the vocabulary comes from the shards later
    except (TypeError, ModelConfigError) as err:
        raise click.BadParameter(str(err), param_hint="--preset / --override") from err


@click.command("ablation")
@data_option
@click.option("--preset", default="tiny", show_default=True, help="Model preset of every run.")
@click.option("--override", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Model field replacing the preset's (repeatable), e.g. d_model=256; none = the bare preset.")
@click.option("--steps", type=POSITIVE_INT, default=150, show_default=True, help="Optimizer steps of every run.")
@click.option("--batch-tokens", type=POSITIVE_INT, default=4096, show_default=True, help="Tokens per step.")
@click.option("--seq-len", type=POSITIVE_INT, default=128, show_default=True, help="Tokens per window.")
@click.option("--lr", type=POSITIVE, default=3e-3, show_default=True, help="Peak learning rate.")
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma-separated seeds; one run per arm and seed.")
@click.option("--eval-points", type=POSITIVE_INT, default=3, show_default=True, help="Held-out evaluations per run.")
@click.option("--heldout", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("../shared/data/reference/reference-dev.jsonl.zst"), show_default=True,
              help="JSONL(.zst) of clean text in neither corpus (not the quality classifier's positives).")
@click.option("--heldout-tokens", type=POSITIVE_INT, default=16384, show_default=True, help="Held-out tokens scored.")
@click.option("--tasks", default="piqa,lambada", show_default=True, help="Benchmarks of each run's last checkpoint.")
@click.option("--benchmark-limit", type=COUNT, default=200, show_default=True, help="Items per benchmark; 0 = all.")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("../shared/data/eval"),
              show_default=True, help="Folder of the benchmark files.")
@click.option("--raw-shards", default="shards-raw", show_default=True, help="Raw arm's shards folder under DATA.")
@click.option("--curated-shards", default="shards", show_default=True, help="Curated arm's shards folder under DATA.")
@click.option("--threads", type=COUNT, default=0, show_default=True, help="torch CPU threads; 0 = torch's default.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of runs and results [default: DATA/ablation]; one per budget (run folders are resumed).")
def ablation_cmd(data: Path, preset: str, overrides: tuple[str, ...], steps: int, batch_tokens: int, seq_len: int,
                 lr: float, seeds: str, eval_points: int, heldout: Path, heldout_tokens: int, tasks: str,
                 benchmark_limit: int, eval_dir: Path, raw_shards: str, curated_shards: str, threads: int,
                 out_dir: Path | None) -> None:
    """Raw crawl vs curated corpus: the same model, budget, schedule and seeds; held-out loss and benchmarks.

    Writes DATA/ablation/results.json and ablation.png; finished runs are reused on a rerun.
    """
    from evals.ablation import AblationConfig, AblationError, run_ablation, summarize, table_rows  # inside the command: keeps torch out of `crawlgpt --help`
    from pipeline.stage import format_table
    from train.errors import TrainError

    model_overrides = () if overrides in ((), ("none",)) else _overrides(overrides)
    _check_model(preset, model_overrides)
    try:
        config = AblationConfig(
            data_dir=str(data), arms=(("raw", raw_shards), ("curated", curated_shards)),
            seeds=tuple(int(s) for s in seeds.split(",") if s.strip()), preset=preset, model_overrides=model_overrides,
            steps=steps, batch_tokens=batch_tokens, seq_len=seq_len, lr=lr, eval_points=eval_points,
            heldout=str(heldout), heldout_tokens=heldout_tokens,
            tasks=tuple(t for t in tasks.split(",") if t), benchmark_limit=benchmark_limit or None,
            eval_dir=str(eval_dir), threads=threads, out=str(out_dir or ""))
        results = run_ablation(config, on_run=lambda arm, seed, i, n: click.echo(
            f"run {i}/{n}: {arm}, seed {seed}", err=True))
    except (AblationError, TrainError, ValueError) as err:
        fail(err)
    arms = [a for a, _ in config.arms]
    summary = summarize(results, arms)
    click.echo(f"\n{steps} steps x {batch_tokens:,} tokens = {steps * batch_tokens:,} tokens per run; "
               f"{len(config.seeds)} seeds per arm; mean ± std [min, max]")
    click.echo(format_table(table_rows(summary, arms), ["figure", *arms, f"{arms[0]} - {arms[1]}"]))
    click.echo(f"results: {config.out_dir / 'results.json'}, plot: {config.out_dir / 'ablation.png'}")


def register(group: click.Group) -> None:
    group.add_command(export_cmd)
    group.add_command(benchmark_cmd)
    group.add_command(ablation_cmd)
