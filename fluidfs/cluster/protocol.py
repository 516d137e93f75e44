"""The peer protocol: request targets, headers, response checks, and the BlockProvider interface.

HTTP/1.1 on the member's own port, one block per request, keep-alive connections::

    GET  /v1/block/<dataset>?url=<u>&version=<v>&bs=<block size>&index=<i>&mode=fetch|cached&hops=<n>
    HEAD /v1/block/<dataset>?...          200 if this member holds the block now, else 404 (no body)
    PUT  /v1/block/<dataset>?...          push (handoff): body = the block, X-Fluidfs-Checksum required
    GET  /v1/info                         JSON: member id, datasets, bytes held (for status)
    GET  /v1/status                       JSON: this member's view (members, shares, breakers) and
                                          every member's /v1/info (``fluidfs status``)

Values are percent-encoded UTF-8 (surrogateescape: any URL or version a source produced round
trips).  A block is addressed by its key only — dataset, object URL, version token, block size
and index; the serving member maps the URL back to one of *its* dataset's mounts and refuses
anything else (a peer can never make it fetch an arbitrary URL).  ``mode=cached`` answers only
from the local tiers (404 otherwise; used to ask previous owners and replicas); ``mode=fetch``
lets the owner fetch from its source through its single-flight path.  ``hops`` counts how many
members a request has passed through: a member serving a request never forwards a *fetch* past
``MAX_HOPS``, so differing membership views cannot make requests chase each other.

A 200 response's body is the block; its headers bind it to the key::

    Content-Length        payload length (<= block size)
    X-Fluidfs-Checksum    ``crc32:<8 hex digits>``: the checksum of block files on disk
                          (``blockfile.checksum``), named so that a change of algorithm is detected
    X-Fluidfs-Key         the key's digest (sha256 of url, version, block size, index)
    X-Fluidfs-Version     the version token (percent-encoded)
    X-Fluidfs-Member      the serving member's id

The receiver verifies all of them (and the byte count) before it uses a single byte, as the
SSD tier does with block files.  Status codes: 400 malformed, 401 unauthenticated, 403 not in
this dataset, 404 not held / unknown dataset / beyond the object's end, 409 version changed at
the source, 413 push larger than the block size, 502 source failed, 503 busy, 504 timed out,
507 push not admitted.

Caveats: one block per request means one round trip per block (fine at 4 MiB; small blocks
would want batching); query strings and headers are bounded to 16 KiB by the server.
"""

from __future__ import annotations

import contextvars
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.blockfile import CHECKSUM_NAME
from fluidfs.errors import PeerError, PeerRequestError

__all__ = [
    "BlockProvider",
    "BlockRequest",
    "SERVING_HOPS",
    "MAX_HOPS",
    "block_target",
    "parse_block_target",
    "response_headers",
    "check_response_headers",
]

PREFIX = "/v1/block/"
INFO_PATH = "/v1/info"
STATUS_PATH = "/v1/status"  # the member's view of the cluster, and every member's /v1/info
MAX_HOPS = 2
MAX_URL = 8192
MAX_VERSION = 1024
MIN_BLOCK = 1024
MAX_BLOCK = 256 << 20
MODES = ("fetch", "cached")

H_SUM = "x-fluidfs-checksum"
H_KEY = "x-fluidfs-key"
H_VERSION = "x-fluidfs-version"
H_MEMBER = "x-fluidfs-member"

#: how many members the request being served has passed through (set by the server for the
#: task that serves a request; read by the peer tier when that task misses locally)
SERVING_HOPS: contextvars.ContextVar[int] = contextvars.ContextVar("fluidfs_peer_serving_hops", default=0)

_DATASET_RE = re.compile(r"[A-Za-z0-9._-]{1,253}")


class BlockProvider(Protocol):
    """What a peer server asks for the blocks of one dataset (see ``provider.py``)."""

    dataset: str

    def check(self, key: BlockKey) -> None:
        """Raise PeerRequestError (403/400) unless ``key`` belongs to this dataset's mounts."""
        ...

    async def get_block(self, key: BlockKey, *, cached_only: bool = False) -> Buffer | None:
        """The block: from the local tiers, else (unless ``cached_only``) fetched through the
        cache's single-flight path.  None: not held (cached_only) or beyond the object's end.
        Source failures raise SourceError subclasses."""
        ...

    def holds(self, key: BlockKey) -> bool:
        """Whether a local tier holds ``key`` now (no I/O)."""
        ...

    async def put_block(self, key: BlockKey, data: Buffer) -> bool:
        """Admit a pushed, already verified block; False if it was not admitted."""
        ...

    def usage(self) -> dict[str, int]:
        """Bytes used and quotas of the local tiers (for ``/v1/info``)."""
        ...


