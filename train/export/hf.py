"""Export a checkpoint to a Hugging Face `LlamaForCausalLM` folder (`crawlgpt export`).

The folder holds what `transformers` reads with `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)`, so the model also loads in lm-evaluation-harness, vLLM and
anything else that speaks Llama:

- `config.json`: `LlamaForCausalLM` with our widths, heads, key/value heads, RMSNorm epsilon, context,
  tied or untied embeddings and the end-of-text id as bos/eos. Rope theta is written both as
  `rope_parameters` (the form transformers 5 writes) and as the older top-level `rope_theta`, so
  transformers 4.x reads the same value.
- `model.safetensors`: the weights under Llama's names. A tied embedding is stored once
  (`model.embed_tokens.weight`; transformers ties `lm_head` to it because `tie_word_embeddings` is
  true): safetensors refuses two names for one storage, and one copy is what Llama checkpoints hold.
- `generation_config.json`: bos/eos ids, so `generate()` stops at end-of-text.
- `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`: our byte-level BPE as a
  `PreTrainedTokenizerFast` with `<|endoftext|>` as bos, eos and unk, and the chat template of an SFT
  checkpoint when it carries one.

Rotary layout: model/gpt.py rotates the pair (x[i], x[i + hd/2]) of each head ("rotate half"), which is
what Hugging Face's Llama does, so q and k rows are copied unchanged. A model that rotated interleaved
pairs (x[2i], x[2i+1]), as Meta's original Llama code does, would need each head's rows permuted
(`permute_interleaved_to_half`, kept here and tested, for checkpoints of such models).

Only torch is needed to build the tensors; `safetensors` is imported when the file is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.gpt import GPT, GPTConfig
from train.errors import TrainError
from train.evaluate import check_tokenizer, load_for_inference, load_tokenizer

log = logging.getLogger(__name__)

EOT_TOKEN = "<|endoftext|>"
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportError(TrainError):
    """The checkpoint cannot be exported (no tokenizer found, an output folder that is a file, ...)."""


@dataclass(frozen=True)
class ExportConfig:
    dtype: str = "float32"
    """Weight dtype in model.safetensors: float32 (exact), bfloat16 or float16 (half the size)."""
    overwrite: bool = False
    """Replace the files of an existing export in the output folder."""

    def __post_init__(self) -> None:
        if self.dtype not in EXPORT_DTYPES:
            raise ExportError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    """The exported folder."""
    checkpoint: Path
    """The checkpoint file that was exported."""
    num_params: int
    """Parameters of the model (a tied embedding counted once)."""
    bytes_written: int
    """Size of model.safetensors."""
    seconds: float
    """Wall time of the export."""


# --------------------------------------------------------------------------------------------------
# Names and layouts


def permute_interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's output rows from interleaved rotary pairs (0,1),(2,3),... to halves (0,hd/2),...

    For a q or k projection (n_heads * hd, d_model) of a model that rotates adjacent pairs, the rows
    come out in the order rotate-half expects: row 2i goes to i, row 2i + 1 to i + hd/2. This is the
    permutation transformers' own convert_llama_weights_to_hf applies to Meta's checkpoints.
    """
    rows, cols = weight.shape
    hd = rows // n_heads
    return weight.view(n_heads, hd // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_state_dict(model: GPT, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our weights under LlamaForCausalLM's names; every tensor its own contiguous copy."""
    c = model.config
    ours = model.state_dict()

    def take(name: str) -> torch.Tensor:
        return ours[name].detach().to("cpu", dtype).contiguous().clone()

    out = {"model.embed_tokens.weight": take("tok_emb.weight"), "model.norm.weight": take("norm.weight")}
    for i in range(c.n_layer):
        p, hf = f"blocks.{i}.", f"model.layers.{i}."
        out.update({
            hf + "input_layernorm.weight": take(p + "attn_norm.weight"),
            hf + "self_attn.q_proj.weight": take(p + "attn.wq.weight"),  # rotate-half already: no permutation
            hf + "self_attn.k_proj.weight": take(p + "attn.wk.weight"),
            hf + "self_attn.v_proj.weight": take(p + "attn.wv.weight"),
            hf + "self_attn.o_proj.weight": take(p + "attn.wo.weight"),
            hf + "post_attention_layernorm.weight": take(p + "ffn_norm.weight"),
            hf + "mlp.gate_proj.weight": take(p + "ffn.w1.weight"),
            hf + "mlp.up_proj.weight": take(p + "ffn.w3.weight"),
            hf + "mlp.down_proj.weight": take(p + "ffn.w2.weight"),
        })
    if not c.tie_embeddings:
        out["lm_head.weight"] = take("head.weight")
    return out


def hf_config(config: GPTConfig, eot_id: int, dtype: str = "float32") -> dict[str, Any]:
    """config.json of the equivalent LlamaForCausalLM."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": None,
        "initializer_range": config.init_std,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def tokenizer_files(tokenizer_path: Path, out_dir: Path, max_seq_len: int, chat_template: str | None) -> None:
    """tokenizer.json plus the two small files that make it a PreTrainedTokenizerFast with our specials."""
    shutil.copyfile(tokenizer_path, out_dir / "tokenizer.json")
    specials = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "pad_token": None,
        "add_bos_token": False,  # crawlgpt prepends end-of-text itself where a document starts
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # byte-level BPE decodes exactly; no space fixing
        "model_max_length": max_seq_len,
    }
    if chat_template:
        config["chat_template"] = chat_template
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# The command


def find_tokenizer(payload: dict[str, Any], explicit: str | Path | None) -> Path:
    """The tokenizer the checkpoint was trained with: the given path, else the copy in its shards folder."""
    if explicit is not None and Path(explicit).is_file():
        return Path(explicit)
    shards_dir = payload.get("data", {}).get("shards_dir")
    if shards_dir and (Path(shards_dir) / "tokenizer.json").is_file():
        return Path(shards_dir) / "tokenizer.json"
    where = f"{explicit}" if explicit is not None else "no --tokenizer given"
    raise ExportError(f"no tokenizer found ({where}; the checkpoint's shards folder {shards_dir!r} has no "
                      f"tokenizer.json); pass --tokenizer DATA/tokenizer/tokenizer.json")


EXPORT_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None,
                      config: ExportConfig = ExportConfig()) -> ExportResult:
    """Write the HF folder for a checkpoint (file or run folder). Files appear under temporary names and
    are renamed at the end, model.safetensors last but one and config.json last, so a folder with a
    config.json is complete."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; give a folder")
    if (out_dir / "config.json").exists() and not config.overwrite:
        raise ExportError(f"{out_dir} already holds an export (config.json); pass --overwrite to replace it "
                          f"or choose another --out")
    model, payload, path = load_for_inference(checkpoint, torch.device("cpu"))
    tok_path = find_tokenizer(payload, tokenizer)
    check_tokenizer(tok_path, load_tokenizer(tok_path), payload)
    eot_id = payload.get("data", {}).get("eot_id")
    if eot_id is None:
        eot_id = load_tokenizer(tok_path).token_to_id(EOT_TOKEN)
    if eot_id is None:
        raise ExportError(f"tokenizer {tok_path} has no {EOT_TOKEN} token; it was not made by `crawlgpt tokenizer`")

    tmp = out_dir.with_name(f".{out_dir.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = hf_state_dict(model, EXPORT_DTYPES[config.dtype])
    del model
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": "crawlgpt",
                                                              "checkpoint_step": str(payload["step"])})
    del tensors
    model_config = GPTConfig.from_dict(payload["model_config"])
    _write_json(tmp / "generation_config.json", {"bos_token_id": eot_id, "eos_token_id": eot_id,
                                                 "max_length": model_config.max_seq_len})
    tokenizer_files(tok_path, tmp, model_config.max_seq_len, payload.get("chat_template"))
    _write_json(tmp / "config.json", hf_config(model_config, eot_id, config.dtype))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").unlink(missing_ok=True)  # an interrupted overwrite leaves no complete-looking folder
    for name in EXPORT_FILES:
        (tmp / name).replace(out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    num_params = _count(payload["model"], model_config)
    result = ExportResult(out_dir=out_dir, checkpoint=path, num_params=num_params,
                          bytes_written=(out_dir / "model.safetensors").stat().st_size,
                          seconds=time.perf_counter() - start)
    log.info("exported %s (step %d) to %s in %.1fs", path, payload["step"], out_dir, result.seconds)
    return result


def _count(state: dict[str, torch.Tensor], config: GPTConfig) -> int:
    """Parameters in a model state dict, a tied head counted once (it is listed under both names)."""
    return sum(t.numel() for name, t in state.items() if not (config.tie_embeddings and name == "head.weight"))


def export_gguf(checkpoint: str | Path, path: str | Path, tokenizer: str | Path | None = None,
                overwrite: bool = False) -> Path:
    """Write a checkpoint as one float32 GGUF file for llama.cpp (see train/export/gguf.py)."""
    from train.export.gguf import write_gguf

    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it")
    model, payload, _ = load_for_inference(checkpoint, torch.device("cpu"))
    tok_path = find_tokenizer(payload, tokenizer)
    tok = load_tokenizer(tok_path)
    check_tokenizer(tok_path, tok, payload)
    eot_id = payload.get("data", {}).get("eot_id")
    return write_gguf(model, payload, tok_path, tok.token_to_id(EOT_TOKEN) if eot_id is None else eot_id, path)
