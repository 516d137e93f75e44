"""Peer protocol options on loopback: 4 MiB blocks, servers x clients, median of several runs.

    python -m tools.peer_bench                      # defaults: 4 MiB blocks, 96 requests, 5 runs
    python -m tools.peer_bench --requests 200 --runs 7 --concurrency 1 4

Servers (each in its own process, serving blocks held in memory):

* ``h11``        fluidfs's PeerServer (trio + h11, authenticated, CRC per response)
* ``hypercorn``  hypercorn's trio worker with a minimal ASGI app (same headers and CRC, no auth)
* ``raw``        baseline: a plain blocking socket per connection that answers each 1-byte
                 request with a block (no HTTP, no CRC) — the machine's loopback ceiling now

Clients (in this process; every body's CRC-32 is checked, so all do the same work):

* ``fluidfs``        fluidfs's PeerClient: http.client in trio.to_thread workers, body read
                     with readinto into one preallocated buffer, CRC computed while reading
* ``urllib3-read``   urllib3 in trio.to_thread workers, ``resp.read()`` then CRC
* ``urllib3-into``   urllib3 in trio.to_thread workers, ``resp.readinto()`` into a preallocated
                     buffer (urllib3 copies through an intermediate bytes) then CRC
* ``httpx``          httpx.AsyncClient on trio, ``resp.content`` then CRC
* ``raw``            (with the raw server only) ``recv_into`` a preallocated buffer, CRC

Prints one table row per (server, client, concurrency): median GB/s over ``--runs`` runs of
``--requests`` block requests each, the min-max range, and the CPU seconds per GB moved spent
by the client process and by the server process (medians) — the CPU cost is the steadier
number on a shared, noisy machine.  Not a test: numbers only.
hypercorn and httpx come with the ``bench`` extra; missing ones are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cluster.auth import PeerAuth
from fluidfs.cluster.client import PeerClient
from fluidfs.cluster.membership import Member
from fluidfs.cluster.protocol import block_target, check_response_headers, response_headers
from fluidfs.cluster.server import PeerServer
from fluidfs.errors import PeerRequestError

SECRET = b"peer-bench-secret-0123456789abcdef"
DATASET = "bench"
URL = "file:///bench/object"
VERSION = "v1"
NBLOCKS = 8

# ---------------------------------------------------------------------------------- servers


def _blocks(bs: int) -> list[bytes]:
    return [os.urandom(bs) for _ in range(NBLOCKS)]


class _MemoryBlocks:
    """A BlockProvider over blocks held in memory (the protocol's cost, not the cache's)."""

    def __init__(self, bs: int) -> None:
        self.dataset = DATASET
        self.blocks = _blocks(bs)

    def check(self, key: BlockKey) -> None:
        if key.url != URL:
            raise PeerRequestError(403, "not here")

    async def get_block(self, key: BlockKey, *, cached_only: bool = False) -> Buffer | None:
        return memoryview(self.blocks[key.index % NBLOCKS])

    def holds(self, key: BlockKey) -> bool:
        return True

    async def put_block(self, key: BlockKey, data: Buffer) -> bool:
        return False

    def usage(self) -> dict[str, int]:
        return {}


async def _serve_h11(port: int, bs: int) -> None:
    server = PeerServer({DATASET: _MemoryBlocks(bs)}, PeerAuth(SECRET, member_id="srv"), listen=f"127.0.0.1:{port}")
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(server.serve)
        print(f"READY {addr}", flush=True)


async def _serve_hypercorn(port: int, bs: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    blocks = _blocks(bs)

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        qs = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&"))
        key = BlockKey(URL, VERSION, bs, int(qs["index"]))
        body = blocks[key.index % NBLOCKS]
        crc = await trio.to_thread.run_sync(zlib.crc32, body)
        headers = [(k.encode(), v.encode()) for k, v in response_headers(key, len(body), crc, "srv")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    print(f"READY 127.0.0.1:{port}", flush=True)
    await serve(app, config)  # type: ignore[arg-type,unused-ignore]


def _serve_raw(port: int, bs: int) -> None:
    import socket
    import threading

    block = os.urandom(bs)
    srv = socket.create_server(("127.0.0.1", port))
    print(f"READY 127.0.0.1:{port}", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1):
                conn.sendall(block)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(kind: str, bs: int) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.peer_bench", "--serve", kind, "--port", str(port), "--block-size", str(bs)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    addr = line.split()[1]
    time.sleep(0.3)  # hypercorn prints before binding
    return proc, addr


# ---------------------------------------------------------------------------------- clients


def _key(bs: int, i: int) -> BlockKey:
    return BlockKey(URL, VERSION, bs, i % NBLOCKS)


class _Clients:
    def __init__(self, addr: str, bs: int, threads: int) -> None:
        self.addr = addr
        self.bs = bs
        self.auth = PeerAuth(SECRET, member_id="bench")
        self.member = Member.make("srv", addr)
        self.limiter = trio.CapacityLimiter(threads)
        self.fluid = PeerClient(self.auth, limiter=self.limiter)
        import urllib3

        self.pool = urllib3.PoolManager(maxsize=threads)
        self._raw: list[Any] = []

    def _raw_get(self, i: int) -> int:
        import socket

        sock = self._raw.pop() if self._raw else socket.create_connection((self.member.host, self.member.port))
        buf = bytearray(self.bs)
        view = memoryview(buf)
        sock.sendall(b"x")
        got = crc = 0
        while got < self.bs:
            n = sock.recv_into(view[got:])
            if not n:
                raise RuntimeError("raw server closed")
            crc = zlib.crc32(view[got : got + n], crc)
            got += n
        self._raw.append(sock)
        return got

    async def raw(self, i: int) -> int:
        return await trio.to_thread.run_sync(self._raw_get, i, limiter=self.limiter)

    def _url_headers(self, i: int) -> tuple[str, dict[str, str]]:
        target = block_target(DATASET, _key(self.bs, i))
        return f"http://{self.addr}{target}", self.auth.sign("GET", target)

    async def fluidfs(self, i: int) -> int:
        got = await self.fluid.get(self.member, DATASET, _key(self.bs, i))
        assert got is not None
        return len(got)

    def _urllib3(self, i: int, into: bool) -> int:
        url, headers = self._url_headers(i)
        resp = self.pool.request("GET", url, headers=headers, preload_content=False)
        length, crc = check_response_headers(_key(self.bs, i), {k.lower(): v for k, v in resp.headers.items()})
        if into:
            buf = bytearray(length)
            view = memoryview(buf)
            got = 0
            while got < length:
                n = resp.readinto(view[got : got + (1 << 20)])
                if not n:
                    break
                got += n
            data: Buffer = view[:got]
        else:
            data = resp.read()
        resp.release_conn()
        assert zlib.crc32(data) == crc and len(data) == length
        return len(data)

    async def urllib3_read(self, i: int) -> int:
        return await trio.to_thread.run_sync(self._urllib3, i, False, limiter=self.limiter)

    async def urllib3_into(self, i: int) -> int:
        return await trio.to_thread.run_sync(self._urllib3, i, True, limiter=self.limiter)

    async def httpx(self, i: int, client: Any) -> int:
        url, headers = self._url_headers(i)
        resp = await client.get(url, headers=headers)
        length, crc = check_response_headers(_key(self.bs, i), {k.lower(): v for k, v in resp.headers.items()})
        data = resp.content
        assert zlib.crc32(data) == crc and len(data) == length
        return len(data)

    def close(self) -> None:
        self.fluid.close()
        self.pool.clear()
        for sock in self._raw:
            sock.close()


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Run = tuple[float, float, float]  # GB/s, client CPU s/GB, server CPU s/GB


async def _run_once(fn: Callable[[int], Awaitable[int]], requests: int, concurrency: int, server_pid: int) -> Run:
    counter = iter(range(requests))
    total = 0

    async def worker() -> None:
        nonlocal total
        for i in counter:
            total += await fn(i)

    c0, s0 = time.process_time(), _proc_cpu(server_pid)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - t0
    gb = total / 1e9
    return gb / elapsed, (time.process_time() - c0) / gb, (_proc_cpu(server_pid) - s0) / gb


async def measure(
    addr: str, client: str, bs: int, requests: int, runs: int, concurrency: int, server_pid: int
) -> list[Run]:
    clients = _Clients(addr, bs, max(concurrency, 1))
    results: list[Run] = []
    try:
        if client == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(limits=limits, timeout=30) as hc:

                async def fn(i: int) -> int:
                    return await clients.httpx(i, hc)

                await _run_once(fn, NBLOCKS, concurrency, server_pid)  # warm connections
                for _ in range(runs):
                    results.append(await _run_once(fn, requests, concurrency, server_pid))
        else:
            fn = {
                "raw": clients.raw,
                "fluidfs": clients.fluidfs,
                "urllib3-read": clients.urllib3_read,
                "urllib3-into": clients.urllib3_into,
            }[client]
            await _run_once(fn, NBLOCKS, concurrency, server_pid)
            for _ in range(runs):
                results.append(await _run_once(fn, requests, concurrency, server_pid))
    finally:
        clients.close()
    return results


def checksum_speeds(bs: int) -> dict[str, float]:
    """GB/s of the block checksum (CRC-32 by zlib-ng, what blockfile uses; stdlib zlib for
    comparison) and of hardware CRC-32C."""
    data = os.urandom(bs)
    fns: dict[str, Callable[[bytes], int]] = {"crc32 (zlib)": zlib.crc32, "crc32 (zlib-ng)": blockfile.checksum}
    try:
        import google_crc32c

        fns["crc32c (google-crc32c)"] = google_crc32c.value
    except ImportError:
        pass
    out = {}
    for name, fn in fns.items():
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(10):
                fn(data)
            best = min(best, (time.perf_counter() - t0) / 10)
        out[name] = bs / best / 1e9
    return out


def _available(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-size", type=int, default=4 << 20)
    p.add_argument("--requests", type=int, default=96, help="block requests per run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--servers", nargs="+", default=["raw", "h11", "hypercorn"])
    p.add_argument("--clients", nargs="+", default=["fluidfs", "urllib3-read", "urllib3-into", "httpx"])
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--serve", choices=["raw", "h11", "hypercorn"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve == "raw":
        _serve_raw(args.port, args.block_size)
        return
    if args.serve:
        trio.run(_serve_h11 if args.serve == "h11" else _serve_hypercorn, args.port, args.block_size)
        return
    rows = []
    speeds = checksum_speeds(args.block_size)
    print("checksum of one block: " + ", ".join(f"{n} {v:.1f} GB/s" for n, v in speeds.items()))
    print(
        f"peer protocol on loopback: {args.block_size >> 20} MiB blocks, {args.requests} requests/run, "
        f"median of {args.runs} runs, {os.cpu_count()} CPUs"
    )
    print(
        f"{'server':<10} {'client':<13} {'conc':>4} {'GB/s':>6} {'range':>11}  "
        f"{'client CPU s/GB':>15} {'server CPU s/GB':>15}"
    )
    for server in args.servers:
        if server == "hypercorn" and not _available("hypercorn"):
            print(f"{server:<10} (not installed: pip install hypercorn)")
            continue
        proc, addr = start_server(server, args.block_size)
        try:
            for client in ["raw"] if server == "raw" else args.clients:
                if client == "httpx" and not _available("httpx"):
                    print(f"{server:<10} {client:<13} (not installed: pip install httpx)")
                    continue
                for conc in args.concurrency:
                    res = trio.run(measure, addr, client, args.block_size, args.requests, args.runs, conc, proc.pid)
                    rates = [r[0] for r in res]
                    ccpu = statistics.median(r[1] for r in res)
                    scpu = statistics.median(r[2] for r in res)
                    rows.append({"server": server, "client": client, "concurrency": conc, "runs": res})
                    print(
                        f"{server:<10} {client:<13} {conc:>4} {statistics.median(rates):>6.2f} "
                        f"{min(rates):>5.2f}-{max(rates):<5.2f}  {ccpu:>15.2f} {scpu:>15.2f}",
                        flush=True,
                    )
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
