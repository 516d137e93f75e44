"""Loopback ports for test servers and tools.

Caveats: a port is found by binding port 0 and closing the socket, so another process could in
principle take it before the server binds it (the servers' start-up then fails with a clear
error and retries).
"""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (nothing listens there)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One TCP port on 127.0.0.1 that was free a moment ago (nothing listens there)."""
    return free_ports(1)[0]
