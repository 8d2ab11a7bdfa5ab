"""`python -m kvcrush ...`: the same command line as the `kvcrush` console script (kvcrush/cli.py)."""

from kvcrush.cli import main

raise SystemExit(main(prog="python -m kvcrush"))
