"""The cache root of the node: one SSD cache directory per dataset, and the removal of the ones
nobody uses.

A dataset's cache directory is named by the dataset's identity (the digest of its sources and
options, ``DatasetRequest.dataset_digest``), not by the credentials that read it: a volume whose
secret was rotated mounts the same data with new credentials and finds its cache warm.  A
directory is held (flock) by one daemon at a time, so while another mount of the same dataset
with *other* credentials holds it, the next one gets ``<id>-2``, ``<id>-3``...

A directory no mount uses is *idle*; the state file records since when (``State.idle_caches``).
:meth:`CacheDirs.collect` (called by the monitor) removes a directory idle for longer than the
grace period (``--cache-gc-grace``, default one day): it is renamed to ``.trash-...`` first (a
mount choosing it meanwhile cannot race the removal), then deleted.  When a new mount needs room
under the node's cache capacity, :meth:`CacheDirs.evict` removes idle directories before the
grace period, least recently used first.  Anything in the cache root that is not named like a
cache directory is left alone.

Caveats: the bytes an idle directory holds are measured by walking it (``st_blocks``) when it
becomes idle and remembered; the walk of a large cache takes a second or so.  Reusing a
directory across credentials means a principal that may *list* a bucket but not *read* its
objects could read blocks another principal cached: give such datasets different sources.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Collection, MutableMapping

from .state import IdleCache

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[0-9a-f]{20}(-[0-9]+)?$")
TRASH = ".trash-"
ID_LENGTH = 20


def dir_usage(path: str) -> int:
    """Bytes ``path`` holds on disk (allocated blocks), symlinks not followed."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except OSError:
            continue
    return total


class CacheDirs:
    """Cache directories under ``root``; the caller serialises calls (its admission lock)."""

    def __init__(self, root: str, grace: float) -> None:
        self.root = root
        self.grace = grace

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def choose(self, dataset_id: str, busy: Collection[str]) -> str:
        """The directory name for a new mount of ``dataset_id``: the dataset's own, unless a
        running mount holds it (then the first free ``<id>-<n>``)."""
        base = dataset_id[:ID_LENGTH]
        if base not in busy:
            return base
        n = 2
        while f"{base}-{n}" in busy:
            n += 1
        return f"{base}-{n}"

    def names(self) -> list[str]:
        """Cache directories present on disk."""
        try:
            return sorted(n for n in os.listdir(self.root) if NAME_RE.match(n) and os.path.isdir(self.path(n)))
        except OSError:
            return []

    def track(self, idle: MutableMapping[str, IdleCache], in_use: Collection[str], now: float) -> bool:
        """Bring ``idle`` up to date with the disk: directories no mount uses become idle (since
        ``now`` if newly seen), used or vanished ones are dropped.  Returns whether it changed."""
        present = set(self.names())
        changed = False
        for name in list(idle):
            if name in in_use or name not in present:
                del idle[name]
                changed = True
        for name in sorted(present - set(in_use) - set(idle)):
            idle[name] = IdleCache(since=now)
            changed = True
        return changed

    @staticmethod
    def idle_bytes(idle: MutableMapping[str, IdleCache]) -> int:
        """What the idle directories hold, as far as they were measured."""
        return sum(e.bytes or 0 for e in idle.values())

    def expired(self, idle: MutableMapping[str, IdleCache], now: float) -> list[str]:
        return sorted(n for n, e in idle.items() if now - e.since >= self.grace)

    def discard(self, idle: MutableMapping[str, IdleCache], names: list[str]) -> list[str]:
        """Take ``names`` out of use at once (renamed to trash); :meth:`empty_trash` deletes them."""
        trashed = []
        for name in names:
            idle.pop(name, None)
            dst = self.path(f"{TRASH}{name}-{time.time_ns()}")
            try:
                os.rename(self.path(name), dst)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("cache directory %s: cannot remove: %s", self.path(name), e.strerror or e)
                continue
            trashed.append(dst)
        return trashed

    def evict(self, idle: MutableMapping[str, IdleCache], need: int) -> tuple[int, list[str]]:
        """Discard idle directories, least recently used first, until ``need`` bytes are freed
        (or none is left); returns (bytes freed, trashed paths)."""
        freed, names = 0, []
        for name, entry in sorted(idle.items(), key=lambda kv: kv[1].since):
            if freed >= need:
                break
            freed += entry.bytes or 0
            names.append(name)
        for name in names:
            log.info("cache directory %s: unused since %s; removed to make room", name, _ago(idle[name].since))
        return freed, self.discard(idle, names)

    def empty_trash(self, paths: list[str] | None = None) -> None:
        """Delete trashed directories (``paths``, or every one in the root)."""
        if paths is None:
            try:
                paths = [self.path(n) for n in os.listdir(self.root) if n.startswith(TRASH)]
            except OSError:
                return
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)


def _ago(since: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