@dataclass(frozen=True, slots=True)
class BlockRequest:
    dataset: str
    key: BlockKey
    mode: str = "fetch"
    hops: int = 1


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="", encoding="utf-8", errors="surrogateescape")


def _uq(s: str) -> str:
    return urllib.parse.unquote(s, encoding="utf-8", errors="surrogateescape")


def block_target(dataset: str, key: BlockKey, mode: str = "fetch", hops: int = 1) -> str:
    """The request target (path and query) for one block."""
    return (
        f"{PREFIX}{_q(dataset)}?url={_q(key.url)}&version={_q(key.version)}&bs={key.block_size}"
        f"&index={key.index}&mode={mode}&hops={hops}"
    )


def parse_block_target(target: str) -> BlockRequest:
    """Parse and validate a block request target; raise PeerRequestError(400) naming the problem."""
    path, _, query = target.partition("?")
    if not path.startswith(PREFIX):
        raise PeerRequestError(404, f"no such resource {path[:80]!r}", "protocol")
    dataset = _uq(path[len(PREFIX) :])
    if not _DATASET_RE.fullmatch(dataset):
        raise PeerRequestError(400, "malformed dataset name", "protocol")
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="surrogateescape",
            max_num_fields=8,
        )  # fmt: skip
    except ValueError as exc:
        raise PeerRequestError(400, f"malformed query ({exc})", "protocol") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise PeerRequestError(400, f"repeated query field {name!r}", "protocol")
        fields[name] = value
    missing = [n for n in ("url", "version", "bs", "index") if n not in fields]
    if missing:
        raise PeerRequestError(400, f"missing query field(s) {', '.join(missing)}", "protocol")
    unknown = set(fields) - {"url", "version", "bs", "index", "mode", "hops"}
    if unknown:
        raise PeerRequestError(400, f"unknown query field(s) {', '.join(sorted(unknown))}", "protocol")
    url, version = fields["url"], fields["version"]
    if not url or len(url) > MAX_URL or "\0" in url:
        raise PeerRequestError(400, "malformed url", "protocol")
    if len(version) > MAX_VERSION or "\0" in version:
        raise PeerRequestError(400, "malformed version", "protocol")
    bs = _int(fields["bs"], "bs", MIN_BLOCK, MAX_BLOCK)
    index = _int(fields["index"], "index", 0, (1 << 53) // bs)
    mode = fields.get("mode", "fetch")
    if mode not in MODES:
        raise PeerRequestError(400, f"bad mode {mode[:20]!r}", "protocol")
    hops = _int(fields.get("hops", "1"), "hops", 0, 16)
    return BlockRequest(dataset, BlockKey(url, version, bs, index), mode, hops)


def _int(text: str, name: str, lo: int, hi: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise PeerRequestError(400, f"bad {name} {text[:20]!r}", "protocol")
    value = int(text)
    if not lo <= value <= hi:
        raise PeerRequestError(400, f"{name} {value} out of range [{lo}, {hi}]", "protocol")
    return value


def checksum_header(crc: int) -> str:
    """``crc32:0123abcd``: the algorithm (``blockfile.CHECKSUM_NAME``) and the value."""
    return f"{CHECKSUM_NAME}:{crc & 0xFFFFFFFF:08x}"


def parse_checksum_header(value: str) -> int:
    """The checksum in a header made by :func:`checksum_header`; ValueError if it is malformed
    or uses another algorithm than this member's."""
    name, sep, hexval = value.partition(":")
    if not sep or name != CHECKSUM_NAME or len(hexval) != 8:
        raise ValueError(f"unsupported or malformed checksum {value[:40]!r} (this member uses {CHECKSUM_NAME})")
    return int(hexval, 16)


def response_headers(key: BlockKey, length: int, crc: int, member_id: str) -> list[tuple[str, str]]:
    """Headers of a 200 block response."""
    return [
        ("content-length", str(length)),
        (H_SUM, checksum_header(crc)),
        (H_KEY, key.digest),
        (H_VERSION, _q(key.version)),
        (H_MEMBER, member_id),
    ]


def check_response_headers(key: BlockKey, headers: Mapping[str, str]) -> tuple[int, int]:
    """Validate a 200 response's headers for ``key``; return ``(length, crc)``.

    Raises PeerError(reason="bad_block").
    """
    try:
        length = int(headers.get("content-length", ""))
        crc = parse_checksum_header(headers.get(H_SUM, ""))
    except ValueError as exc:
        raise PeerError(f"response without a valid length or checksum ({exc})", "bad_block") from None
    if not 0 <= length <= key.block_size:
        raise PeerError(f"response of {length} bytes for a block of {key.block_size}", "bad_block")
    if headers.get(H_KEY, "") != key.digest:
        raise PeerError("response is for another block (key digest mismatch)", "bad_block")
    if _uq(headers.get(H_VERSION, "")) != key.version:
        raise PeerError("response is for another version of the object", "bad_block")
    return length, crc
