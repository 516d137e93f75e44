"""Entry point: ``python -m tools.bench`` (the suite) and ``python -m tools.bench cluster`` (the cluster cache)."""

import sys

from tools.bench import clcli
from tools.bench.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["cluster"]:  # the cluster cache benchmark has its own options
        clcli.main(sys.argv[2:])
    else:
        main()
