"""Cluster membership: members, the static peers file, and the view of who owns which block.

A :class:`Member` is ``(id, address, weight)``.  The static peers file has one member per line::

    # ID        HOST:PORT         [WEIGHT]
    worker-0    10.0.0.5:7070     100
    node-a      [fd00::7]:7070    50

blank lines and ``#`` comments are ignored; a bad line, a duplicate id or a duplicate address is
a :class:`~fluidfs.errors.ConfigError` naming the file and line.  Ids are at most 63 characters
of ``[A-Za-z0-9._-]`` (they are metric label values); weights are positive numbers (use the
cache capacity in GiB, as members announce theirs).  A member without a weight in its line (and
every member found through Kubernetes) weighs what it announces (``/v1/info``; see
``weights.py``): :meth:`MembershipView.learn` records the announced weights and applies them.

:class:`MembershipView` holds the current member set (a :class:`~fluidfs.cluster.hashing.Ring`),
which member is *this* process (by id, or by its listen address), and the previous member sets
(bounded by count and age) so that a new owner that misses can ask the previous owner before
the source.  Anything that learns of a new member set (the :class:`PeersFileWatcher` here, the
Kubernetes discovery in ``kubediscovery.py``) calls :meth:`MembershipView.update`.

Caveats: a member is recognised by its listen address only if the peers file spells it the
same way (``127.0.0.1:7070`` is not ``localhost:7070``); a wildcard listen address needs an
explicit member id.  A member not named in the member set still reads through its peers but
owns no block.  The file is polled (``stat`` every ``poll_interval`` seconds in a worker
thread): an edit becomes visible within one interval, and an edit that keeps size and mtime
within one timestamp tick can be missed until the next change.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from fluidfs import metrics
from fluidfs.cache.base import BlockKey
from fluidfs.cluster.hashing import Ring
from fluidfs.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "Member",
    "Snapshot",
    "MembershipView",
    "PeersFileWatcher",
    "parse_address",
    "parse_peers",
    "load_peers_file",
]

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,63}")
_HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,253}")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def parse_address(text: str, *, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` → ``(host, port)`` (host without brackets, lowercased).

    ``any_port``: accept port 0 (listen on any free port).  Raises ValueError (one line).
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"bad address {text!r} (IPv6 addresses are written [ADDR]:PORT)")
        host, port_s = text[1:end], text[end + 2 :]
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise ValueError(f"bad IPv6 address in {text!r}")
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {text!r} (expected HOST:PORT)")
        if ":" in host:
            raise ValueError(f"bad address {text!r} (IPv6 addresses are written [ADDR]:PORT)")
        if not _HOST_RE.fullmatch(host):
            raise ValueError(f"bad host name in {text!r}")
    if not port_s.isdigit() or not (0 if any_port else 1) <= int(port_s) <= 65535:
        raise ValueError(f"bad port in {text!r} (expected 1-65535)")
    return host.lower(), int(port_s)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Member:
    """One cluster member: a stable id, where its peer server listens, its weight (capacity)."""

    id: str
    address: str  # normalised HOST:PORT ([v6]:PORT)
    weight: float = 1.0
    # False: nobody gave a weight (a peers-file line without one, a Kubernetes endpoint): the
    # member's own announced weight applies once known (MembershipView.learn)
    weight_given: bool = field(default=True, compare=False)

    @property
    def host(self) -> str:
        return parse_address(self.address)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address)[1]

    @classmethod
    def make(cls, member_id: str, address: str, weight: float = 1.0, *, weight_given: bool = True) -> Member:
        """Validated constructor (raises ValueError with a one-line message)."""
        if not _ID_RE.fullmatch(member_id):
            raise ValueError(f"bad member id {member_id!r} (1-63 characters of A-Z a-z 0-9 . _ -)")
        host, port = parse_address(address)
        if host in WILDCARD_HOSTS:
            raise ValueError(f"member {member_id}: {address!r} is a wildcard address, not one peers can reach")
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"member {member_id}: weight must be a positive number, got {weight!r}")
        return cls(member_id, format_address(host, port), float(weight), weight_given)


def parse_peers(text: str, name: str = "<peers>") -> tuple[Member, ...]:
    """Parse a peers file's text; raise ConfigError ``NAME:LINE: problem`` on the first bad line."""
    members: list[Member] = []
    ids: dict[str, int] = {}
    addrs: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{name}:{lineno}"
        if len(fields) < 2:
            raise ConfigError(f"{where}: expected 'ID HOST:PORT [WEIGHT]', got {line!r}")
        if len(fields) > 3:
            raise ConfigError(f"{where}: too many fields in {line!r} (expected 'ID HOST:PORT [WEIGHT]')")
        weight = 1.0
        if len(fields) == 3:
            try:
                weight = float(fields[2])
            except ValueError:
                raise ConfigError(f"{where}: bad weight {fields[2]!r} (expected a positive number)") from None
        try:
            m = Member.make(fields[0], fields[1], weight, weight_given=len(fields) == 3)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if m.id in ids:
            raise ConfigError(f"{where}: duplicate member id {m.id!r} (first on line {ids[m.id]})")
        if m.address in addrs:
            raise ConfigError(f"{where}: duplicate address {m.address} (first on line {addrs[m.address]})")
        ids[m.id] = lineno
        addrs[m.address] = lineno
        members.append(m)
    return tuple(members)


