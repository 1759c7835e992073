"""Alignment on top of the loop: preference data, reward model, DPO, PPO and the judge."""
