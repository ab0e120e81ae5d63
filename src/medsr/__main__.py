"""`python -m medsr` (and `torchrun -m medsr`) runs the command-line tool."""

from medsr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
