"""Processes and the kernel seen through /proc: is a pid alive, which process is it (start time,
command line, state), how long has it run, drop the page cache.

A pid alone does not name a process for long: once it exits, the pid is reused.  A pid together
with its start time (:func:`start_time`, clock ticks since boot) does, for as long as the
machine runs.

Caveats: Linux only (reads ``/proc``); inside a PID namespace only its own processes are seen.
"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``R``, ``S``, ``D``, ``T`` stopped, ``Z``...), None if gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (with the pid, the process's identity); None if gone."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` ([] if it is gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]]


def pid_alive(pid: int, *, reap: bool = False) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a process we may not signal counts).

    With ``reap``, a zombie that is our own child is reaped (``waitpid``): a process that runs as
    PID 1 of its container inherits exited daemons and must not let them pile up.
    """
    st = state(pid)
    if st in ("Z", "X") and reap:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return st is not None and st not in ("Z", "X")


def process_uptime(pid: int) -> float | None:
    """Seconds since process ``pid`` started, None if unknown."""
    start_ticks = start_time(pid)
    if start_ticks is None:
        return None
    try:
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
