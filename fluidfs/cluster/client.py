"""Peer protocol client: one block per request, in worker threads, body read into one buffer.

Requests run in worker threads (``trio.to_thread.run_sync`` through the ``peer-client``
limiter, which also bounds the transfers in flight) on keep-alive ``http.client`` connections
kept in a small per-peer pool.  The body of a block goes straight from the socket into one
preallocated buffer (``readinto``, in 1 MiB pieces; a huge-page buffer from
``fluidfs.util.buffers``, recycled once the cache lets go of it), and its CRC-32 is computed
piece by piece as it arrives, while the piece is still in the CPU cache: no copy and no second
pass.  The caller gets a ``memoryview`` of that buffer — only after the length, checksum, key
digest and version all matched the key asked for.

Failures raise :class:`~fluidfs.errors.PeerError` with a bounded ``reason``: refused (cannot
connect), timeout, bad_block (truncated, corrupt or foreign body), unauthorized (401), busy
(503), source (502/504: the peer is up but its source failed or timed out), protocol (any other
unexpected answer).  404 and 409 (the block is not there / the object changed at the source)
are not errors: ``get`` returns None.

Timeouts: ``connect_timeout`` to connect; ``read_timeout`` for every socket read of a cached
lookup and of a body; ``fetch_timeout`` for the response head of a ``mode=fetch`` request (the
owner may be fetching the block from its source); every request also has an overall deadline.

Caveats: a request cancelled on the trio side is abandoned: its thread ends at its next socket
timeout (bounded by ``read_timeout``) and the connection is discarded.  A reused keep-alive
connection that the server closed meanwhile is retried once on a fresh connection.  The
stdlib ``http.client`` was chosen over urllib3 because urllib3's ``readinto`` copies through an
intermediate ``bytes`` (numbers in docs/cluster.md).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.blockfile import checksum
from fluidfs.cluster.auth import PeerAuth
from fluidfs.cluster.membership import Member
from fluidfs.cluster.protocol import (
    H_SUM,
    INFO_PATH,
    STATUS_PATH,
    block_target,
    check_response_headers,
    checksum_header,
)
from fluidfs.errors import PeerError
from fluidfs.util.buffers import block_buffer

log = logging.getLogger(__name__)

__all__ = ["PeerClient", "CHUNK"]

CHUNK = 1 << 20
T = TypeVar("T")


class _Pool:
    """Idle keep-alive connections per peer address (thread-safe, bounded)."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, address: str) -> http.client.HTTPConnection | None:
        with self._lock:
            conns = self._idle.get(address)
            return conns.pop() if conns else None

    def give(self, address: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault(address, [])
            if not self._closed and len(conns) < self.max_idle:
                conns.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for c in conns:
            c.close()


def _host_port(member: Member) -> tuple[str, int]:
    return member.host, member.port


class PeerClient:
    """Sends authenticated block requests to peers (thread-safe; blocking work in threads)."""

    def __init__(
        self,
        auth: PeerAuth,
        *,
        limiter: trio.CapacityLimiter | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 5.0,
        fetch_timeout: float = 15.0,
        max_idle_per_peer: int = 8,
    ) -> None:
        self.auth = auth
        self.limiter = limiter or trio.CapacityLimiter(16)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.fetch_timeout = fetch_timeout
        self._pool = _Pool(max_idle_per_peer)

    # ----------------------------------------------------------------------- trio-facing API

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)

    async def get(
        self, member: Member, dataset: str, key: BlockKey, *, mode: str = "fetch", hops: int = 1
    ) -> memoryview | None:
        """The verified block from ``member``; None if it answers 404.  Raises PeerError."""
        return await self._run(self.get_sync, member, dataset, key, mode, hops)

    async def has(self, member: Member, dataset: str, key: BlockKey) -> bool:
        """Whether ``member`` holds ``key`` now (HEAD).  Raises PeerError."""
        return await self._run(self.has_sync, member, dataset, key)

    async def push(self, member: Member, dataset: str, key: BlockKey, data: Buffer) -> bool:
        """Hand ``data`` over to ``member`` (PUT); True if it stored it.  Raises PeerError."""
        return await self._run(self.push_sync, member, dataset, key, data)

    async def info(self, member: Member) -> dict[str, Any]:
        """The member's ``/v1/info`` document.  Raises PeerError."""
        return await self._run(self.info_sync, member)

    async def status(self, member: Member) -> dict[str, Any]:
        """The member's ``/v1/status`` document (its view of the cluster).  Raises PeerError."""
        return await self._run(self.status_sync, member)

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------ blocking internals

    def _connect(self, member: Member) -> http.client.HTTPConnection:
        host, port = _host_port(member)
        conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise PeerError(f"peer {member.id} ({member.address}): connect timed out", "timeout") from None
        except OSError as exc:
            conn.close()
            raise PeerError(f"peer {member.id} ({member.address}): cannot connect ({exc})", "refused") from None
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _exchange(
        self,
        member: Member,
        method: str,
        target: str,
        headers: dict[str, str],
        body: Buffer | None,
        head_timeout: float,
        handle: Callable[[http.client.HTTPResponse, socket.socket, float], T],
        deadline: float,
    ) -> T:
        """Send one request (retrying once on a stale pooled connection) and let ``handle`` read
        the response; the connection goes back to the pool only after a clean, complete answer."""
        for attempt in (0, 1):
            conn = self._pool.take(member.address) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = self._connect(member)
            sock = conn.sock
            assert sock is not None
            try:
                sock.settimeout(max(0.001, min(head_timeout, deadline - time.monotonic())))
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:
                    continue  # the server closed an idle connection: try once on a new one
                raise PeerError(f"peer {member.id}: connection lost ({exc})", "refused") from None
            except TimeoutError:
                conn.close()
                raise PeerError(f"peer {member.id}: no answer within {head_timeout:.1f} s", "timeout") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise PeerError(f"peer {member.id}: request failed ({exc})", "protocol") from None
            try:
                result = handle(resp, sock, deadline)
            except TimeoutError:
                conn.close()
                raise PeerError(f"peer {member.id}: response not read within the deadline", "timeout") from None
            except (OSError, http.client.HTTPException) as exc:  # e.g. the peer closed mid-response (it is leaving)
                conn.close()
                raise PeerError(f"peer {member.id}: response failed ({type(exc).__name__}: {exc})", "refused") from None
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                self._pool.give(member.address, conn)
            return result
        raise PeerError(f"peer {member.id}: connection lost", "refused")  # pragma: no cover

    def _status_error(self, member: Member, resp: http.client.HTTPResponse) -> PeerError:
        reason = {401: "unauthorized", 502: "source", 503: "busy", 504: "source"}.get(resp.status, "protocol")
        detail = resp.read(512).decode("utf-8", "replace").strip()
        return PeerError(f"peer {member.id} answered {resp.status}: {detail}", reason)

    def get_sync(
        self, member: Member, dataset: str, key: BlockKey, mode: str = "fetch", hops: int = 1
    ) -> memoryview | None:
        target = block_target(dataset, key, mode, hops)
        head_timeout = self.fetch_timeout if mode == "fetch" else self.read_timeout
        deadline = time.monotonic() + head_timeout + self.read_timeout + 2 * self.connect_timeout
        headers = self.auth.sign("GET", target)

        def handle(resp: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> memoryview | None:
            if resp.status in (404, 409):  # not there / another version at the source: not an error
                resp.read()
                return None
            if resp.status != 200:
                raise self._status_error(member, resp)
            length, crc = check_response_headers(key, {k.lower(): v for k, v in resp.getheaders()})
            return self._read_body(member, resp, sock, length, crc, deadline)

        return self._exchange(member, "GET", target, headers, None, head_timeout, handle, deadline)

    def _read_body(
        self,
        member: Member,
        resp: http.client.HTTPResponse,
        sock: socket.socket,
        length: int,
        crc: int,
        deadline: float,
    ) -> memoryview:
        view = block_buffer(length)  # pooled, huge-page backed: adopted by the memory tier as is
        got = 0
        running = 0
        try:
            while got < length:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerError(f"peer {member.id}: block body not received in time", "timeout")
                sock.settimeout(min(self.read_timeout, remaining))
                n = resp.readinto(view[got : min(length, got + CHUNK)])
                if not n:
                    break
                running = checksum(view[got : got + n], running)
                got += n
        except TimeoutError:
            raise PeerError(f"peer {member.id}: block body stalled after {got} of {length} bytes", "timeout") from None
        except http.client.IncompleteRead as exc:
            raise PeerError(
                f"peer {member.id}: truncated block ({got + len(exc.partial)} of {length} bytes)", "bad_block"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise PeerError(f"peer {member.id}: block body failed after {got} bytes ({exc})", "bad_block") from None
        if got != length:
            raise PeerError(f"peer {member.id}: truncated block ({got} of {length} bytes)", "bad_block")
        if running != crc:
            raise PeerError(f"peer {member.id}: block checksum mismatch", "bad_block")
        return view

    def has_sync(self, member: Member, dataset: str, key: BlockKey) -> bool:
        target = block_target(dataset, key, "cached", 1)
        headers = self.auth.sign("HEAD", target)
        deadline = time.monotonic() + self.read_timeout + self.connect_timeout

        def handle(resp: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> bool:
            resp.read()
            if resp.status in (200, 404):
                return resp.status == 200
            raise PeerError(f"peer {member.id} answered {resp.status} to HEAD", "protocol")

        return self._exchange(member, "HEAD", target, headers, None, self.read_timeout, handle, deadline)

    def push_sync(self, member: Member, dataset: str, key: BlockKey, data: Buffer) -> bool:
        target = block_target(dataset, key, "cached", 1)
        body = memoryview(data).cast("B")
        crc = checksum_header(checksum(body))
        headers = self.auth.sign("PUT", target, length=len(body), crc=crc)
        headers[H_SUM] = crc
        headers["content-length"] = str(len(body))
        deadline = time.monotonic() + 2 * self.read_timeout + self.connect_timeout

        def handle(resp: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> bool:
            if resp.status in (201, 204, 200):
                resp.read()
                return True
            if resp.status == 507:
                resp.read()
                return False
            raise self._status_error(member, resp)

        return self._exchange(member, "PUT", target, headers, body, self.read_timeout, handle, deadline)

    def info_sync(self, member: Member) -> dict[str, Any]:
        return self._document_sync(member, INFO_PATH, self.read_timeout)

    def status_sync(self, member: Member) -> dict[str, Any]:
        # the member surveys its peers (connect + read timeout each, concurrently) before it answers
        return self._document_sync(member, STATUS_PATH, 2 * (self.read_timeout + self.connect_timeout))

    def _document_sync(self, member: Member, path: str, timeout: float) -> dict[str, Any]:
        headers = self.auth.sign("GET", path)
        deadline = time.monotonic() + timeout + self.connect_timeout

        def handle(resp: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> dict[str, Any]:
            if resp.status != 200:
                raise self._status_error(member, resp)
            try:
                doc = json.loads(resp.read(4 << 20))
            except ValueError as exc:
                raise PeerError(f"peer {member.id}: bad {path} document ({exc})", "protocol") from None
            if not isinstance(doc, dict):
                raise PeerError(f"peer {member.id}: bad {path} document", "protocol")
            return doc

        return self._exchange(member, "GET", path, headers, None, timeout, handle, deadline)
