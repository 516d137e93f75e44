"""``fluidfs-csi``: the CSI plugin process (gRPC over a unix socket).

    fluidfs-csi --endpoint unix:///csi/csi.sock --node-id NAME [--state-dir DIR]
                [--mode node|controller|all] [--cache-root DIR] [--unstage-grace SECONDS]
                [--metrics-addr HOST:PORT] [--check-interval SECONDS] [--log-level LEVEL]

``all`` serves Identity, Controller and Node on one socket (tests, single-node users); the Helm
chart runs ``controller`` next to csi-provisioner and ``node`` in the DaemonSet.  SIGTERM/SIGINT
stop serving but leave every mount in place: a restarted plugin picks them up from its state
file (and repairs whatever died meanwhile).

Caveats: ``--mode controller`` keeps its own state file (CreateVolume idempotency) and must not
share a state directory with a node plugin (the state directory is locked).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent import futures

import grpc

from fluidfs.util.sizes import parse_duration

from . import metrics
from ._gen import csi_pb2_grpc as pb_grpc
from .controller import ControllerServicer
from .identity import IdentityServicer
from .mounts import MountManager, fluidfs_command, fuse_usable
from .node import NodeServicer
from .recovery import Monitor
from .state import StateStore

log = logging.getLogger("csi")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluidfs-csi", description="fluidfs CSI plugin")
    p.add_argument("--endpoint", required=True, help="unix:///path/csi.sock")
    p.add_argument("--node-id", required=True, help="this node's name (NodeGetInfo, topology)")
    p.add_argument("--state-dir", default="/var/lib/fluidfs-csi", help="state file, mounts, credentials")
    p.add_argument("--mode", choices=("node", "controller", "all"), default="all")
    p.add_argument("--cache-root", default="", help="per-dataset cache dirs (default STATE_DIR/cache)")
    p.add_argument("--unstage-grace", default="0", help="keep an unused dataset mounted this long")
    p.add_argument("--metrics-addr", default="", help="serve Prometheus metrics on HOST:PORT")
    p.add_argument("--check-interval", type=float, default=1.0, help="seconds between health checks")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def socket_path(endpoint: str) -> str:
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("/"):
        path = endpoint
    else:
        raise ValueError(f"--endpoint {endpoint!r}: only unix:///absolute/path sockets are supported")
    if not path.startswith("/"):
        raise ValueError(f"--endpoint {endpoint!r}: the socket path must be absolute")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        sock = socket_path(args.endpoint)
        grace = parse_duration(args.unstage_grace, "--unstage-grace")
    except ValueError as e:
        print(f"fluidfs-csi: error: {e}", file=sys.stderr)
        return 2
    store = StateStore(args.state_dir)
    try:
        store.lock()
    except OSError:
        print(f"fluidfs-csi: error: another plugin uses state dir {args.state_dir}", file=sys.stderr)
        return 1
    state = store.load()
    with_node = args.mode in ("node", "all")
    with_controller = args.mode in ("controller", "all")

    manager = MountManager(
        store,
        state,
        cache_root=args.cache_root or os.path.join(args.state_dir, "cache"),
        unstage_grace=grace if grace != float("inf") else 10**9,
        fluidfs_cmd=fluidfs_command(),
    )
    monitor = Monitor(manager, interval=args.check_interval) if with_node else None

    def ready() -> bool:
        if not with_node:
            return True
        return fuse_usable() and manager.fluidfs_cmd is not None and monitor is not None and monitor.recovered.is_set()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="csi-rpc"))
    pb_grpc.add_IdentityServicer_to_server(IdentityServicer(with_controller, ready), server)
    if with_controller:
        pb_grpc.add_ControllerServicer_to_server(ControllerServicer(store, state, manager.lock), server)
    if with_node:
        pb_grpc.add_NodeServicer_to_server(NodeServicer(args.node_id, manager), server)
    os.makedirs(os.path.dirname(sock), exist_ok=True)
    if os.path.exists(sock):
        os.unlink(sock)
    server.add_insecure_port(f"unix://{sock}")

    if args.metrics_addr:
        host, port = metrics.serve(args.metrics_addr)
        log.info("metrics on http://%s:%d/metrics", host, port)
    metrics.SHARED_MOUNTS.set(len(state.mounts))
    for vid in state.volumes:
        metrics.set_volume(vid, True)
    if monitor is not None:
        monitor.start()
    server.start()
    log.info(
        "fluidfs-csi serving %s on %s (node %s, %d staged volume(s) in state)",
        args.mode,
        sock,
        args.node_id,
        len(state.volumes),
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping (mounts stay in place)")
    server.stop(grace=5).wait()
    if monitor is not None:
        monitor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
