"""Process and mount helpers of the benchmark harness: find, unmount and kill what a run started,
and read a process's CPU time and peak memory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from fluidfs.util.mounts import is_mounted, mounts_under
from fluidfs.util.proc import pid_alive


def mounted_under(root: Path) -> list[str]:
    return mounts_under(str(root.resolve()))


def force_unmount(path: str) -> None:
    for cmd in (["fusermount3", "-u", path], ["umount", path], ["fusermount3", "-uz", path], ["umount", "-l", path]):
        if not is_mounted(path):
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)


def kill_pid(pid: int, grace: float = 5.0) -> None:
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def pids_with_arg(exe_names: tuple[str, ...], needle: str) -> list[int]:
    """Pids whose argv[0] basename is in ``exe_names`` and whose argv contains ``needle``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")) in exe_names and needle.encode() in argv:
            out.append(int(d))
    return out


def _ancestors() -> set[int]:
    """This process and its parents (up to init)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def pids_naming(*needles: str) -> list[int]:
    """Pids (not this process or its ancestors) whose command line contains every one of ``needles``."""
    mine = _ancestors()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if all(n.encode() in cmd for n in needles):
            out.append(int(d))
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` so far (``/proc/PID/stat``), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def raise_readahead(mnt: str, kb: int) -> None:
    if kb <= 0:
        return
    dev = os.stat(mnt).st_dev
    with contextlib.suppress(OSError):
        Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").write_text(f"{kb}\n")


def wait_mounted(mnt: str, timeout: float, proc: subprocess.Popen[Any] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc is not None and proc.poll() not in (None, 0):
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise RuntimeError(f"mount of {mnt} failed (exit {proc.returncode}): {tail}")
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise RuntimeError(f"{mnt} not mounted after {timeout:.0f}s: {tail}")
        time.sleep(0.05)