def load_peers_file(path: str) -> tuple[Member, ...]:
    """Read and parse a peers file (blocking).  Raises ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"peers file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"peers file {path}: not UTF-8 text") from None
    return parse_peers(text, path)


@dataclass(frozen=True)
class Snapshot:
    """One member set and its ring (immutable)."""

    generation: int
    members: tuple[Member, ...]
    ring: Ring = field(repr=False)
    by_id: dict[str, Member] = field(repr=False)

    @classmethod
    def of(cls, generation: int, members: Iterable[Member]) -> Snapshot:
        ms = tuple(sorted(members, key=lambda m: m.id))
        return cls(generation, ms, Ring(ms), {m.id: m for m in ms})

    def same_members(self, other: Sequence[Member]) -> bool:
        return self.members == tuple(sorted(other, key=lambda m: m.id))


class MembershipView:
    """The current member set, who this process is, and recent previous member sets.

    ``self_id`` names this member; without it, ``listen`` (``HOST:PORT``) is matched against
    the members' addresses at every update.  Not thread-safe: update it from the trio thread.
    """

    def __init__(
        self,
        dataset: str,
        *,
        self_id: str | None = None,
        listen: str | None = None,
        history_size: int = 4,
        history_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dataset = dataset
        self._fixed_id = self_id
        self._listen: str | None = None
        if listen is not None:
            try:
                host, port = parse_address(listen, any_port=True)
            except ValueError as exc:
                raise ConfigError(f"listen address: {exc}") from None
            if host in WILDCARD_HOSTS and self_id is None:
                raise ConfigError(
                    f"listen address {listen} is a wildcard: name this member (member id) or listen on "
                    "the address the peers use"
                )
            self._listen = format_address(host, port)
        self._history_size = history_size
        self._history_ttl = history_ttl
        self._clock = clock
        self.current = Snapshot.of(0, ())
        self.given: tuple[Member, ...] = ()  # the member set as last given (before learned weights)
        self.learned: dict[str, tuple[str, float]] = {}  # member id -> (address, weight it announced)
        self.history: deque[tuple[Snapshot, float]] = deque()  # (set, replaced at), newest first
        self.self_id: str | None = None
        self._listeners: list[Callable[[MembershipView], None]] = []
        self._warned_absent = False
        self.changed = trio.Event()

    # ------------------------------------------------------------------------------ updates

    def on_change(self, callback: Callable[[MembershipView], None]) -> None:
        """Call ``callback(view)`` after every applied change (from the trio thread)."""
        self._listeners.append(callback)

    def update(self, members: Sequence[Member], reason: str = "") -> bool:
        """Apply a new member set; False if it equals the current one.

        Members without a given weight weigh what they announced (:meth:`learn`), else the
        median of the announced weights (1 while none is known).
        """
        self.given = tuple(members)
        members = self._weighed(self.given)
        if self.current.same_members(members):
            return False
        old = self.current
        new = Snapshot.of(old.generation + 1, members)
        if old.members:
            self.history.appendleft((old, self._clock()))
            while len(self.history) > self._history_size:
                self.history.pop()
        self.current = new
        self.self_id = self._identify(new)
        metrics.PEER_MEMBERS.labels(self.dataset).set(len(new.members))
        metrics.PEER_OWNERSHIP.labels(self.dataset).set(new.ring.share(self.self_id) if self.self_id else 0.0)
        if old.members:
            metrics.PEER_MEMBERSHIP_CHANGES.labels(self.dataset).inc()
        added = sorted(set(new.by_id) - set(old.by_id))
        removed = sorted(set(old.by_id) - set(new.by_id))
        log.info(
            "dataset %s: membership generation %d: %d members (added %s, removed %s)%s; this member is %s",
            self.dataset, new.generation, len(new.members), added or "none", removed or "none",
            f" ({reason})" if reason else "", self.self_id or "not a member (reads through peers, owns nothing)",
        )  # fmt: skip
        changed, self.changed = self.changed, trio.Event()
        for cb in list(self._listeners):
            cb(self)
        changed.set()
        return True

    def _weighed(self, members: Sequence[Member]) -> list[Member]:
        known = sorted(w for _a, w in self.learned.values())
        default = known[len(known) // 2] if known else 1.0
        out = []
        for m in members:
            if not m.weight_given:
                got = self.learned.get(m.id)
                weight = got[1] if got is not None and got[0] == m.address else default
                m = Member(m.id, m.address, weight, False)
            out.append(m)
        return out

    def unweighed(self) -> list[Member]:
        """Members of the given set whose announced weight is not known (for their address)."""
        return [m for m in self.given if not m.weight_given and self.learned.get(m.id, ("", 0.0))[0] != m.address]

    def learn(self, weights: dict[str, tuple[str, float]], reason: str = "weights announced") -> bool:
        """Record weights members announced (``id -> (address, weight)``); apply them if they change the set."""
        self.learned.update(weights)
        known = {m.id for m in self.given}
        for mid in [mid for mid in self.learned if mid not in known]:
            if len(self.learned) <= 4 * max(1, len(known)):
                break
            del self.learned[mid]  # bounded: forget members long gone
        return self.update(self.given, reason)

    def _identify(self, snap: Snapshot) -> str | None:
        if self._fixed_id is not None:
            found = self._fixed_id if self._fixed_id in snap.by_id else None
        else:
            found = next((m.id for m in snap.members if m.address == self._listen), None)
        if found is None and snap.members and not self._warned_absent:
            self._warned_absent = True
            log.warning(
                "dataset %s: this member (%s) is not in the member set; it reads through its peers but owns no blocks",
                self.dataset, self._fixed_id or self._listen or "no listen address",
            )  # fmt: skip
        if found is not None:
            self._warned_absent = False
        return found

    # ----------------------------------------------------------------------------- queries

    @property
    def me(self) -> Member | None:
        return self.current.by_id.get(self.self_id) if self.self_id else None

    def owners(self, key: BlockKey, k: int = 1) -> list[Member]:
        """The ``k`` current owners of ``key``, best first (this member included if it is one)."""
        snap = self.current
        return [snap.by_id[i] for i in snap.ring.owners(key, k)]

    def candidates(self, key: BlockKey, k: int) -> list[Member]:
        """The current members in rank order for ``key`` (at most ``k``)."""
        snap = self.current
        return [snap.by_id[i] for i in snap.ring.ranked(key)[:k]]

    def previous_owners(self, key: BlockKey, k: int = 1, limit: int = 2) -> list[Member]:
        """Members that owned ``key`` in recent previous member sets and do not own it now.

        Newest set first, without this member, at most ``limit``; sets older than the history
        TTL are dropped here.
        """
        now = self._clock()
        while self.history and now - self.history[-1][1] > self._history_ttl:
            self.history.pop()
        current = set(self.current.ring.owners(key, k))
        out: list[Member] = []
        seen: set[str] = set()
        for snap, _at in self.history:
            for mid in snap.ring.owners(key, k):
                if mid in current or mid in seen or mid == self.self_id:
                    continue
                seen.add(mid)
                # the address may have changed since: prefer the current one
                out.append(self.current.by_id.get(mid) or snap.by_id[mid])
                if len(out) >= limit:
                    return out
        return out

    def member(self, member_id: str) -> Member | None:
        """A member of the current set, else of a remembered previous set."""
        found = self.current.by_id.get(member_id)
        if found is not None:
            return found
        for snap, _at in self.history:
            if member_id in snap.by_id:
                return snap.by_id[member_id]
        return None


class PeersFileWatcher:
    """Keeps a :class:`MembershipView` equal to a peers file, polling it for changes.

    ``load()`` reads the file once (blocking; call it at start-up, where a bad file is a
    ConfigError).  ``run()`` polls it (``stat`` and re-read in worker threads through
    ``limiter``); a file that becomes unreadable or malformed keeps the last good member set
    and logs the problem once per distinct error.
    """

    def __init__(
        self,
        path: str,
        view: MembershipView,
        *,
        poll_interval: float = 2.0,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.path = path
        self.view = view
        self.poll_interval = poll_interval
        self.limiter = limiter or trio.CapacityLimiter(1)
        self._stamp: tuple[int, int, int, int] | None = None
        self._last_error = ""

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def load(self) -> tuple[Member, ...]:
        """Read the file now and apply it; raises ConfigError (for start-up)."""
        stamp = self._stat()
        members = load_peers_file(self.path)
        self._stamp = stamp
        self.view.update(members, f"peers file {self.path}")
        return members

    def _reload(self) -> tuple[tuple[int, int, int, int] | None, tuple[Member, ...] | str]:
        stamp = self._stat()
        try:
            return stamp, load_peers_file(self.path)
        except ConfigError as exc:
            return stamp, str(exc)

    async def check(self) -> bool:
        """Re-read the file if it changed; True if the membership changed."""
        stamp = await trio.to_thread.run_sync(self._stat, limiter=self.limiter)
        if stamp == self._stamp and not self._last_error:
            return False
        if stamp is None:
            self._problem(f"peers file {self.path}: cannot stat it (keeping the last member set)")
            return False
        if stamp == self._stamp:
            return False
        stamp, got = await trio.to_thread.run_sync(self._reload, limiter=self.limiter)
        self._stamp = stamp
        if isinstance(got, str):
            self._problem(f"{got} (keeping the last member set)")
            return False
        self._last_error = ""
        return self.view.update(got, f"peers file {self.path} changed")

    def _problem(self, message: str) -> None:
        if message != self._last_error:
            log.warning("dataset %s: %s", self.view.dataset, message)
        self._last_error = message

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await trio.sleep(self.poll_interval)
            try:
                await self.check()
            except OSError as exc:  # pragma: no cover - _stat/_reload catch what they expect
                self._problem(f"peers file {self.path}: {exc}")
