"""A GPT decoder in one file: RMSNorm, rotary attention (optionally grouped-query), SwiGLU, KV cache.

Read top to bottom: config and presets, the building blocks (norm, rotary embedding, attention,
feed-forward, block), the model, then generation. Shapes use B = batch, T = time (tokens),
C = model width, nh = query heads, nkv = key/value heads, hd = head width, V = vocabulary.

Only torch is needed here. Nothing in this file knows about data, training or the command line.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.presets import PRESETS

log = logging.getLogger(__name__)


class ModelConfigError(ValueError):
    """A model configuration that cannot be built (wrong preset name, widths that do not divide)."""


class SequenceTooLongError(ValueError):
    """An input longer than the context the model was built for (its rotary tables stop there)."""


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 32768
    """Rows of the embedding and the output head; may exceed the tokenizer's vocabulary (padding)."""
    max_seq_len: int = 1024
    """Longest input in tokens; rotary tables are precomputed up to here."""
    n_layer: int = 12
    """Number of decoder blocks."""
    n_head: int = 12
    """Query heads per attention layer."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention); None means one per query head (plain multi-head)."""
    d_model: int = 768
    """Width of the residual stream."""
    ffn_hidden: int | None = None
    """Hidden width of the SwiGLU feed-forward; None means 8/3 * d_model rounded up to `ffn_multiple_of`."""
    ffn_multiple_of: int = 64
    """Rounding for the default feed-forward width (keeps matmuls aligned)."""
    rope_theta: float = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """Epsilon inside RMSNorm."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the output head."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation; residual output projections are scaled by depth."""

    def __post_init__(self) -> None:
        # Sizes first: a negative width passes the divisibility checks below (-64 % 4 == 0).
        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden",
                     "ffn_multiple_of"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ModelConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ModelConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.d_model % self.n_head != 0:
            raise ModelConfigError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2 != 0:
            raise ModelConfigError(f"head width d_model/n_head={self.d_model // self.n_head} must be even for RoPE")
        if self.kv_heads < 1 or self.n_head % self.kv_heads != 0:
            raise ModelConfigError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        for name in ("vocab_size", "max_seq_len", "n_layer"):
            if getattr(self, name) < 1:
                raise ModelConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(8 * self.d_model / 3)
        return self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelConfigError(f"unknown model config fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)


def preset_config(name: str, vocab_size: int, **overrides) -> GPTConfig:
    """The config of a named preset for a given vocabulary; keyword overrides replace preset fields."""
    if name not in PRESETS:
        raise ModelConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], "vocab_size": vocab_size, **overrides})


