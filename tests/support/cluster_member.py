"""A cluster member in its own process, for tests: ``python -m tests.support.cluster_member JSON``.

JSON: {"name", "root", "work", "listen", "peers", "dataset", "bs", "mem", "ssd_quota",
"source_delay", "settings": {PeerSettings fields}}.  Prints ``{"ready": true, "address": ...}``
once serving, then answers one JSON line per command read from stdin:

* ``{"op": "read", "path": P}`` → ``{"sha256", "size"}`` (the whole file through the cache)
* ``{"op": "read_all", "paths": [P...]}`` → ``{P: {"sha256", "size"}}`` (one after the other)
* ``{"op": "stats"}`` → source reads, peer fetches, the node's status
* ``{"op": "source", "down": bool}`` → switch the source off/on
* ``{"op": "leave", "timeout": s}`` → the handoff report
* ``{"op": "quit"}`` → exits
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio

from tests.support.cluster_harness import build_member, read_through


def _out(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def main(cfg: dict[str, Any]) -> None:
    m = build_member(
        cfg["name"],
        Path(cfg["root"]),
        Path(cfg["work"]),
        cfg["listen"],
        Path(cfg["peers"]),
        cfg["dataset"],
        bs=cfg.get("bs", 256 * 1024),
        mem=cfg.get("mem", 64 << 20),
        ssd_quota=cfg.get("ssd_quota"),
        source_delay=cfg.get("source_delay", 0.0),
        **cfg.get("settings", {}),
    )
    stdin_limiter = trio.CapacityLimiter(1)
    try:
        async with trio.open_nursery() as nursery:
            m.cache.start(nursery)
            address = await nursery.start(m.node.run)
            _out({"ready": True, "address": address, "self": m.node.view.self_id})
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, limiter=stdin_limiter, abandon_on_cancel=True)
                if not line:
                    break
                cmd = json.loads(line)
                op = cmd.get("op")
                try:
                    if op == "read":
                        data = await read_through(m.cache, m.asource, cmd["path"], m.bs, cmd.get("concurrency", 4))
                        _out({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
                    elif op == "read_all":
                        out: dict[str, Any] = {}
                        for path in cmd["paths"]:
                            data = await read_through(m.cache, m.asource, path, m.bs, cmd.get("concurrency", 4))
                            out[path] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                        _out(out)
                    elif op == "stats":
                        _out(
                            {
                                "source_reads": m.source.total,
                                "source_max_per_block": max(m.source.reads.values(), default=0),
                                "peer_fetches": m.cache.peer_fetches,
                                "source_fetches": m.cache.source_fetches,
                                "status": m.node.status(),
                            }
                        )
                    elif op == "source":
                        m.source.down = bool(cmd["down"])
                        _out({"ok": True})
                    elif op == "leave":
                        report = await m.node.leave(cmd.get("timeout"))
                        _out(dataclasses.asdict(report))
                    elif op == "quit":
                        _out({"ok": True})
                        break
                    else:
                        _out({"error": f"unknown op {op!r}"})
                except Exception as exc:  # report, keep serving
                    logging.exception("command %s failed", op)
                    _out({"error": f"{type(exc).__name__}: {exc}"})
            nursery.cancel_scope.cancel()
    finally:
        m.close()


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("FLUIDFS_TEST_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    trio.run(main, json.loads(sys.argv[1]))
