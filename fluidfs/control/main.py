"""``fluidfs-controller``: the command line of the control plane.

    fluidfs-controller [--namespace NS] [--kubeconfig FILE] [--metrics-addr HOST:PORT]
                       [--worker-image IMAGE] [--peer-secret NAME[/KEY]] [--client-namespace NS
                       --client-selector k=v,...] [--leader-election --lease-namespace NS]
                       [--webhook-port PORT --webhook-cert-dir DIR] [--node-labels]
                       [--queue NAME ... --queue-policy fifo|sjf --warm-ahead N] ...
    fluidfs-controller --local DIR --worker-command 'CMD {listen} ...' DATASET.yaml ...

The first form runs against the Kubernetes API (in a pod: its ServiceAccount); the second runs
the same controller with the local actuator (``fluidfs.control.local``): cache workers are
processes of ``--worker-command`` and the Dataset resources come from the files given (there is
no cluster to schedule on: the webhook, node labels and queues are Kubernetes-only).

Cache-aware scheduling (docs/scheduling.md; each part off unless asked for): ``--webhook-port``
serves the admission webhook (``tls.crt``/``tls.key`` from ``--webhook-cert-dir``),
``--node-labels`` writes the ``cache.fluidfs.io/`` node labels from the mounters' metrics (the
``--client-*`` pods), ``--queue NAME`` (repeatable) runs the Job queue of that name.

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
from fluidfs.control.jobqueue import QueueSettings
from fluidfs.control.kueuecheck import KueueSettings
from fluidfs.control.leader import LeaderElector
from fluidfs.control.nodelabels import LabelConfig
from fluidfs.control.objects import WorkerConfig
from fluidfs.control.sched.kueue import CONTROLLER_NAME
from fluidfs.control.sched.locations import LabelPolicy
from fluidfs.control.sched.ordering import BasePolicy, OrderingConfig, SourceModel
from fluidfs.control.sched.queue import GPU
from fluidfs.control.sched.resolve import DRIVER
from fluidfs.control.scheduling import Scheduling, SchedulingConfig, WebhookSettings
from fluidfs.control.warm import WarmConfig
from fluidfs.errors import ControlError, KubeApiError
from fluidfs.util.sizes import parse_duration, parse_size

log = logging.getLogger("fluidfs.control")

#: seconds the webhook waits for the API server when its caches lack a volume object
LOOKUP_TIMEOUT = 1.5


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


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    """Bytes per second: ``4G``, ``250M/s``, ``1e9``."""
    value = _size(text.removesuffix("/s"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive rate in bytes/s, got {text!r}")
    return float(value)


def scheduling_config(args: argparse.Namespace, worker: WorkerConfig) -> SchedulingConfig:
    """The scheduling features asked for on the command line; ControlError for bad combinations."""
    webhook = None
    if args.webhook_port:
        webhook = WebhookSettings(
            os.path.join(args.webhook_cert_dir, "tls.crt"),
            os.path.join(args.webhook_cert_dir, "tls.key"),
            args.webhook_host,
            args.webhook_port,
        )
    labels = None
    if args.node_labels:
        if not args.client_namespace or not args.client_selector:
            raise ControlError("--node-labels needs --client-namespace and --client-selector (the mounter pods)")
        try:
            policy = LabelPolicy(args.node_label_max, args.node_label_min)
        except ValueError as exc:
            raise ControlError(f"--node-label-*: {exc}") from None
        labels = LabelConfig(args.client_namespace, args.client_selector, args.node_label_interval, policy,
                             args.scrape_timeout)  # fmt: skip
    queues = warm = kueue = None
    if args.queue or args.kueue_check:
        ordering = _ordering(args)
        if args.queue_slots is not None and args.queue_slots < 1:
            raise ControlError("--queue-slots must be at least 1")
        if args.queue:
            queues = QueueSettings(tuple(dict.fromkeys(args.queue)), ordering, args.queue_slots,
                                   args.queue_gpu_resource, interval=args.queue_interval)  # fmt: skip
        if args.kueue_check:
            kueue = KueueSettings(ordering, args.queue_gpu_resource, args.kueue_controller_name, args.queue_interval)
    if args.warm_ahead > 0 and not args.queue:
        raise ControlError("--warm-ahead needs --queue")
    if args.warm_ahead > 0:
        warm = WarmConfig(worker.image, worker.image_pull_policy, worker.image_pull_secrets, ttl=args.warm_ttl)
    return SchedulingConfig(webhook, labels, queues, warm, kueue=kueue, driver=args.csi_driver)


def _ordering(args: argparse.Namespace) -> OrderingConfig:
    """The ordering the ``--queue-*`` flags describe (for Job queues and the Kueue check)."""
    if (args.queue_source_bandwidth is None) != (args.queue_gpu_rate is None):
        raise ControlError("--queue-source-bandwidth and --queue-gpu-rate go together (source-aware ordering)")
    if args.queue_stagger and args.queue_source_bandwidth is None:
        raise ControlError("--queue-stagger needs --queue-source-bandwidth and --queue-gpu-rate")
    source = None
    if args.queue_source_bandwidth is not None:
        source = SourceModel(args.queue_source_bandwidth, args.queue_gpu_rate)
    try:
        return OrderingConfig(
            base=BasePolicy(args.queue_policy),
            cache_aware=args.queue_cache_aware,
            window=args.queue_window,
            max_pass_over=None if args.queue_max_pass_over < 0 else args.queue_max_pass_over,
            warm_ahead=max(0, args.warm_ahead),
            local=args.queue_prefer_local,
            source=source,
            stagger=args.queue_stagger,
        )
    except ValueError as exc:
        raise ControlError(f"--queue-*: {exc}") from None


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
    h = p.add_argument_group("cache-aware scheduling (docs/scheduling.md)")
    h.add_argument("--csi-driver", default=DRIVER, help="the fluidfs CSI driver's name (default %(default)s)")
    h.add_argument("--webhook-port", type=_port, default=0, help="serve the admission webhook here (0: off)")
    h.add_argument("--webhook-host", default="0.0.0.0")
    h.add_argument("--webhook-cert-dir", default="/tls", help="directory with tls.crt and tls.key (reloaded on change)")
    h.add_argument("--node-labels", action="store_true", help="write cache.fluidfs.io/<dataset> node labels")
    h.add_argument("--node-label-interval", type=_seconds, default=60.0, metavar="SECONDS")
    h.add_argument("--node-label-max", type=int, default=LabelPolicy.max_labels, help="labels per node at most")
    h.add_argument("--node-label-min", type=_size, default=LabelPolicy.min_bytes, metavar="SIZE",
                   help="no label below this much cached (default 64Mi)")  # fmt: skip
    h.add_argument("--queue", action="append", default=[], metavar="NAME", help="run the Job queue NAME (repeatable)")
    h.add_argument("--queue-policy", choices=[b.value for b in BasePolicy], default=BasePolicy.FIFO.value)
    h.add_argument("--queue-cache-aware", action=argparse.BooleanOptionalAction, default=True)
    h.add_argument("--queue-window", type=int, default=OrderingConfig.window)
    h.add_argument("--queue-prefer-local", action=argparse.BooleanOptionalAction, default=OrderingConfig.local,
                   help="first the jobs that fit now on a node holding their dataset's cache")  # fmt: skip
    h.add_argument("--queue-source-bandwidth", type=_rate, default=None, metavar="RATE",
                   help="source-aware ordering: bytes/s the object store gives the cluster (e.g. 4G)")  # fmt: skip
    h.add_argument("--queue-gpu-rate", type=_rate, default=None, metavar="RATE",
                   help="source-aware ordering: bytes/s one GPU reads when its data is cached (e.g. 250M)")  # fmt: skip
    h.add_argument("--queue-stagger", action=argparse.BooleanOptionalAction, default=OrderingConfig.stagger,
                   help="no further cold job starts while cold readers saturate the store (source-aware)")  # fmt: skip
    h.add_argument("--queue-max-pass-over", type=int, default=OrderingConfig.max_pass_over,
                   help="times a job may be passed over (-1: no bound)")  # fmt: skip
    h.add_argument("--queue-slots", type=int, default=None, help="queued Jobs running at once at most")
    h.add_argument("--queue-gpu-resource", default=GPU)
    h.add_argument("--queue-interval", type=_seconds, default=5.0, metavar="SECONDS")
    h.add_argument("--kueue-check", action="store_true",
                   help="serve Kueue AdmissionChecks: Workloads with quota start in the --queue-* order")  # fmt: skip
    h.add_argument("--kueue-controller-name", default=CONTROLLER_NAME,
                   help="the AdmissionChecks' spec.controllerName (default %(default)s)")  # fmt: skip
    h.add_argument("--warm-ahead", type=int, default=0, help="datasets warmed at once for the next cold job (0: off)")
    h.add_argument("--warm-ttl", type=int, default=WarmConfig.ttl, metavar="SECONDS",
                   help="a finished warm-up is kept this long; its dataset is not warmed again meanwhile")  # fmt: skip
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
        sched_cfg = scheduling_config(args, worker)
        if args.local and sched_cfg.enabled:
            raise ControlError("the webhook, --node-labels and --queue need Kubernetes, not --local")
    except ControlError as exc:
        print(f"fluidfs-controller: {exc}", file=sys.stderr)
        return 2
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
    scheduling = None
    if sched_cfg.enabled:
        with_timeout = getattr(api, "with_timeout", None)
        lookup_api = with_timeout(LOOKUP_TIMEOUT) if callable(with_timeout) else None
        scheduling = Scheduling(api, sched_cfg, identity=args.identity, lookup_api=lookup_api)
        try:
            scheduling.start()
        except (OSError, ValueError) as exc:  # unreadable certificate, port in use
            scheduling.close()
            print(f"fluidfs-controller: webhook: {exc}", file=sys.stderr)
            return 1
    controller = Controller(api, cfg, scheduling=scheduling)
    log.info("fluidfs-controller %s: reconciling Datasets of %s", args.identity, args.namespace or "every namespace")
    try:
        controller.run(stop, elector)
    finally:
        controller.close()
        if scheduling is not None:
            scheduling.close()
        close = getattr(api, "close", None)
        if callable(close):
            close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
