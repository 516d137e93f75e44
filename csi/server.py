"""``fluidfs-csi``: the CSI plugin process (gRPC over a unix socket).

    fluidfs-csi --endpoint unix:///csi/csi.sock --mode node|controller|all|mounter
                [--node-id NAME] [--mounter unix:///run/fluidfs/mounter.sock]
                [--state-dir DIR] [--cache-root DIR] [--unstage-grace SECONDS]
                [--mount-timeout SECONDS] [--metrics-addr HOST:PORT] [--check-interval SECONDS]
                [--peer-ports LO-HI] [--member-id NAME] [--log-level LEVEL]
                [--allow-host-path PATH]... [--node-identity] [--disable-ephemeral] [--kubelet-dir DIR]
                [--memory-limit auto|none|SIZE] [--cache-capacity SIZE|PCT|none]
                [--cache-free-floor SIZE|PCT] [--cache-gc-grace DURATION]

Modes: ``controller`` (next to csi-provisioner), ``node`` (next to node-driver-registrar),
``all`` (both on one socket: tests, single-node users) and ``mounter``: the mount supervisor,
which owns every dataset daemon and bind of the node and serves the CSI Node calls on its own
socket (run it under ``python -m csi.reaper``, see ``csi/reaper.py``).  With ``--mounter`` the
node service forwards every volume call to that supervisor (``csi/forward.py``) and holds
nothing itself, so the plugin can be restarted at will; without it the node service mounts
in-process, and its daemons live as long as its container does.  SIGTERM/SIGINT stop serving
but leave every mount in place: a restarted supervisor (or in-process plugin) adopts them from
its state file and repairs whatever died meanwhile.

What volumes may read (local host paths, the node's cloud identity, inline volumes) is the
admin's policy (``csi/policy.py``); how much memory and cache disk all datasets of the node may
take together is its budget (``csi/budget.py``).  A mount supervisor's metrics page also carries
every dataset daemon's metrics (``csi/metrics.py``).

Caveats: ``--mode controller`` keeps its own state file (CreateVolume idempotency) and must not
share a state directory with a node plugin or supervisor (the state directory is locked).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc

from fluidfs.util.sizes import parse_duration, parse_size

from . import metrics, peers
from ._gen import csi_pb2_grpc as pb_grpc
from .budget import DEFAULT_CAPACITY, DEFAULT_FREE_FLOOR, Amount, NodeBudget, cgroup_memory_limit
from .controller import ControllerServicer
from .daemons import fluidfs_command
from .forward import ForwardingNodeServicer, Supervisor
from .identity import IdentityServicer
from .mountops import fuse_usable
from .mounts import MIN_MOUNT_TIMEOUT, MOUNT_TIMEOUT, MountManager
from .node import BUDGET_SLACK, NodeServicer
from .policy import Policy
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
    lo, hi = peers.DEFAULT_PORTS
    p.add_argument(
        "--peer-ports", default=f"{lo}-{hi}", help="ports of clustered datasets' peer servers (mounter; LO-HI)"
    )
    p.add_argument(
        "--member-id",
        default=os.environ.get("POD_NAME", ""),
        help="this supervisor's id in clusters (default $POD_NAME: the EndpointSlice targetRef)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sec = p.add_argument_group("what volumes may read (csi/policy.py); modes mounter, node, all, controller")
    sec.add_argument(
        "--allow-host-path",
        action="append",
        default=[],
        metavar="PATH",
        help="local (file://) sources are allowed at or below PATH (repeatable; default: none)",
    )
    sec.add_argument(
        "--node-identity",
        action="store_true",
        help="S3 sources without credentials may use the node's own identity (env, instance metadata)",
    )
    sec.add_argument("--disable-ephemeral", action="store_true", help="refuse inline (ephemeral) volumes")
    sec.add_argument(
        "--kubelet-dir",
        default="/var/lib/kubelet",
        help="kubelet's root directory: never a local source (nor the state dir)",
    )
    res = p.add_argument_group("node budgets (csi/budget.py); modes mounter, node and all")
    res.add_argument(
        "--memory-limit",
        default="auto",
        help="memory for all dataset daemons: auto (the cgroup's limit), none, or a size",
    )
    res.add_argument(
        "--cache-capacity",
        default=DEFAULT_CAPACITY,
        help="SSD quota of all datasets together: a size, a percentage of the cache file system, or none",
    )
    res.add_argument(
        "--cache-free-floor",
        default=DEFAULT_FREE_FLOOR,
        help="never fill the cache file system below this much free space (size or percentage)",
    )
    res.add_argument("--cache-gc-grace", default="24h", help="remove a cache directory no dataset used for this long")
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
    args.peer_ports = peers.parse_ports(args.peer_ports)
    sup = socket_path(args.mounter, "--mounter") if args.mounter else ""
    grace = parse_duration(args.unstage_grace, "--unstage-grace")
    mount_timeout = parse_duration(args.mount_timeout, "--mount-timeout")
    if not MIN_MOUNT_TIMEOUT <= mount_timeout < math.inf:
        raise ValueError(
            f"--mount-timeout {args.mount_timeout!r}: must be finite and at least {MIN_MOUNT_TIMEOUT:g} seconds"
            " (a mount waits for its source's request timeout, 20 s by default, plus 10 s)"
        )
    if args.mode in ("node", "all") and not args.node_id:
        raise ValueError(f"--node-id is required with --mode {args.mode}")
    if sup and args.mode not in ("node", "all"):
        raise ValueError(f"--mounter: only the node service forwards to a supervisor, not --mode {args.mode}")
    if sup and args.metrics_addr and args.mode == "node":
        raise ValueError("--metrics-addr: with --mounter the mount metrics are the supervisor's (--mode mounter)")
    return sock, sup, grace, mount_timeout


def _policy(args: argparse.Namespace, cache_root: str) -> Policy:
    return Policy.build(
        args.allow_host_path,
        node_identity=args.node_identity,
        ephemeral=not args.disable_ephemeral,
        protected=[args.state_dir, cache_root, args.kubelet_dir],
    )


def _budget(args: argparse.Namespace, cache_root: str) -> tuple[NodeBudget, float]:
    """The node budget and the cache GC grace period from the flags; ValueError on a mistake."""
    if args.memory_limit == "auto":
        limit = cgroup_memory_limit()
    elif args.memory_limit == "none":
        limit = None
    else:
        limit = parse_size(args.memory_limit, "--memory-limit")
    capacity = None if args.cache_capacity == "none" else Amount.parse(args.cache_capacity, "--cache-capacity")
    floor = Amount.parse(args.cache_free_floor, "--cache-free-floor")
    gc_grace = parse_duration(args.cache_gc_grace, "--cache-gc-grace")
    budget = NodeBudget(cache_root, memory_limit=limit, cache_capacity=capacity, free_floor=floor)
    return budget, gc_grace


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cache_root = args.cache_root or os.path.join(args.state_dir, "cache")
    try:
        sock, sup_sock, grace, mount_timeout = _check_args(args)
        policy = _policy(args, cache_root)
        node_budget, gc_grace = _budget(args, cache_root)
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
            cache_root=cache_root,
            unstage_grace=grace if grace != math.inf else 10**9,
            fluidfs_cmd=fluidfs_command(),
            mount_timeout=mount_timeout,
            peer_ports=args.peer_ports,
            member_id=args.member_id or args.node_id,
            policy=policy,
            budget=node_budget,
            cache_grace=gc_grace,
        )
        monitor = Monitor(manager, interval=args.check_interval)
        metrics.register_daemons(manager.daemon_endpoints)
        log.info(
            "budgets: memory limit %s, cache capacity %s, free-space floor %s; local sources %s; node identity %s",
            node_budget.memory_limit if node_budget.memory_limit is not None else "none",
            args.cache_capacity,
            args.cache_free_floor,
            ", ".join(policy.host_paths) or "refused",
            "allowed" if policy.node_identity else "refused",
        )
    if sup_sock:
        supervisor = Supervisor(f"unix://{sup_sock}", mount_timeout + BUDGET_SLACK + 5.0)

    def ready() -> bool:
        if supervisor is not None:
            return supervisor.ready()
        return True

    def missing() -> str:
        if manager is None:
            return ""
        if not fuse_usable():
            return "/dev/fuse cannot be opened"
        cmd = manager.fluidfs_cmd
        if cmd is None or shutil.which(cmd[0]) is None:
            return f"the fluidfs command ({cmd[0] if cmd else 'fluidfs'}) is not installed"
        return ""

    server = _serve(args, sock, with_controller, (ready, missing), store, state, manager, supervisor, policy)
    if args.metrics_addr:
        host, port = metrics.serve(args.metrics_addr)
        log.info("metrics on http://%s:%d/metrics", host, port)
    if state is not None and manager is not None:
        metrics.SHARED_MOUNTS.set(len(state.mounts))
        for vid in state.volumes:
            metrics.set_volume(vid, True)
        manager.publish_datasets()
        for m in state.mounts.values():
            peers.publish(m)
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
    health: tuple[Callable[[], bool], Callable[[], str]],
    store: StateStore | None,
    state: State | None,
    manager: MountManager | None,
    supervisor: Supervisor | None,
    policy: Policy,
) -> grpc.Server:
    """The gRPC server with the services of ``args.mode``, bound to ``sock`` (not started);
    ``health`` is (ready, missing) of the Identity service's Probe."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="csi-rpc"))
    pb_grpc.add_IdentityServicer_to_server(IdentityServicer(with_controller, *health), server)
    if with_controller:
        assert store is not None and state is not None
        lock = manager.state_lock if manager is not None else threading.RLock()
        pb_grpc.add_ControllerServicer_to_server(ControllerServicer(store, state, lock, policy), server)
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
