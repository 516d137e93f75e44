"""``python -m csi``: same as ``fluidfs-csi``."""

from __future__ import annotations

import sys

from .server import main

sys.exit(main())
