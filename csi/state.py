"""The CSI plugin's persistent state: what is mounted where, kept in one JSON file.

The file (``<state-dir>/state.json``) is rewritten atomically (write ``state.json.tmp``, fsync,
rename) after every change, so a plugin killed at any moment restarts from a consistent picture
and can repair every shared mount, staging bind and published bind (see ``csi/recovery.py``).

Format (``version`` 1)::

    {
      "version": 1,
      "mounts": {                       # one per dataset key (shared node-level fluidfs mount)
        "<key>": {"key", "mountpoint", "source", "args": [...], "cache_dir", "secret_dir",
                  "pid_file", "release_at": float|null, "daemon_pid": int|null, "daemon_start"}
      },
      "volumes": {                      # one per staged (or ephemeral) volume
        "<volume_id>": {"volume_id", "key", "staging_target_path", "ephemeral", "context_digest",
                        "sub_path", "capability", "publications": {
                           "<target_path>": {"target_path", "readonly", "capability"}}}
      },
      "controller": {"<name>": {"volume_id", "digest"}},   # CreateVolume idempotency
      "tombstones": [["<volume_id>", "<path>"], ...]       # recently removed, bounded
    }

Secrets never enter this file: they live only in 0600 files under ``secret_dir``.

Caveats: one plugin process per state directory (``StateStore.lock`` takes an flock).  The
objects are not thread-safe: their owner (``csi/mounts.py``) serialises access.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_TOMBSTONES = 1024


@dataclass
class Publication:
    """One NodePublishVolume: a read-only bind of the dataset (or its subPath) at target_path."""

    target_path: str
    readonly: bool = True
    capability: str = ""  # canonical digest of the VolumeCapability, for idempotency checks


@dataclass
class Volume:
    """A staged volume (or an ephemeral inline volume staged internally)."""

    volume_id: str
    key: str  # dataset key of the shared mount it uses
    staging_target_path: str = ""  # "" for ephemeral volumes
    ephemeral: bool = False
    context_digest: str = ""
    sub_path: str = ""
    capability: str = ""
    publications: dict[str, Publication] = field(default_factory=dict)


@dataclass
class SharedMount:
    """One node-level fluidfs mount of a dataset, shared by every volume with the same key."""

    key: str
    mountpoint: str
    source: str  # path of the generated Dataset YAML
    args: list[str] = field(default_factory=list)  # extra `fluidfs mount` flags (cache etc.)
    cache_dir: str = ""
    secret_dir: str = ""
    pid_file: str = ""
    release_at: float | None = None  # unmount when time.time() passes this (grace period)
    daemon_pid: int | None = None  # the daemon started for this mount ...
    daemon_start: str = ""  # ... and its "<boot id>:<start ticks>" (a pid alone may be reused)


@dataclass
class State:
    mounts: dict[str, SharedMount] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    controller: dict[str, dict[str, str]] = field(default_factory=dict)
    tombstones: list[tuple[str, str]] = field(default_factory=list)

    def users_of(self, key: str) -> list[Volume]:
        """Volumes currently using the shared mount ``key``."""
        return [v for v in self.volumes.values() if v.key == key]

    def add_tombstone(self, volume_id: str, path: str) -> None:
        entry = (volume_id, path)
        if entry in self.tombstones:
            self.tombstones.remove(entry)
        self.tombstones.append(entry)
        del self.tombstones[:-MAX_TOMBSTONES]

    def has_tombstone(self, volume_id: str, path: str) -> bool:
        return (volume_id, path) in self.tombstones

    def forget_tombstone(self, volume_id: str, path: str) -> None:
        if (volume_id, path) in self.tombstones:
            self.tombstones.remove((volume_id, path))

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "mounts": {k: dataclasses.asdict(m) for k, m in self.mounts.items()},
            "volumes": {k: dataclasses.asdict(v) for k, v in self.volumes.items()},
            "controller": self.controller,
            "tombstones": [list(t) for t in self.tombstones],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        mounts = {k: SharedMount(**m) for k, m in data.get("mounts", {}).items()}
        volumes = {}
        for k, v in data.get("volumes", {}).items():
            pubs = {t: Publication(**p) for t, p in v.pop("publications", {}).items()}
            volumes[k] = Volume(**v, publications=pubs)
        return cls(
            mounts=mounts,
            volumes=volumes,
            controller=dict(data.get("controller", {})),
            tombstones=[(str(a), str(b)) for a, b in data.get("tombstones", [])],
        )


class StateStore:
    """Loads and atomically saves ``State`` in ``state_dir/state.json``."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "state.json")
        self._lock_fd: int | None = None
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)

    def lock(self) -> None:
        """Take an exclusive flock on the state dir; raises OSError if another plugin holds it."""
        fd = os.open(os.path.join(self.state_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def load(self) -> State:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return State()
        except (OSError, ValueError) as e:
            # A corrupt file cannot come from save() (atomic rename); keep it for inspection.
            bad = self.path + ".corrupt"
            log.error("state file %s unreadable (%s); moved to %s, starting empty", self.path, e, bad)
            os.replace(self.path, bad)
            return State()
        return State.from_json(data)

    def save(self, state: State) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state.to_json(), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
