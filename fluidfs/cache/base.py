"""Block identity and the tier interface shared by every cache tier.

A block is ``block_size`` bytes of one *version* of one object; its key carries the object's
URL, version token, the block size and the block index, so a changed object (new ETag) or a
different block size can never hit old blocks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

Buffer = bytes | memoryview


@dataclass(frozen=True, slots=True)
class BlockKey:
    url: str  # full object URL, e.g. s3://bucket/prefix/file (stable across mounts)
    version: str  # the object's version token
    block_size: int
    index: int  # block number: covers [index*block_size, (index+1)*block_size)

    @property
    def digest(self) -> str:
        """Stable hex name for this block (used as the SSD file name)."""
        h = hashlib.sha256(
            f"{self.url}\0{self.version}\0{self.block_size}\0{self.index}".encode("utf-8", "surrogateescape")
        )
        return h.hexdigest()

    @property
    def start(self) -> int:
        return self.index * self.block_size


class Tier(Protocol):
    """One storage tier.  Methods are synchronous; disk tiers are called via worker threads.

    A tier never raises on ``get`` for an absent/corrupt block: it returns None (and discards a
    corrupt one).  ``put`` returns False when the block was not admitted (quota/policy/error).
    Blocks move between tiers without copies: ``put`` may keep the buffer it is given (the
    caller never writes into it afterwards) and ``get`` may return a view of a kept buffer.
    """

    name: str

    def get(self, key: BlockKey) -> Buffer | None: ...

    def put(self, key: BlockKey, data: Buffer) -> bool: ...

    def contains(self, key: BlockKey) -> bool: ...

    def used_bytes(self) -> int: ...

    def quota_bytes(self) -> int: ...


class PeerLookup(Protocol):
    """The cluster peer tier as the TieredCache sees it (implemented in ``fluidfs.cluster``).

    ``get`` is asked on a memory and SSD miss, before the source; it returns a verified block
    or None (then the source serves).  It must not raise for peer failures (the cache still
    guards against it).  ``placement(key)`` says where this member keeps a block it got from a
    peer: ``"memory"``, ``"ssd"`` (memory and SSD) or ``"none"``.
    """

    async def get(self, key: BlockKey) -> Buffer | None: ...

    def placement(self, key: BlockKey) -> str: ...
