"""Latency-injecting (and optionally bandwidth-capping) TCP proxy: the emulated remote link.

Every chunk read from one side is stamped with its arrival time and written to the other side
``delay`` seconds later.  Reading and writing are separate tasks joined by a queue, so chunks
are *pipelined*: a 20 ms delay adds 20 ms to each round trip but does not cap throughput
(a stop-and-wait proxy would cap one connection at chunk_size / delay).  By default only the
response direction (upstream → client) is delayed, i.e. ``--latency-ms`` is the extra round
trip time of every request.

Bandwidth: ``bandwidth_mbit`` applies one token bucket shared by all connections to the
response direction (user-space shaping; see Caveats).

Run standalone (the benchmark harness does this, so the proxy has its own interpreter and GIL)::

    python -m tools.bench.proxy --upstream 127.0.0.1:8333 --delay-ms 20 --port-file P

or in-process with :class:`ProxyThread` (tests).

Caveats: this bandwidth cap is a user-space token bucket (payload bytes, burst 1/10 s of rate);
the harness prefers ``tc tbf`` on a veth in a network namespace when it can (see store.py).  Python asyncio
forwards at roughly 1-2 GB/s on loopback, which is above what the emulated store serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_INFLIGHT = 64 * 1024 * 1024  # bytes buffered per direction before we stop reading


@dataclass
class ProxyStats:
    """Counters a test (or the harness) can read."""

    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    chunks_delayed: int = 0
    active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TokenBucket:
    """A shared byte-rate limiter (rate in bytes/s, burst = rate / 10)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = max(self.rate / 10.0, CHUNK)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def consume(self, n: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    bucket: TokenBucket | None,
    stats: ProxyStats,
    down: bool,
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    inflight = 0
    room = asyncio.Event()
    room.set()

    async def rx() -> None:
        nonlocal inflight
        try:
            while True:
                await room.wait()
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return
                inflight += len(data)
                if inflight >= MAX_INFLIGHT:
                    room.clear()
        except (ConnectionError, OSError):
            await queue.put((loop.time(), b""))

    async def tx() -> None:
        nonlocal inflight
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                stats.chunks_delayed += 1
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            if bucket is not None:
                await bucket.consume(len(data))
            if down:
                stats.bytes_down += len(data)
            else:
                stats.bytes_up += len(data)
            writer.write(data)
            await writer.drain()
            inflight -= len(data)
            if inflight < MAX_INFLIGHT:
                room.set()

    rx_task = asyncio.create_task(rx())
    try:
        await tx()
    finally:
        rx_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await rx_task


class Proxy:
    """The asyncio server: one upstream, per-direction delays, optional shared bandwidth cap."""

    def __init__(
        self,
        upstream: tuple[str, int],
        delay_down: float = 0.02,
        delay_up: float = 0.0,
        bandwidth_mbit: float | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.upstream = upstream
        self.delay_down = delay_down
        self.delay_up = delay_up
        self.bandwidth_mbit = bandwidth_mbit
        self.listen = listen
        self.stats = ProxyStats()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._bucket: TokenBucket | None = None

    async def start(self) -> int:
        if self.bandwidth_mbit:
            self._bucket = TokenBucket(self.bandwidth_mbit * 1e6 / 8)
        self._server = await asyncio.start_server(self._handle, *self.listen, backlog=512)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self.stats.active += 1
        uwriter = None
        try:
            try:
                ureader, uwriter = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                log.warning("proxy: upstream %s:%d unreachable: %s", *self.upstream, exc)
                return
            for w in (cwriter, uwriter):
                s = w.get_extra_info("socket")
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(
                _pump(creader, uwriter, self.delay_up, None, self.stats, down=False),
                _pump(ureader, cwriter, self.delay_down, self._bucket, self.stats, down=True),
                return_exceptions=True,
            )
        finally:
            self.stats.active -= 1
            for w in (cwriter, uwriter):  # type: ignore[assignment]
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class ProxyThread:
    """Run a :class:`Proxy` on a private event loop in a daemon thread (tests, small runs)."""

    def __init__(self, upstream: tuple[str, int], **kwargs: object) -> None:
        self.proxy = Proxy(upstream, **kwargs)  # type: ignore[arg-type]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="bench-proxy", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.proxy.start())
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self.proxy.serve_forever())
        pending = asyncio.all_tasks(self._loop)
        for t in pending:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def _shutdown(self) -> None:
        self.proxy.close()
        for t in asyncio.all_tasks(self._loop):
            t.cancel()

    @property
    def port(self) -> int:
        return self.proxy.port

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(5)


def _parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the real server")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="delay per response chunk")
    ap.add_argument("--up-delay-ms", type=float, default=0.0, help="delay per request chunk")
    ap.add_argument("--bandwidth-mbit", type=float, default=None)
    ap.add_argument("--port-file", help="write the listening port here once ready")
    args = ap.parse_args(argv)

    async def run() -> None:
        proxy = Proxy(
            _parse_hostport(args.upstream),
            delay_down=args.delay_ms / 1000.0,
            delay_up=args.up_delay_ms / 1000.0,
            bandwidth_mbit=args.bandwidth_mbit,
            listen=_parse_hostport(args.listen),
        )
        port = await proxy.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, proxy.close)
        if args.port_file:
            tmp = args.port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(port))
            os.replace(tmp, args.port_file)
        with contextlib.suppress(asyncio.CancelledError):
            await proxy.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
