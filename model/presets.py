"""The model presets: widths and depths by name. Plain data (no torch), so the command line can list
them and the auto defaults can read them without importing torch."""

from __future__ import annotations

# Widths and depths only; the vocabulary comes from the tokenizer and is filled in by `preset_config`.
PRESETS: dict[str, dict] = {
    # Trains in seconds on a CPU; for tests and smoke runs.
    "tiny": dict(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=128),
    # About 28M parameters with a 16k vocabulary (8M of them the tied embedding); the CPU default.
    "small": dict(n_layer=6, n_head=8, d_model=512, max_seq_len=256),
    # GPT-2 small sized: 124M parameters with GPT-2's 50k vocabulary.
    "gpt2-124m": dict(n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
    # GPT-2 medium sized.
    "350m": dict(n_layer=24, n_head=16, d_model=1024, max_seq_len=1024),
    # TinyLlama shaped: grouped-query attention with 4 key/value heads, untied head.
    "1b": dict(n_layer=22, n_head=32, n_kv_head=4, d_model=2048, ffn_hidden=5632, max_seq_len=2048,
               tie_embeddings=False),
}
