"""Cluster membership of the node's dataset daemons: the flags a clustered mount gets, and the metric that publishes it.

A volume whose attributes set ``clusterService: NAMESPACE/NAME`` (the ``kube_service`` setting,
handed to ``fluidfs mount`` as ``--kube-service``) makes its dataset's daemon on this node a
member of that cluster cache: typically the headless Service ``<dataset>-cache`` that
fluidfs-controller made for a Dataset resource, whose workers are members too.  The supervisor
adds the flags only it can know:

- ``--listen 0.0.0.0:PORT``: a port of ``--peer-ports`` (default 7100-7999) derived from the
  service name, so that every node picks the same one and fluidfs-controller can publish all
  the nodes of a dataset in one EndpointSlice.  If another dataset mounted on this node holds
  that port, the next free one is taken (the controller then leaves this node out of the
  slice: it still reads through its peers, it owns nothing);
- ``--member-id``: the supervisor's pod name (``$POD_NAME``), the ``targetRef`` that the
  controller writes into the EndpointSlice, which peers take as the member's id;
- ``--peer-secret-file``: the ``peerSecret`` key of the volume's node-stage secret, which was
  written, like every secret value, to a 0600 file of the dataset.

:func:`publish` sets ``fluidfs_csi_cluster_port{service}`` (the port) while the dataset is
mounted; fluidfs-controller reads it from the supervisor's metrics endpoint.

Caveats: one mount per cluster service on a node (a second dataset key — other credentials —
for the same service is refused: it would be a second member with the same id).  The daemons
need the pod's ServiceAccount token and RBAC ``list``/``watch`` on EndpointSlices (the chart
grants both with ``cluster.enabled``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

import grpc

from . import metrics
from .state import SharedMount
from .volumes import RequestError

PEER_SECRET_KEY = "peerSecret"
DEFAULT_PORTS = (7100, 7999)


def parse_ports(text: str) -> tuple[int, int]:
    """``LO-HI`` -> (lo, hi); ValueError (one line)."""
    lo, sep, hi = text.partition("-")
    if not (sep and lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
        raise ValueError(f"--peer-ports {text!r}: expected LO-HI, two ports with LO <= HI")
    return int(lo), int(hi)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in a ``fluidfs mount`` argument list (``--flag VALUE``), or None."""
    for i, a in enumerate(args[:-1]):
        if a == flag:
            return args[i + 1]
    return None


def service_of(m: SharedMount) -> str | None:
    return flag_value(m.args, "--kube-service")


def port_of(m: SharedMount) -> int | None:
    listen = flag_value(m.args, "--listen")
    if listen is None:
        return None
    port = listen.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def preferred_port(service: str, ports: tuple[int, int]) -> int:
    """The port every node prefers for ``service`` (stable: crc32 of its name)."""
    lo, hi = ports
    return lo + zlib.crc32(service.encode()) % (hi - lo + 1)


def choose_port(service: str, used: Iterable[int], ports: tuple[int, int]) -> int:
    """The preferred port of ``service``, else the next free one in the range (wrapping)."""
    lo, hi = ports
    taken = set(used)
    first = preferred_port(service, ports)
    for i in range(hi - lo + 1):
        port = lo + (first - lo + i) % (hi - lo + 1)
        if port not in taken:
            return port
    raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"no free peer port in {lo}-{hi} on this node")


def cluster_args(
    args: Sequence[str],
    secret_files: Mapping[str, str],
    others: Iterable[SharedMount],
    *,
    ports: tuple[int, int],
    member_id: str,
    reserved: Iterable[int] = (),
) -> list[str]:
    """``args`` plus listen address, member id and secret file when they name a cluster service."""
    service = flag_value(args, "--kube-service")
    if service is None:
        return list(args)
    secret = secret_files.get(PEER_SECRET_KEY)
    if secret is None:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"clusterService {service}: the volume's node-stage secret must hold the cluster secret "
            f"under the key {PEER_SECRET_KEY}",
        )
    if not member_id:
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "clusterService: this mount supervisor has no member id (run it with --member-id or $POD_NAME)",
        )
    used = set(reserved)
    for m in others:
        if service_of(m) == service:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"clusterService {service} is already served on this node by dataset mount {m.key} (the volumes "
                "of one cluster must name the same dataset with the same credentials)",
            )
        port = port_of(m)
        if port is not None:
            used.add(port)
    port = choose_port(service, used, ports)
    return [*args, "--listen", f"0.0.0.0:{port}", "--member-id", member_id, "--peer-secret-file", secret]


def publish(m: SharedMount) -> None:
    """Export that this node's daemon of ``m`` serves its cluster service (no-op for other mounts)."""
    service, port = service_of(m), port_of(m)
    if service is not None and port is not None:
        metrics.CLUSTER_PORT.labels(service=service).set(port)


def unpublish(m: SharedMount) -> None:
    service = service_of(m)
    if service is not None:
        try:
            metrics.CLUSTER_PORT.remove(service)
        except KeyError:
            pass
