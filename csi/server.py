"""``fluidfs-csi``: the CSI plugin process (gRPC over a unix socket).

    fluidfs-csi --endpoint unix:///csi/csi.sock --mode node|controller|all|mounter
                [--node-id NAME] [--mounter unix:///run/fluidfs/mounter.sock]
                [--state-dir DIR] [--cache-root DIR] [--unstage-grace SECONDS]
                [--mount-timeout SECONDS] [--metrics-addr HOST:PORT] [--check-interval SECONDS]
                [--log-level LEVEL]

Modes: ``controller`` (next to csi-provisioner), ``node`` (next to node-driver-registrar),
``all`` (both on one socket: tests, single-node users) and ``mounter``: the mount supervisor,
which owns every dataset daemon and bind of the node and serves the CSI Node calls on its own
socket (run it under ``python -m csi.reaper``, see ``csi/reaper.py``).  With ``--mounter`` the
node service forwards every volume call to that supervisor (``csi/forward.py``) and holds
nothing itself, so the plugin can be restarted at will; without it the node service mounts
in-process, and its daemons live as long as its container does.  SIGTERM/SIGINT stop serving
but leave every mount in place: a restarted supervisor (or in-process plugin) adopts them from
its state file and repairs whatever died meanwhile.

Caveats: ``--mode controller`` keeps its own state file (CreateVolume idempotency) and must not
share a state directory with a node plugin or supervisor (the state directory is locked).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc

from fluidfs.util.sizes import parse_duration

from . import metrics
from ._gen import csi_pb2_grpc as pb_grpc
from .controller import ControllerServicer
from .daemons import fluidfs_command
from .forward import ForwardingNodeServicer, Supervisor
from .identity import IdentityServicer
from .mountops import fuse_usable
from .mounts import MOUNT_TIMEOUT, MountManager
from .node import BUDGET_SLACK, NodeServicer
from .recovery import Monitor
from .rpc import POOL_THREADS
from .state import State, StateStore

log = logging.getLogger("csi")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluidfs-csi", description="fluidfs CSI plugin")
    p.add_argument("--endpoint", required=True, help="unix:///path/csi.sock")
    p.add_argument("--node-id", default="", help="this node's name (NodeGetInfo, topology); modes node and all")
    p.add_argument("--mode", choices=("node", "controller", "all", "mounter"), default="all")
    p.add_argument("--mounter", default="", help="forward Node calls to the mount supervisor on this unix socket")
    p.add_argument("--state-dir", default="/var/lib/fluidfs-csi", help="state file, mounts, credentials")
    p.add_argument("--cache-root", default="", help="per-dataset cache dirs (default STATE_DIR/cache)")
    p.add_argument("--unstage-grace", default="0", help="keep an unused dataset mounted this long")
    p.add_argument("--mount-timeout", default=f"{MOUNT_TIMEOUT:.0f}", help="longest wait for one dataset mount")
    p.add_argument("--metrics-addr", default="", help="serve Prometheus metrics on HOST:PORT")
    p.add_argument("--check-interval", type=float, default=1.0, help="seconds between health checks")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def socket_path(endpoint: str, flag: str = "--endpoint") -> str:
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("/"):
        path = endpoint
    else:
        raise ValueError(f"{flag} {endpoint!r}: only unix:///absolute/path sockets are supported")
    if not path.startswith("/"):
        raise ValueError(f"{flag} {endpoint!r}: the socket path must be absolute")
    return path


def _check_args(args: argparse.Namespace) -> tuple[str, str, float, float]:
    """(socket, supervisor socket or "", unstage grace, mount timeout); ValueError on a mistake."""
    sock = socket_path(args.endpoint)
    sup = socket_path(args.mounter, "--mounter") if args.mounter else ""
    grace = parse_duration(args.unstage_grace, "--unstage-grace")
    mount_timeout = parse_duration(args.mount_timeout, "--mount-timeout")
    if not 1 <= mount_timeout < math.inf:
        raise ValueError(f"--mount-timeout {args.mount_timeout!r}: must be at least 1 second and finite")
    if args.mode in ("node", "all") and not args.node_id:
        raise ValueError(f"--node-id is required with --mode {args.mode}")
    if sup and args.mode not in ("node", "all"):
        raise ValueError(f"--mounter: only the node service forwards to a supervisor, not --mode {args.mode}")
    if sup and args.metrics_addr and args.mode == "node":
        raise ValueError("--metrics-addr: with --mounter the mount metrics are the supervisor's (--mode mounter)")
    return sock, sup, grace, mount_timeout


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        sock, sup_sock, grace, mount_timeout = _check_args(args)
    except ValueError as e:
        print(f"fluidfs-csi: error: {e}", file=sys.stderr)
        return 2
    with_controller = args.mode in ("controller", "all")
    local_node = args.mode == "mounter" or (args.mode in ("node", "all") and not sup_sock)
    store = state = manager = monitor = supervisor = None
    if with_controller or local_node:
        store = StateStore(args.state_dir)
        try:
            store.lock()
        except OSError:
            print(f"fluidfs-csi: error: another plugin uses state dir {args.state_dir}", file=sys.stderr)
            return 1
        state = store.load()
    if local_node:
        assert store is not None and state is not None
        manager = MountManager(
            store,
            state,
            cache_root=args.cache_root or os.path.join(args.state_dir, "cache"),
            unstage_grace=grace if grace != math.inf else 10**9,
            fluidfs_cmd=fluidfs_command(),
            mount_timeout=mount_timeout,
        )
        monitor = Monitor(manager, interval=args.check_interval)
    if sup_sock:
        supervisor = Supervisor(f"unix://{sup_sock}", mount_timeout + BUDGET_SLACK + 5.0)

    def ready() -> bool:
        if manager is not None:
            return fuse_usable() and manager.fluidfs_cmd is not None
        if supervisor is not None:
            return supervisor.ready()
        return True

    server = _serve(args, sock, with_controller, ready, store, state, manager, supervisor)
    if args.metrics_addr:
        host, port = metrics.serve(args.metrics_addr)
        log.info("metrics on http://%s:%d/metrics", host, port)
    if state is not None and manager is not None:
        metrics.SHARED_MOUNTS.set(len(state.mounts))
        for vid in state.volumes:
            metrics.set_volume(vid, True)
        manager.publish_datasets()
    if manager is not None:
        manager.sweep_orphans()  # before serving: a mount in progress is not in the state yet
    if monitor is not None:
        monitor.start()
    server.start()
    if args.mode == "mounter":
        os.chmod(sock, 0o600)  # secrets travel through it: root only
    log.info(
        "fluidfs-csi serving %s on %s (node %s%s)",
        args.mode,
        sock,
        args.node_id or "-",
        f", {len(state.volumes)} staged volume(s) in state" if local_node and state is not None else "",
    )
    if supervisor is not None:
        log.info("volume calls are forwarded to the mount supervisor at %s", sup_sock)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping (mounts stay in place)")
    server.stop(grace=5).wait()
    if monitor is not None:
        monitor.stop()
    if supervisor is not None:
        supervisor.close()
    return 0


def _serve(
    args: argparse.Namespace,
    sock: str,
    with_controller: bool,
    ready: Callable[[], bool],
    store: StateStore | None,
    state: State | None,
    manager: MountManager | None,
    supervisor: Supervisor | None,
) -> grpc.Server:
    """The gRPC server with the services of ``args.mode``, bound to ``sock`` (not started)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="csi-rpc"))
    pb_grpc.add_IdentityServicer_to_server(IdentityServicer(with_controller, ready), server)
    if with_controller:
        assert store is not None and state is not None
        lock = manager.state_lock if manager is not None else threading.RLock()
        pb_grpc.add_ControllerServicer_to_server(ControllerServicer(store, state, lock), server)
    if manager is not None:
        pb_grpc.add_NodeServicer_to_server(NodeServicer(args.node_id or os.uname().nodename, manager), server)
    elif supervisor is not None:
        pb_grpc.add_NodeServicer_to_server(ForwardingNodeServicer(args.node_id, supervisor), server)
    os.makedirs(os.path.dirname(sock), exist_ok=True)
    if os.path.exists(sock):
        os.unlink(sock)
    server.add_insecure_port(f"unix://{sock}")
    return server


if __name__ == "__main__":
    sys.exit(main())
