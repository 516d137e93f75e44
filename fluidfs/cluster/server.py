"""Peer protocol server: trio + h11 inside the member's own trio loop, one block per request.

Each accepted connection is one task (at most ``max_connections``); requests on it are served
in order (HTTP/1.1 keep-alive).  Every request is authenticated first (``auth.py``; a failure is
answered 401, logged once per peer address and rate-limited, and never served), then parsed
(``protocol.py``; 400/404), then checked against the dataset's mounts by its
:class:`~fluidfs.cluster.protocol.BlockProvider` (403), and only then served.  Block transfers
(GET and PUT) take one of ``max_transfers`` slots; a request that waits longer than
``queue_timeout`` for one is answered 503 (busy) so the asker falls back at once.

A GET's block comes from ``provider.get_block`` (the local tiers, or the source through the
cache's single-flight path, bounded by ``fetch_timeout``) and is sent as a ``memoryview``
straight from the cache buffer (h11's data pass-through: no copy).  Its CRC-32 is computed in a
worker thread (``peer-server-cpu`` limiter).  The request's ``hops`` is put in the serving
task's context (``protocol.SERVING_HOPS``) so the peer tier never forwards a fetch too far.

Timeouts: ``header_timeout`` to receive a request head once a request has started,
``idle_timeout`` between keep-alive requests, ``body_timeout`` for a pushed body,
``send_timeout`` to send a response; a connection that misses one is closed.

Caveats: no TLS (see auth.py); requests on one connection are not pipelined concurrently (the
client opens more connections instead).  A pushed body is received through h11's ``Data``
events, i.e. copied once into the preallocated buffer (handoff only, not the read path).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import h11
import trio

from fluidfs import metrics
from fluidfs.cache.blockfile import checksum
from fluidfs.cluster.auth import FailureLog, PeerAuth
from fluidfs.cluster.membership import format_address, parse_address
from fluidfs.cluster.protocol import (
    H_SUM,
    INFO_PATH,
    SERVING_HOPS,
    STATUS_PATH,
    BlockProvider,
    BlockRequest,
    parse_block_target,
    parse_checksum_header,
    response_headers,
)
from fluidfs.errors import ConfigError, NotFoundError, PeerRequestError, SourceError, VersionChangedError
from fluidfs.util.buffers import block_buffer

log = logging.getLogger(__name__)

__all__ = ["PeerServer"]

_RECV = 256 * 1024
_INLINE_CRC = 256 * 1024  # checksum smaller bodies on the trio thread (microseconds)
_OPS = {"GET": "get", "HEAD": "head", "PUT": "put"}


class _Close(Exception):
    """End this connection (peer gone, timed out or protocol violation)."""


class PeerServer:
    """Serves the blocks of one or more datasets to authenticated peers."""

    def __init__(
        self,
        providers: Mapping[str, BlockProvider],
        auth: PeerAuth,
        *,
        listen: str,
        member_id: str = "",
        max_connections: int = 256,
        max_transfers: int = 16,
        queue_timeout: float = 2.0,
        header_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        body_timeout: float = 30.0,
        send_timeout: float = 30.0,
        fetch_timeout: float = 60.0,
        cpu_limiter: trio.CapacityLimiter | None = None,
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        weight: float | None = None,
    ) -> None:
        try:
            self._host, self._port = parse_address(listen, any_port=True)
        except ValueError as exc:
            raise ConfigError(f"peer listen address: {exc}") from None
        self.providers = dict(providers)
        self.auth = auth
        self.member_id = member_id or auth.member_id
        self.max_transfers = max_transfers
        self.queue_timeout = queue_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.fetch_timeout = fetch_timeout
        self.cpu_limiter = cpu_limiter or trio.CapacityLimiter(2)
        self.status = status  # answers GET /v1/status (404 without it)
        self.weight = weight  # announced in /v1/info: members weigh this member by it
        self._conn_slots = trio.Semaphore(max_connections)
        self._transfers = trio.Semaphore(max_transfers)
        self.failures = FailureLog()
        self.address: str | None = None  # bound HOST:PORT once serving
        self.requests = 0

    # ------------------------------------------------------------------------- life cycle

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started(bound HOST:PORT)``."""
        host = None if self._host in ("", "0.0.0.0", "::") else self._host
        try:
            listeners = await trio.open_tcp_listeners(self._port, host=host)
        except OSError as exc:
            where = format_address(self._host, self._port)
            raise ConfigError(f"peer listen address {where}: {exc.strerror or exc}") from None
        sockname = listeners[0].socket.getsockname()
        self.address = format_address(self._host or str(sockname[0]), int(sockname[1]))
        log.info("peer server of %s listening on %s", ",".join(sorted(self.providers)) or "-", self.address)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self.address)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                await self._conn_slots.acquire()
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE and friends: back off, keep serving
                    self._conn_slots.release()
                    log.warning("peer server %s: accept failed: %s", self.address, exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            peer_ip = str(stream.socket.getpeername()[0])
        except OSError:
            peer_ip = "?"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while True:
                with trio.move_on_after(self.idle_timeout) as idle:
                    event = await self._next(conn, stream)
                if idle.cancelled_caught or isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    return
                await self._request(conn, stream, event, peer_ip)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            metrics.PEER_ERRORS.labels("-", "server", "protocol").inc()
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    with trio.move_on_after(1.0):
                        await self._send(conn, stream, exc.error_status_hint, [], str(exc).encode(), close=True)
                except (_Close, h11.LocalProtocolError):
                    pass
        except (_Close, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug must cost one connection, never the server
            log.exception("peer server %s: connection from %s failed", self.address, peer_ip)
        finally:
            self._conn_slots.release()
            with trio.move_on_after(1.0) as cs:
                cs.shield = True
                await stream.aclose()

    async def _next(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(_RECV)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _Close() from None
                conn.receive_data(data)
                continue
            return event

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes | memoryview | None,
        *,
        close: bool = False,
        head: bool = False,
    ) -> None:
        if close:
            headers = [*headers, ("connection", "close")]
        if body is not None and not any(k == "content-length" for k, _ in headers):
            headers = [*headers, ("content-length", str(len(body)))]
        chunks: list[Any] = [conn.send(h11.Response(status_code=status, headers=headers))]
        if body is not None and len(body) and not head and conn.our_state is h11.SEND_BODY:
            chunks.extend(conn.send_with_data_passthrough(h11.Data(data=body)) or ())  # type: ignore[arg-type]
        chunks.append(conn.send(h11.EndOfMessage()))
        with trio.move_on_after(self.send_timeout) as cs:
            try:
                for chunk in chunks:
                    if chunk:
                        await stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Close() from None
        if cs.cancelled_caught:
            raise _Close()

    async def _error(
        self, conn: h11.Connection, stream: trio.SocketStream, exc: PeerRequestError, close: bool, head: bool
    ) -> None:
        body = f"{exc}\n".encode()
        headers = [("content-type", "text/plain; charset=utf-8")]
        await self._send(conn, stream, exc.status, headers, body, close=close, head=head)

    # --------------------------------------------------------------------------- requests

    async def _request(self, conn: h11.Connection, stream: trio.SocketStream, req: h11.Request, peer_ip: str) -> None:
        self.requests += 1
        t0 = time.perf_counter()
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("ascii", "replace")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        op = _OPS.get(method, "other")
        label = "-"
        result = "error"
        body_pending = method == "PUT"
        try:
            if method not in _OPS:
                raise PeerRequestError(405, f"method {method[:16]} not allowed", "protocol")
            length, crc = 0, ""
            if method == "PUT":
                crc = headers.get(H_SUM, "")
                try:
                    length = int(headers.get("content-length", ""))
                except ValueError:
                    raise PeerRequestError(411, "a push needs a Content-Length", "protocol") from None
            sender = self.auth.verify(method, target, headers, length=length, crc=crc)
            if target == INFO_PATH and method == "GET":
                await self._drain_request(conn, stream)
                await self._info(conn, stream)
                result = "ok"
                op = "info"
                return
            if target == STATUS_PATH and method == "GET":
                op = "info"
                if self.status is None:
                    raise PeerRequestError(404, "no status here", "not_found")
                await self._drain_request(conn, stream)
                body = json.dumps(await self.status(), default=str).encode()
                await self._send(conn, stream, 200, [("content-type", "application/json")], body)
                result = "ok"
                return
            breq = parse_block_target(target)
            provider = self.providers.get(breq.dataset)
            if provider is None:
                raise PeerRequestError(404, f"dataset {breq.dataset!r} is not served here", "not_found")
            label = breq.dataset
            provider.check(breq.key)
            if method == "GET":
                await self._drain_request(conn, stream)
                result = await self._get(conn, stream, provider, breq, sender)
            elif method == "HEAD":
                await self._drain_request(conn, stream)
                result = "ok" if provider.holds(breq.key) else "miss"
                await self._send(conn, stream, 200 if result == "ok" else 404, [], None)
            else:
                body_pending = False
                result = await self._put(conn, stream, provider, breq, length, crc)
        except PeerRequestError as exc:
            if exc.status == 401:
                self.failures.warn(peer_ip, "peer request from %s refused (401): %s", peer_ip, exc)
            elif exc.status >= 500:
                log.info("peer request from %s for %s failed (%d): %s", peer_ip, label, exc.status, exc)
            else:
                log.debug("peer request from %s: %d %s", peer_ip, exc.status, exc)
            result = "miss" if exc.status == 404 and exc.reason == "not_found" else "error"
            if result == "error":
                metrics.PEER_ERRORS.labels(label, "server", exc.reason).inc()
            close = body_pending or method == "PUT"
            if not close:
                try:
                    await self._drain_request(conn, stream)
                except PeerRequestError:
                    close = True
            close = close or conn.their_state is not h11.DONE
            await self._error(conn, stream, exc, close=close, head=method == "HEAD")
        finally:
            metrics.PEER_REQUESTS.labels(label, "server", op, result).inc()
            metrics.PEER_LATENCY.labels(label, "server", op).observe(time.perf_counter() - t0)

    async def _drain_request(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        """Read the (empty) rest of a GET/HEAD request up to its EndOfMessage."""
        with trio.move_on_after(self.header_timeout) as cs:
            while conn.their_state is h11.SEND_BODY:
                event = await self._next(conn, stream)
                if isinstance(event, h11.Data) and len(event.data):
                    raise PeerRequestError(400, "unexpected request body", "protocol")
                if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        if cs.cancelled_caught:
            raise _Close()

    async def _get(
        self, conn: h11.Connection, stream: trio.SocketStream, provider: BlockProvider, breq: BlockRequest, sender: str
    ) -> str:
        ds = breq.dataset
        with trio.move_on_after(self.queue_timeout) as wait:
            await self._transfers.acquire()
        if wait.cancelled_caught:
            raise PeerRequestError(503, f"busy: {self.max_transfers} transfers in progress", "busy")
        in_flight = metrics.PEER_IN_FLIGHT.labels(ds, "server")
        in_flight.inc()
        try:
            token = SERVING_HOPS.set(breq.hops)
            try:
                with trio.fail_after(self.fetch_timeout):
                    data = await provider.get_block(breq.key, cached_only=breq.mode == "cached")
            except trio.TooSlowError:
                raise PeerRequestError(504, "fetching the block timed out", "timeout") from None
            except VersionChangedError as exc:
                raise PeerRequestError(409, f"version changed at the source: {exc}", "not_found") from None
            except NotFoundError as exc:
                raise PeerRequestError(404, f"not found: {exc}", "not_found") from None
            except SourceError as exc:
                raise PeerRequestError(502, f"source failed: {exc}", "error") from None
            except Exception as exc:
                log.exception("peer server: serving %s block %d failed", breq.key.url, breq.key.index)
                raise PeerRequestError(500, f"internal error: {type(exc).__name__}", "error") from None
            finally:
                SERVING_HOPS.reset(token)
            if data is None:
                raise PeerRequestError(404, "block not held here", "not_found")
            body = memoryview(data).cast("B")
            if len(body) >= _INLINE_CRC:
                crc = await trio.to_thread.run_sync(checksum, body, limiter=self.cpu_limiter)
            else:
                crc = checksum(body)
            await self._send(conn, stream, 200, response_headers(breq.key, len(body), crc, self.member_id), body)
            metrics.PEER_BYTES.labels(ds, "server", "get").inc(len(body))
            log.debug("served %s block %d (%d bytes) to %s", breq.key.url, breq.key.index, len(body), sender)
            return "ok"
        finally:
            in_flight.dec()
            self._transfers.release()

    async def _put(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        provider: BlockProvider,
        breq: BlockRequest,
        length: int,
        crc_text: str,
    ) -> str:
        if not 0 <= length <= breq.key.block_size:
            raise PeerRequestError(413, f"pushed block of {length} bytes > block size {breq.key.block_size}")
        try:
            expected = parse_checksum_header(crc_text)
        except ValueError as exc:
            raise PeerRequestError(400, f"a push needs an X-Fluidfs-Checksum header: {exc}", "protocol") from None
        with trio.move_on_after(self.queue_timeout) as wait:
            await self._transfers.acquire()
        if wait.cancelled_caught:
            raise PeerRequestError(503, f"busy: {self.max_transfers} transfers in progress", "busy")
        try:
            buf = block_buffer(length)
            got = 0
            running = 0
            with trio.move_on_after(self.body_timeout) as cs:
                while True:
                    event = await self._next(conn, stream)
                    if isinstance(event, h11.Data):
                        n = len(event.data)
                        if got + n > length:
                            raise _Close()
                        buf[got : got + n] = event.data
                        running = checksum(event.data, running)
                        got += n
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        raise _Close()
            if cs.cancelled_caught:
                raise _Close()
            if got != length or running != expected:
                raise PeerRequestError(400, "pushed block failed verification (length or checksum)", "bad_block")
            ok = await provider.put_block(breq.key, buf)
            if ok:
                metrics.PEER_BYTES.labels(breq.dataset, "server", "put").inc(length)
            await self._send(conn, stream, 204 if ok else 507, [], None)
            return "ok" if ok else "miss"
        finally:
            self._transfers.release()

    async def _info(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        doc = {
            "member": self.member_id,
            "address": self.address,
            "datasets": {name: p.usage() for name, p in sorted(self.providers.items())},
            "time": time.time(),
        }
        if self.weight is not None:
            doc["weight"] = self.weight
        body = json.dumps(doc).encode()
        await self._send(conn, stream, 200, [("content-type", "application/json")], body)
