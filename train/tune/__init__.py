"""Fine-tuning on top of the loop: instruction tuning (SFT), chat, classification heads."""
