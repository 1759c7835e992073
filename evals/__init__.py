"""Zero-shot benchmark evaluation: task files (`tasks`, no torch needed) and batched log-likelihood scoring
(`scoring`) of crawlgpt checkpoints and Hugging Face model folders."""
