"""``fluidfs umount MOUNTPOINT [--lazy]``: unmount a fluidfs mount and wait for its daemon to exit."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fluidfs.daemon.spawn import unmount
from fluidfs.errors import EXIT_OK


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    unmount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("umount", help="unmount a fluidfs mount")
    p.add_argument("mountpoint")
    p.add_argument("--lazy", "-z", action="store_true", help="detach even if busy or its daemon is dead")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the daemon to exit")
    p.set_defaults(handler=run)
