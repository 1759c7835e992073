"""`python -m pipeline.cli ...` (what torchrun runs: `torchrun ... -m pipeline.cli pretrain ...`)."""

from pipeline.cli import main

main()
