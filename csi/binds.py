"""Read-only binds of a dataset's shared mount: fresh binds at stage and publish, repairs stacked on dead ones.

A stage binds the shared mount at the volume's ``staging_target_path``; a publish binds it (or its
``subPath``) at the ``target_path``.  A bind that does not answer is repaired by a fresh bind
*stacked on top of* it, never unmounted first, so the repair reaches the containers' copies of
the target (``csi/mountops.py`` explains why).  The caller holds the dataset's lock
(``csi/mounts.py``).

Caveats: a repair over a staging directory that kubelet removed is skipped (kubelet unstages the
volume next).
"""

from __future__ import annotations

import logging
import os

from fluidfs.util.mounts import is_mounted

from . import metrics
from .daemons import MountFailed
from .mountops import bind_ro, healthy_mount, path_kind, top_device, unmount_all
from .state import SharedMount, Volume
from .volumes import RequestError

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0  # one statvfs health check


def healthy(path: str) -> bool:
    """Whether the mount at ``path`` answers within :data:`PROBE_TIMEOUT`."""
    return healthy_mount(path, PROBE_TIMEOUT)


def source_path(mountpoint: str, vol: Volume) -> str:
    """What ``vol`` publishes of the shared mount at ``mountpoint``: all of it, or its ``subPath``."""
    return os.path.join(mountpoint, vol.sub_path) if vol.sub_path else mountpoint


def create_target(dst: str, is_dir: bool) -> None:
    """Create a missing bind target (a directory, or a file for a file of the dataset)."""
    if os.path.lexists(dst):
        return
    if is_dir:
        os.makedirs(dst, exist_ok=True)
    else:
        open(dst, "a").close()


def fresh_bind(src: str, dst: str, *, create_dir: bool | None = None) -> None:
    """A new bind at ``dst`` (stage, publish): whatever was left there is removed first (no
    container uses a path before the call that creates it has succeeded).  ``create_dir``:
    create a missing ``dst`` as a directory (True) or a file (False)."""
    unmount_all(dst, lazy=True)
    if create_dir is not None:
        create_target(dst, create_dir)
    try:
        bind_ro(src, dst, probe_timeout=PROBE_TIMEOUT)
    except OSError as e:
        raise MountFailed(f"bind {src} -> {dst} failed: {e.strerror or e}") from None


def repair_bind(src: str, dst: str, *, create: bool = False) -> None:
    """Stack a fresh bind on top of the dead one at ``dst`` (never unmount first)."""
    if create and not is_mounted(dst):
        kind = path_kind(src, PROBE_TIMEOUT)
        if kind not in ("dir", "file"):
            raise MountFailed(f"re-bind {src} -> {dst}: the dataset path is {kind}")
        create_target(dst, kind == "dir")
    try:
        bind_ro(src, dst, probe_timeout=PROBE_TIMEOUT)
    except OSError as e:
        raise MountFailed(f"re-bind {src} -> {dst} failed: {e.strerror or e}") from None


def repair_volume(m: SharedMount, v: Volume) -> int:
    """Re-bind every staging and target bind of ``v`` that does not answer; returns the repairs made."""
    repairs = 0
    paths = [v.staging_target_path] if v.staging_target_path else []
    live = top_device(m.mountpoint)
    for p in paths + list(v.publications):
        if healthy(p):
            continue
        if live is not None and top_device(p) == live:
            # Already a bind of the current dataset mount: that mount itself is what failed
            # (it died after it was checked); the next check mounts it again.
            continue
        staging = p == v.staging_target_path
        if staging and not is_mounted(p) and not os.path.isdir(p):
            continue  # kubelet removed its staging dir; it will unstage the volume
        src = m.mountpoint if staging else source_path(m.mountpoint, v)
        try:
            log.warning("volume %s: bind at %s does not answer; binding the dataset over it", v.volume_id, p)
            repair_bind(src, p, create=not staging)
            metrics.RECOVERIES.labels(kind="bind").inc()
            repairs += 1
        except (RequestError, OSError) as e:
            log.error("volume %s: re-bind of %s failed: %s", v.volume_id, p, e)
    return repairs