# --------------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """Scale by the reciprocal root mean square; no mean subtraction and no bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 even under bf16 autocast: the mean of squares loses precision otherwise.
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).type_as(x)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (max_seq_len, head_dim / 2), in float32."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (hd/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)  # (max_seq_len, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[..., i], x[..., i + hd/2]) by its position's angle.

    x: (B, h, T, hd); cos, sin: (T, hd/2) for the positions of x's T tokens.
    """
    x1, x2 = x.float().chunk(2, dim=-1)  # each (B, h, T, hd/2)
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, h, T, hd)
    return rotated.type_as(x)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to the full context."""

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, config.kv_heads, config.max_seq_len, config.head_dim)  # (B, nkv, max_T, hd)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # tokens already stored; advanced by the model after all layers have run

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hd) after the cached tokens; return all keys and values so far."""
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # each (B, nkv, end, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.wq = nn.Linear(config.d_model, config.n_head * config.head_dim, bias=False)
        self.wk = nn.Linear(config.d_model, config.kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.d_model, config.kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_head * config.head_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer, k, v)  # each (B, nkv, past + T, hd)
        if self.n_kv_head != self.n_head:
            # Each key/value head serves n_head / n_kv_head query heads.
            repeats = self.n_head // self.n_kv_head
            k = k.repeat_interleave(repeats, dim=1)  # (B, nh, past + T, hd)
            v = v.repeat_interleave(repeats, dim=1)  # (B, nh, past + T, hd)

        if past == 0:
            # The common case (training, prefill): the flash and memory-efficient kernels handle it.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        elif T == 1:
            # One new token attends to everything before it: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hd)
        else:
            # Several new tokens after a cached prefix: SDPA's is_causal aligns the mask top-left,
            # which is wrong when queries and keys differ in length, so spell the mask out.
            query_pos = torch.arange(past, past + T, device=x.device)  # (T,)
            key_pos = torch.arange(past + T, device=x.device)  # (past + T,)
            mask = key_pos[None, :] <= query_pos[:, None]  # (T, past + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)  # (B, T, nh * hd)
        return self.wo(y)  # (B, T, C)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x): a gated feed-forward, as in PaLM and LLaMA."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(config.d_model, config.hidden_dim, bias=False)
        self.w3 = nn.Linear(config.d_model, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, hidden) -> (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.ffn(self.ffn_norm(x))


# --------------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        # Derived from the config, so not saved in checkpoints (persistent=False).
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)  # (max_seq_len, hd/2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) everywhere, with the two projections that write into the residual
        stream (attention output, feed-forward output) scaled by 1/sqrt(2 * n_layer) so the
        stream's variance does not grow with depth (GPT-2 paper, section 2.3)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith("attn.wo") or name.endswith("ffn.w2")
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count (a tied embedding counted once); optionally without the token embedding."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            total -= self.tok_emb.weight.numel()
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token: 6 per matmul weight plus the attention term.

        The matmul weights are every parameter except an untied input embedding (a lookup, not a
        matmul). Attention scores and the weighted sum add 12 * n_layer * n_head * head_dim * seq_len
        (PaLM paper, appendix B). Norm weights are counted too; they are a rounding error.
        """
        matmul_params = self.num_params(exclude_embedding=not self.config.tie_embeddings)
        c = self.config
        return 6.0 * matmul_params + 12.0 * c.n_layer * c.n_head * c.head_dim * seq_len

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids. With targets (B, T): logits (B, T, V) and the mean cross-entropy
        (targets of -1 are ignored). Without: logits of the last position only, (B, 1, V), and None.
        With a cache, idx holds only the new tokens and their positions continue from cache.length."""
        B, T = idx.size()
        x = self.hidden_states(idx, cache)  # (B, T, C)
        if targets is None:
            return self.head(x[:, [-1], :]), None  # (B, 1, V): generation needs only the last position
        logits = self.head(x)  # (B, T, V)
        # Cross-entropy in float32: bf16 logits lose too much precision in the log-sum-exp.
        loss = F.cross_entropy(logits.float().view(B * T, -1),  # (B * T, V)
                               targets.reshape(B * T), ignore_index=-1)  # (B * T,)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the final-norm hidden states (B, T, C): what the output head reads, and what a
        classification, reward or value head reads instead (fine-tuning and alignment). Scoring that
        needs a few positions' logits (benchmarks) applies the head to those alone."""
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise SequenceTooLongError(
                f"input reaches position {start + T} but the model supports at most "
                f"max_seq_len={self.config.max_seq_len} tokens; use a shorter sequence length "
                f"or a model built with a longer context")
        cos = self.rope_cos[start:start + T]  # (T, hd/2)
        sin = self.rope_sin[start:start + T]  # (T, hd/2)

        x = self.tok_emb(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, cache)  # (B, T, C)
        x = self.norm(x)  # (B, T, C)
        if cache is not None:
            cache.length += T
        return x

    # ----------------------------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eot_id: int | None = None, use_cache: bool = True) -> torch.Tensor:
        """Continue each prompt in idx (B, T) by up to max_new_tokens tokens; returns (B, T + n).

        temperature 0 picks the most likely token (greedy). top_k keeps the k most likely tokens,
        top_p the smallest set whose probabilities sum to at least p. A seed makes sampling
        repeatable. Generation stops when every sequence has produced eot_id (later positions of a
        finished sequence are filled with eot_id) or when the context is full.
        """
        B, T = idx.size()
        if T > self.config.max_seq_len:
            raise SequenceTooLongError(
                f"prompt has {T} tokens but the model's context is max_seq_len={self.config.max_seq_len}")
        room = self.config.max_seq_len - T
        if max_new_tokens > room:
            log.warning("generation capped at %d new tokens: the context holds %d tokens", room,
                        self.config.max_seq_len)
            max_new_tokens = room
        generator = None
        if seed is not None:
            generator = torch.Generator(device=idx.device)
            generator.manual_seed(seed)
        cache = None
        if use_cache:
            dtype = self.tok_emb.weight.dtype
            if torch.is_autocast_enabled(idx.device.type):
                dtype = torch.get_autocast_dtype(idx.device.type)
            cache = KVCache(self.config, B, idx.device, dtype)

        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        new_tokens = idx  # what the model has not seen yet: the whole prompt first, then one token
        for _ in range(max_new_tokens):
            if cache is not None:
                logits, _ = self(new_tokens, cache=cache)  # (B, 1, V)
            else:
                logits, _ = self(idx)  # (B, 1, V): the whole sequence again, no cache
            next_token = sample_next_token(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
            if eot_id is not None:
                next_token = torch.where(finished[:, None], torch.full_like(next_token, eot_id), next_token)
                finished |= next_token[:, 0] == eot_id
            idx = torch.cat((idx, next_token), dim=1)  # (B, T + 1)
            new_tokens = next_token  # (B, 1)
            if eot_id is not None and bool(finished.all()):
                break
        return idx


def sample_next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                      generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> token ids (B, 1)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # each (B, V)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        # Drop a token when the tokens before it already reach top_p (the first is always kept).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p  # (B, V)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order, (B, V)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
