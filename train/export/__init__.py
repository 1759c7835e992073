"""Checkpoints out: Hugging Face folders and GGUF files."""
