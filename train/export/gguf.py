"""Export a checkpoint to one GGUF file for llama.cpp (`crawlgpt export --gguf FILE`).

The file is what llama.cpp's own `convert_hf_to_gguf.py` writes for a Llama model with a byte-level
BPE tokenizer: architecture `llama`, its hyperparameters, the tokenizer (`gpt2` model, `llama-bpe` or
`gpt-2` pre-tokenizer after our split pattern, tokens, token types, merges, bos/eos), and float32
weights under llama.cpp's tensor names.

Rotary layout: llama.cpp's `llama` architecture rotates adjacent pairs (x[2i], x[2i+1]) while our model
rotates halves (x[i], x[i + hd/2]), so every q and k projection's rows are permuted per head, the same
permutation `convert_hf_to_gguf.py` applies to Hugging Face Llama weights (`half_to_interleaved`; the
inverse of `train.export.hf.permute_interleaved_to_half`). A tied embedding is written once
(`token_embd.weight`, no `output.weight`: llama.cpp then uses the embedding as the output head).

Needs the `gguf` package (`pip install gguf`, the `gguf` extra), imported when the file is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from model.gpt import GPT
from train.errors import TrainError

log = logging.getLogger(__name__)


def half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per head, rows in rotate-half order (0..hd/2-1 | hd/2..hd-1) -> adjacent pairs (0, hd/2), (1, hd/2+1), ..."""
    rows, cols = weight.shape
    hd = rows // n_heads
    return weight.reshape(n_heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's names, float32, q/k rows in llama.cpp's rotary order."""
    c = model.config
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": ours["tok_emb.weight"], "output_norm.weight": ours["norm.weight"]}
    if not c.tie_embeddings:
        out["output.weight"] = ours["head.weight"]
    for i in range(c.n_layer):
        p, g = f"blocks.{i}.", f"blk.{i}."
        out.update({
            g + "attn_norm.weight": ours[p + "attn_norm.weight"],
            g + "attn_q.weight": half_to_interleaved(ours[p + "attn.wq.weight"], c.n_head),
            g + "attn_k.weight": half_to_interleaved(ours[p + "attn.wk.weight"], c.kv_heads),
            g + "attn_v.weight": ours[p + "attn.wv.weight"],
            g + "attn_output.weight": ours[p + "attn.wo.weight"],
            g + "ffn_norm.weight": ours[p + "ffn_norm.weight"],
            g + "ffn_gate.weight": ours[p + "ffn.w1.weight"],
            g + "ffn_up.weight": ours[p + "ffn.w3.weight"],
            g + "ffn_down.weight": ours[p + "ffn.w2.weight"],
        })
    return out


def _tokenizer_vocab(tokenizer_path: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], str]:
    """(tokens by id, token types, merges, pre-tokenizer name) from tokenizer.json, padded to vocab_size."""
    import gguf

    spec = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(special)
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if by_id[i] in special else gguf.TokenType.NORMAL)
        else:  # rows the model has beyond the tokenizer (padded to a multiple of 64)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    # Our two split patterns (pipeline/tokenizer_train.py): llama3's starts with "(?i:", GPT-2's does not.
    pre = "llama-bpe" if "(?i:" in json.dumps(spec.get("pre_tokenizer", {})) else "gpt-2"
    return tokens, [int(t) for t in types], merges, pre


def write_gguf(model: GPT, payload: dict[str, Any], tokenizer_path: Path, eot_id: int, path: str | Path) -> Path:
    """Write the GGUF file (float32) for a loaded model; returns its path."""
    try:
        import gguf
    except ImportError as err:
        raise TrainError("GGUF export needs the `gguf` package: pip install gguf") from err
    c = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(f"crawlgpt step {payload['step']}")
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, types, merges, pre = _tokenizer_vocab(tokenizer_path, c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eot_id)
    writer.add_eos_token_id(eot_id)
    writer.add_add_bos_token(False)
    if payload.get("chat_template"):
        writer.add_chat_template(payload["chat_template"])
    for name, tensor in gguf_tensors(model).items():
        writer.add_tensor(name, tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    log.info("wrote %s", path)
    return path
