"""``python -m fluidfs`` runs the command line."""

from __future__ import annotations

import sys

from fluidfs.cli.main import main

sys.exit(main())
