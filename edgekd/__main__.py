"""`python -m edgekd` (what torchrun launches for --nproc)."""

from edgekd.cli import main

main()
