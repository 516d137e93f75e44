"""Weighted rendezvous (highest random weight) hashing of block keys over cluster members.

Every member ``m`` gets a score for a key: ``-weight(m) / ln(u(m, key))`` where ``u`` is a
64-bit hash of (member id, key) mapped into the open interval (0, 1).  The member with the
highest score owns the key; the ``k`` highest are its ``k`` owners (``replicas``).  This is the
*logarithmic method* (Schindelhauer & Schomaker; Resch's "weighted rendezvous"): the
probability that a member wins is exactly its weight over the total weight, and a member that
joins or leaves moves only the keys it wins or won — every other key keeps its owner because
the other members' scores do not change.

The score depends only on (member id, weight, key), so every member computes the same owners
from the same member set without talking to anyone.  Keys are hashed through
``BlockKey.digest`` (sha256 of url, version, block size and index); the per-member hash is an
8-byte blake2b keyed by the member id (precomputed once per member).

Caveats: a lookup costs one blake2b per member (~1 µs each here): ~12 µs for 16 members,
negligible next to a block transfer but linear in the cluster size — fine to a few hundred
members.  Members with the same id are one member (membership rejects duplicates).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fluidfs.cache.base import BlockKey

__all__ = ["Weighted", "Ring", "key_bytes", "shares"]

_TWO64 = float(1 << 64)


class Weighted(Protocol):
    """What the ring needs of a member: a stable id and a positive weight."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float: ...


def key_bytes(key: BlockKey | bytes | str) -> bytes:
    """The bytes hashed for a key: the raw sha256 digest of a BlockKey, or the bytes given."""
    if isinstance(key, BlockKey):
        return bytes.fromhex(key.digest)
    if isinstance(key, str):
        return key.encode("utf-8", "surrogateescape")
    return key


def _unit(h: int) -> float:
    """Map a 64-bit hash into the open interval (0, 1) (never 0: ln(0) would be -inf)."""
    return (h + 0.5) / _TWO64


def _member_key(member_id: str) -> bytes:
    raw = member_id.encode("utf-8", "surrogateescape")
    # blake2b keys are at most 64 bytes; longer ids are folded through sha256 first
    return raw if 0 < len(raw) <= 64 else hashlib.sha256(raw).digest()


@dataclass(frozen=True, slots=True)
class _Slot:
    id: str
    weight: float
    hkey: bytes  # blake2b key derived from the id


class Ring:
    """The owners of keys over one fixed set of weighted members (immutable)."""

    def __init__(self, members: Iterable[Weighted]) -> None:
        slots: list[_Slot] = []
        seen: set[str] = set()
        for m in members:
            if m.id in seen:
                raise ValueError(f"duplicate member id {m.id!r}")
            if not (m.weight > 0 and math.isfinite(m.weight)):
                raise ValueError(f"member {m.id!r}: weight must be a positive number, got {m.weight!r}")
            seen.add(m.id)
            slots.append(_Slot(m.id, float(m.weight), _member_key(m.id)))
        slots.sort(key=lambda s: s.id)  # deterministic tie order
        self._slots = tuple(slots)
        self._total = sum(s.weight for s in slots)

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self._slots)

    def ranked(self, key: BlockKey | bytes | str) -> list[str]:
        """All member ids, best owner first."""
        kb = key_bytes(key)
        scored: list[tuple[float, str]] = []
        for s in self._slots:
            h = hashlib.blake2b(kb, digest_size=8, key=s.hkey).digest()
            scored.append((-s.weight / math.log(_unit(int.from_bytes(h, "little"))), s.id))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [i for _s, i in scored]

    def owners(self, key: BlockKey | bytes | str, k: int = 1) -> list[str]:
        """The ids of the ``k`` owners of ``key`` (fewer if the ring is smaller), best first."""
        if k <= 0 or not self._slots:
            return []
        if k == 1:
            kb = key_bytes(key)
            best_id = ""
            best = -1.0
            for s in self._slots:
                h = hashlib.blake2b(kb, digest_size=8, key=s.hkey).digest()
                sc = -s.weight / math.log(_unit(int.from_bytes(h, "little")))
                if sc > best:
                    best, best_id = sc, s.id
            return [best_id]
        return self.ranked(key)[:k]

    def owner(self, key: BlockKey | bytes | str) -> str | None:
        """The id of the first owner of ``key`` (None for an empty ring)."""
        got = self.owners(key, 1)
        return got[0] if got else None

    def share(self, member_id: str) -> float:
        """The expected fraction of keys ``member_id`` owns: its weight over the total (0 if absent)."""
        for s in self._slots:
            if s.id == member_id:
                return s.weight / self._total
        return 0.0


def shares(ring: Ring, keys: Sequence[BlockKey | bytes | str]) -> dict[str, float]:
    """Measured fraction of ``keys`` owned by each member (for tests, benchmarks and status)."""
    counts = dict.fromkeys(ring.ids, 0)
    for key in keys:
        owner = ring.owner(key)
        if owner is not None:
            counts[owner] += 1
    n = max(1, len(keys))
    return {i: c / n for i, c in counts.items()}
