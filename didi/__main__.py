"""`python -m didi` (and `torchrun -m didi train ...`)."""

from .cli import main

main()
