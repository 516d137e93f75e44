"""``fluidfs-controller``: the command line of the control plane.

    fluidfs-controller [--namespace NS] [--kubeconfig FILE] [--metrics-addr HOST:PORT]
                       [--worker-image IMAGE] [--peer-secret NAME[/KEY]] [--client-namespace NS
                       --client-selector k=v,...] [--leader-election --lease-namespace NS] ...
    fluidfs-controller --local DIR --worker-command 'CMD {listen} ...' DATASET.yaml ...

The first form runs against the Kubernetes API (in a pod: its ServiceAccount); the second runs
the same controller with the local actuator (``fluidfs.control.local``): cache workers are
processes of ``--worker-command`` and the Dataset resources come from the files given.

Exit codes: 0 after SIGTERM/SIGINT, 2 for bad arguments or Dataset files, 1 when the cluster
cannot be reached at start.  The controller is a plain threaded program: no trio, no asyncio.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from fluidfs.control import metrics
from fluidfs.control.adapter import KubeApi
from fluidfs.control.controller import Controller, ControllerConfig
from fluidfs.control.leader import LeaderElector
from fluidfs.control.objects import WorkerConfig
from fluidfs.errors import ControlError, KubeApiError

log = logging.getLogger("fluidfs.control")


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value[,key=value...], got {text!r}")
        out[key] = value
    return out


def _addr(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if text.lower() in ("none", "off"):
        return ""
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or 'none', got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluidfs-controller", description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="*", metavar="DATASET.yaml", help="Dataset resources (with --local only)")
    p.add_argument("--namespace", default=None, help="reconcile Datasets of this namespace only (default: all)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    p.add_argument("--metrics-addr", type=_addr, default="0.0.0.0:8080", help="Prometheus endpoint, or 'none'")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    w = p.add_argument_group("cache workers")
    w.add_argument("--worker-image", default=WorkerConfig.image)
    w.add_argument("--worker-image-pull-policy", default=WorkerConfig.image_pull_policy,
                   choices=["Always", "IfNotPresent", "Never"])  # fmt: skip
    w.add_argument("--image-pull-secret", action="append", default=[], help="for the worker pods (repeatable)")
    w.add_argument("--peer-port", type=int, default=WorkerConfig.peer_port)
    w.add_argument("--worker-metrics-port", type=int, default=WorkerConfig.metrics_port)
    w.add_argument("--peer-secret", default=f"{WorkerConfig.peer_secret}/{WorkerConfig.peer_secret_key}",
                   help="NAME[/KEY] of the Secret with the peer key, in each Dataset's namespace")  # fmt: skip
    w.add_argument("--worker-log-level", default="info")
    c = p.add_argument_group("signals")
    c.add_argument("--client-namespace", default="", help="namespace of the CSI mount supervisor pods")
    c.add_argument("--client-selector", type=_labels, default={}, help="their labels, k=v[,k=v...]")
    c.add_argument("--scrape-timeout", type=float, default=5.0)
    e = p.add_argument_group("leader election")
    e.add_argument("--leader-election", action="store_true", help="reconcile only while holding a Lease")
    e.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    e.add_argument("--lease-name", default="fluidfs-controller")
    e.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname())
    loc = p.add_argument_group("local actuator")
    loc.add_argument("--local", metavar="DIR", help="run workers as local processes, state under DIR")
    loc.add_argument("--worker-command", help="command line of one worker, with {listen}, {metrics_addr}, ...")
    loc.add_argument("--stop-timeout", type=float, default=None, help="SIGKILL this long after SIGTERM")
    return p


def _backend(args: argparse.Namespace) -> KubeApi:
    if args.local:
        from fluidfs.control.local import LocalCluster

        if not args.worker_command:
            raise ControlError("--local needs --worker-command")
        local = LocalCluster(args.local, shlex.split(args.worker_command), stop_timeout=args.stop_timeout)
        for path in args.datasets:
            try:
                local.load_dataset(path)
            except (OSError, ValueError, KubeApiError) as exc:
                raise ControlError(f"{path}: {exc}") from None
        return local
    if args.datasets:
        raise ControlError("Dataset files are read only with --local (use kubectl apply)")
    from fluidfs.control.kube import KubeClient

    return KubeClient(args.kubeconfig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    secret, _, key = args.peer_secret.partition("/")
    worker = WorkerConfig(
        image=args.worker_image,
        image_pull_policy=args.worker_image_pull_policy,
        image_pull_secrets=tuple(args.image_pull_secret),
        peer_port=args.peer_port,
        metrics_port=args.worker_metrics_port,
        peer_secret=secret,
        peer_secret_key=key or WorkerConfig.peer_secret_key,
        log_level=args.worker_log_level,
    )
    cfg = ControllerConfig(
        namespace=args.namespace,
        worker=worker,
        client_namespace=args.client_namespace,
        client_selector=args.client_selector,
        scrape_timeout=args.scrape_timeout,
        identity=args.identity,
    )
    try:
        api = _backend(args)
    except ControlError as exc:
        print(f"fluidfs-controller: {exc}", file=sys.stderr)
        return 2 if args.local or args.datasets else 1
    if args.local:
        from fluidfs.control.local import CLIENT_NAMESPACE

        cfg = ControllerConfig(**{**cfg.__dict__, "client_namespace": CLIENT_NAMESPACE})
    if args.metrics_addr:
        try:
            metrics.serve(args.metrics_addr)
        except OSError as exc:
            print(f"fluidfs-controller: metrics address {args.metrics_addr}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    elector = None
    if args.leader_election:
        elector = LeaderElector(api, args.lease_namespace, args.lease_name, args.identity)
    controller = Controller(api, cfg)
    log.info("fluidfs-controller %s: reconciling Datasets of %s", args.identity, args.namespace or "every namespace")
    try:
        controller.run(stop, elector)
    finally:
        controller.close()
        close = getattr(api, "close", None)
        if callable(close):
            close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
