"""CLI: `crawlgpt export` (Hugging Face folder) and `crawlgpt benchmark` (zero-shot accuracy)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipeline.cli.training import checkpoint_option, data_option, device_option, run_option, tokenizer_option


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err)) from err


@click.command("export")
@data_option
@run_option
@checkpoint_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write (config.json, model.safetensors, tokenizer files).")
@tokenizer_option
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Weight dtype in model.safetensors (float32 is exact; the halves are half the size).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export in --out.")
def export_cmd(data: Path, run: str, checkpoint: Path | None, out_dir: Path, tokenizer_path: Path | None,
               dtype: str, overwrite: bool) -> None:
    """Write a checkpoint as a Hugging Face LlamaForCausalLM folder (transformers, lm-eval, vLLM load it)."""
    from train.errors import TrainError
    from train.export import ExportConfig, export_checkpoint

    ckpt = checkpoint or data / "runs" / run
    tok = tokenizer_path or data / "tokenizer" / "tokenizer.json"
    try:
        result = export_checkpoint(ckpt, out_dir, tok if tok.is_file() else tokenizer_path,
                                   ExportConfig(dtype=dtype, overwrite=overwrite))
    except TrainError as err:
        _fail(err)
    rows = [("checkpoint", str(result.checkpoint)), ("exported to", str(result.out_dir)),
            ("parameters", f"{result.num_params:,}"), ("model.safetensors", f"{result.bytes_written / 2**20:.1f} MiB"),
            ("time", f"{result.seconds:.1f}s")]
    click.echo("\n".join(f"{k:>18}  {v}" for k, v in rows))
    click.echo(f"load it with: AutoModelForCausalLM.from_pretrained({str(result.out_dir)!r})")


def register(group: click.Group) -> None:
    group.add_command(export_cmd)
