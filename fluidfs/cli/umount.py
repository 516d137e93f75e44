"""``fluidfs umount MOUNTPOINT [--lazy] [--timeout S]``: unmount a fluidfs mount and wait for its daemon.

Only ``fuse.fluidfs`` mounts are unmounted (anything else: exit 1, use ``umount(8)``).  The mount
is found through the mount table, so a hung or crashed mount is unmounted at once; ``--lazy``
detaches it even while it is busy.  A daemon that has not exited ``--timeout`` seconds after the
unmount is stopped (SIGTERM, then SIGKILL), with one warning line.
"""

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
    p.add_argument("--lazy", "-z", action="store_true", help="detach even if busy or its daemon hangs or is dead")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the daemon to exit before stopping it"
    )
    p.set_defaults(handler=run)
