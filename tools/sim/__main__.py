"""Entry point: ``python -m tools.sim``."""

from tools.sim.cli import main

if __name__ == "__main__":
    main()
