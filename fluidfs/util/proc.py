"""Processes and the kernel seen through /proc: is a pid alive, how long has it run, drop the page cache.

Caveats: Linux only (reads ``/proc``); inside a PID namespace only its own processes are seen.
"""

from __future__ import annotations

import os


def _state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from ``/proc/<pid>/stat`` (``R``, ``S``, ``Z``...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, *, reap: bool = False) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a process we may not signal counts).

    With ``reap``, a zombie that is our own child is reaped (``waitpid``): a process that runs as
    PID 1 of its container inherits exited daemons and must not let them pile up.
    """
    state = _state(pid)
    if state in ("Z", "X") and reap:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return state is not None and state not in ("Z", "X")


def process_uptime(pid: int) -> float | None:
    """Seconds since process ``pid`` started, None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            start_ticks = int(f.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/uptime", encoding="utf-8") as f:
            boot_uptime = float(f.read().split()[0])
        return max(0.0, boot_uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def drop_page_cache() -> bool:
    """``sync`` and drop the kernel's page cache, dentries and inodes; False without the right (root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
