"""Runtime records: the small JSON file a running mount leaves for the CLI (``status``, ``umount``,
``refresh``, ``load``) — pid, mountpoint, dataset, sources, metrics URL and configuration.

A record lives in :func:`runtime_dir` as ``<sha256(realpath(mountpoint))[:16]>.json``; the daemon
writes it (tmp → rename) once the mount answers and removes it on exit.

Caveats: the record path is derived from the mountpoint's real path, which stats the mountpoint's
ancestors (and, through ``realpath``, the mountpoint itself).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from fluidfs.errors import MountError
from fluidfs.util.proc import pid_alive

log = logging.getLogger(__name__)


def runtime_dir() -> str:
    """Where runtime records live: /run/fluidfs for root, else $XDG_RUNTIME_DIR or /tmp."""
    if os.geteuid() == 0:
        return "/run/fluidfs"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fluidfs-{os.geteuid()}"
    return os.path.join(base, "fluidfs")


def record_path(mountpoint: str) -> str:
    h = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{h}.json")


def read_record(mountpoint: str) -> dict[str, Any] | None:
    """The record of ``mountpoint``, None if there is none (or it is unreadable)."""
    return _load(record_path(mountpoint))


def _load(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def records() -> Iterator[dict[str, Any]]:
    """Every readable record in :func:`runtime_dir` (live or stale)."""
    for path in glob.glob(os.path.join(runtime_dir(), "*.json")):
        rec = _load(path)
        if rec is not None:
            yield rec


def write_record(mountpoint: str, rec: dict[str, Any]) -> None:
    """Write ``rec`` as the record of ``mountpoint`` (atomically); a failure is logged, not raised."""
    path = record_path(mountpoint)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write runtime record %s: %s", path, exc)


def remove_record(mountpoint: str, pid: int) -> None:
    """Remove the record of ``mountpoint`` if process ``pid`` wrote it."""
    rec = read_record(mountpoint)
    if rec and rec.get("pid") == pid:
        try:
            os.unlink(record_path(mountpoint))
        except OSError:
            pass


def mount_record(path: str) -> dict[str, Any] | None:
    """The runtime record of the live fluidfs mount at ``path``, or None if it is not one."""
    if not os.path.isdir(path) or not os.path.ismount(path):
        return None
    rec = read_record(path)
    if not rec or os.path.realpath(str(rec.get("mountpoint", ""))) != os.path.realpath(path):
        return None
    return rec


def require_mount(path: str) -> dict[str, Any]:
    """Like :func:`mount_record` but raises MountError (exit 1) with a one-line reason."""
    rec = mount_record(path)
    if rec is None:
        raise MountError(f"{path} is not a fluidfs mount")
    pid = rec.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        raise MountError(
            f"{path}: its fluidfs daemon (pid {pid}) is not running; unmount it with fluidfs umount --lazy"
        )
    return rec


def find_mount(path: str) -> tuple[str, str] | None:
    """(mountpoint, path relative to it) if ``path`` is in a live fluidfs mount, else None."""
    if "://" in path or not os.path.exists(path):
        return None
    full = os.path.abspath(path)
    probe = full
    while True:
        if mount_record(probe) is not None:
            return probe, os.path.relpath(full, probe) if probe != full else ""
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
