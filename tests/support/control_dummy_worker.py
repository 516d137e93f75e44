"""A stand-in for ``fluidfs worker`` in local-actuator tests: serves a metrics endpoint and
drains on SIGTERM.

    python control_dummy_worker.py --metrics-addr HOST:PORT --listen HOST:PORT --dataset FILE
                                   [--drain SECONDS] [--ignore-term]

It exports the cache gauges and counters a worker exports (so the controller's sample is
complete), writes ``ready`` into its working directory once it handles SIGTERM and ``drained``
when it leaves after SIGTERM, and with ``--ignore-term`` ignores SIGTERM (to test the SIGKILL
deadline).  It exits by itself after
10 minutes, so a failed test never leaves it behind.
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import socket
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--metrics-addr", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--drain", type=float, default=0.2)
    p.add_argument("--ignore-term", action="store_true")
    args = p.parse_args()
    name = pathlib.Path(args.dataset).read_text().split("name: ", 1)[1].split()[0]
    reg = CollectorRegistry()
    Gauge("fluidfs_cache_used_bytes", "", ["dataset", "tier"], registry=reg).labels(name, "ssd").set(1 << 20)
    Gauge("fluidfs_cache_quota_bytes", "", ["dataset", "tier"], registry=reg).labels(name, "ssd").set(1 << 30)
    for metric in ("fluidfs_cache_hits", "fluidfs_cache_misses"):
        Counter(metric, "", ["dataset", "tier"], registry=reg).labels(name, "mem").inc(1)
    host, _, port = args.metrics_addr.rpartition(":")
    lhost, _, lport = args.listen.rpartition(":")
    peer = socket.create_server((lhost, int(lport)))  # the peer port, as a real worker would hold it
    stop = {"term": False}

    def on_term(signum: int, frame: object) -> None:
        stop["term"] = True

    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_term else on_term)
    start_http_server(int(port), addr=host, registry=reg)
    pathlib.Path("ready").write_text("ok\n")  # SIGTERM is handled from now on
    deadline = time.monotonic() + 600
    while not stop["term"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(args.drain)  # "hand the blocks over"
    pathlib.Path("drained").write_text("ok\n")
    peer.close()


if __name__ == "__main__":
    main()
