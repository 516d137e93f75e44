"""``fluidfs refresh MOUNTPOINT``: make a mount forget its cached metadata (see source changes now)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fluidfs.daemon.spawn import request_refresh
from fluidfs.errors import EXIT_OK


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    request_refresh(args.mountpoint)
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("refresh", help="forget cached metadata of a mount (see source changes now)")
    p.add_argument("mountpoint")
    p.set_defaults(handler=run)
