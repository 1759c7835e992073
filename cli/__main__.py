"""`python -m cli ...` (what torchrun runs: `torchrun ... -m cli pretrain ...`)."""

from cli import main

main()
