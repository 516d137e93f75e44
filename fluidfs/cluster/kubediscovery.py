"""Kubernetes discovery: cluster members from the EndpointSlices of a headless Service.

The Kubernetes API is reached only through :class:`EndpointSliceAPI`, a small blocking adapter
(list + watch of one Service's EndpointSlices, as plain dataclasses).  The real adapter,
:class:`KubeEndpointSliceAPI`, uses the official ``kubernetes`` client; tests drive
:class:`KubernetesDiscovery` with a fake.  The adapter runs in one worker thread (through a
named ``trio.CapacityLimiter``), never on the trio thread: it lists, then watches from the
list's ``resourceVersion``, relists when the watch expires (HTTP 410) and backs off on errors.
Each change of the merged endpoint set is sent as a complete member list over a bounded trio
memory channel; the trio side applies it to the :class:`~fluidfs.cluster.membership.MembershipView`.

Members are the *ready* endpoints (a terminating pod leaves the current set at once, so its
blocks get new owners, and stays in the view's history, so those owners can still fetch from it
while it hands off).  Member id: the endpoint's ``targetRef`` name (the pod name, stable in a
StatefulSet), else its hostname, else ``ip-<address>``; address: the endpoint's first address and
the Service port named ``port_name``.

Caveats: EndpointSlices carry no capacity: a member weighs what it announces itself (its
``/v1/info``, learned by ``weights.py``) unless a ``weight_of`` function is given.  Needs RBAC ``list`` and ``watch`` on
``endpointslices.discovery.k8s.io`` in the namespace.  A thread blocked in a watch is abandoned
on cancellation and ends at its next event or at the watch timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from fluidfs.cluster.membership import Member, MembershipView, format_address
from fluidfs.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "SliceEndpoint",
    "Slice",
    "SliceEvent",
    "WatchExpired",
    "EndpointSliceAPI",
    "KubeEndpointSliceAPI",
    "KubernetesDiscovery",
    "members_of",
]


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice."""

    address: str  # first address (IP)
    ready: bool
    name: str = ""  # targetRef name (pod), else hostname, else ""


@dataclass(frozen=True, slots=True)
class Slice:
    """The part of an EndpointSlice discovery needs."""

    name: str
    endpoints: tuple[SliceEndpoint, ...]
    port: int | None  # the Service port named ``port_name`` (None: the slice has no such port)


@dataclass(frozen=True, slots=True)
class SliceEvent:
    type: str  # ADDED | MODIFIED | DELETED
    slice: Slice
    resource_version: str = ""  # of the object in the event: where to resume watching


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class EndpointSliceAPI(Protocol):
    """Blocking access to one Service's EndpointSlices (called from a worker thread)."""

    def list(self) -> tuple[list[Slice], str]:
        """All slices of the Service and the list's resourceVersion."""
        ...

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[SliceEvent]:
        """Events after ``resource_version``; ends after ``timeout_s``; raises WatchExpired."""
        ...


def members_of(slices: dict[str, Slice], weight_of: Callable[[SliceEndpoint], float] | None = None) -> list[Member]:
    """The ready endpoints of all slices as members (deduplicated by id, then by address)."""
    out: dict[str, Member] = {}
    addrs: set[str] = set()
    for name in sorted(slices):
        s = slices[name]
        if s.port is None:
            continue
        for ep in s.endpoints:
            if not ep.ready or not ep.address:
                continue
            mid = ep.name or "ip-" + ep.address.replace(":", "-").replace(".", "-")
            try:
                addr = format_address(ep.address, s.port)
                m = Member.make(mid[:63], addr, weight_of(ep) if weight_of else 1.0, weight_given=weight_of is not None)
            except ValueError as exc:
                log.warning("EndpointSlice %s: skipping endpoint %s: %s", name, ep.address, exc)
                continue
            if m.id in out or m.address in addrs:
                continue
            out[m.id] = m
            addrs.add(m.address)
    return list(out.values())


class KubeEndpointSliceAPI:
    """The real adapter: the official ``kubernetes`` client (in-cluster config by default).

    Construction only imports the client; the configuration is loaded on first use (in the
    worker thread), so building it outside a cluster works and fails only when used.
    """

    def __init__(
        self,
        namespace: str,
        service: str,
        port_name: str = "peer",
        *,
        kubeconfig: str | None = None,
    ) -> None:
        try:
            import kubernetes  # noqa: F401
        except ImportError:
            raise ConfigError(
                "Kubernetes discovery needs the 'kubernetes' package (pip install fluidfs[kubernetes])"
            ) from None
        if not namespace or not service:
            raise ConfigError("Kubernetes discovery needs a namespace and a Service name")
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self._kubeconfig = kubeconfig
        self._api: Any = None
        self._lock = threading.Lock()

    @property
    def selector(self) -> str:
        return f"kubernetes.io/service-name={self.service}"

    def _client(self) -> Any:
        with self._lock:
            if self._api is None:
                from kubernetes import client, config

                if self._kubeconfig:
                    config.load_kube_config(config_file=self._kubeconfig)
                else:
                    config.load_incluster_config()
                self._api = client.DiscoveryV1Api()
            return self._api

    def _convert(self, obj: Any) -> Slice:
        port = None
        for p in obj.ports or ():
            if p.name == self.port_name or (not self.port_name and p.port):
                port = p.port
                break
        eps: list[SliceEndpoint] = []
        for ep in obj.endpoints or ():
            cond = ep.conditions
            ready = cond is None or cond.ready is None or bool(cond.ready)
            if cond is not None and cond.terminating:
                ready = False
            name = (ep.target_ref.name if ep.target_ref is not None else "") or ep.hostname or ""
            if ep.addresses:
                eps.append(SliceEndpoint(ep.addresses[0], ready, name))
        return Slice(obj.metadata.name, tuple(eps), port)

    def list(self) -> tuple[list[Slice], str]:
        res = self._client().list_namespaced_endpoint_slice(self.namespace, label_selector=self.selector)
        return [self._convert(o) for o in res.items or ()], str(res.metadata.resource_version or "")

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[SliceEvent]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        api = self._client()
        w = watch.Watch()
        try:
            for ev in w.stream(
                api.list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=self.selector,
                resource_version=resource_version,
                timeout_seconds=timeout_s,
            ):
                kind = ev.get("type", "")
                if kind == "ERROR":
                    raw = ev.get("raw_object") or {}
                    if raw.get("code") == 410:
                        raise WatchExpired(str(raw.get("message", "expired")))
                    raise RuntimeError(f"watch error: {raw.get('message', raw)}")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    obj = ev["object"]
                    yield SliceEvent(kind, self._convert(obj), str(obj.metadata.resource_version or ""))
        except ApiException as exc:
            if exc.status == 410:
                raise WatchExpired(str(exc.reason)) from None
            raise
        finally:
            w.stop()


class KubernetesDiscovery:
    """Feeds a MembershipView from an :class:`EndpointSliceAPI` (list + watch in a worker thread)."""

    def __init__(
        self,
        api: EndpointSliceAPI,
        view: MembershipView,
        *,
        weight_of: Callable[[SliceEndpoint], float] | None = None,
        limiter: trio.CapacityLimiter | None = None,
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (1.0, 30.0),
        channel_size: int = 4,
    ) -> None:
        self.api = api
        self.view = view
        self.weight_of = weight_of
        self.limiter = limiter or trio.CapacityLimiter(1)
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.channel_size = channel_size
        self.updates = 0

    def _feed(self, send: trio.MemorySendChannel[list[Member]], stop: threading.Event) -> None:
        """Worker thread: list, watch, relist; send every changed member set to the trio side."""
        slices: dict[str, Slice] = {}
        last: list[Member] | None = None
        delay = self.backoff[0]

        def publish() -> None:
            nonlocal last
            members = members_of(slices, self.weight_of)
            if members != last:
                last = members
                trio.from_thread.run(send.send, members)

        while not stop.is_set():
            try:
                items, rv = self.api.list()
                slices = {s.name: s for s in items}
                publish()
                delay = self.backoff[0]
                while not stop.is_set():
                    for ev in self.api.watch(rv, self.watch_timeout):
                        if stop.is_set():
                            return
                        rv = ev.resource_version or rv
                        if ev.type == "DELETED":
                            slices.pop(ev.slice.name, None)
                        else:
                            slices[ev.slice.name] = ev.slice
                        publish()
            except WatchExpired:
                log.info("dataset %s: EndpointSlice watch expired; listing again", self.view.dataset)
                continue
            except (trio.RunFinishedError, trio.Cancelled):
                return
            except Exception as exc:  # API down, RBAC, network: keep the last members, retry
                log.warning(
                    "dataset %s: Kubernetes discovery failed (%s); retrying in %.1f s",
                    self.view.dataset, exc, delay,
                )  # fmt: skip
                if stop.wait(delay):
                    return
                delay = min(self.backoff[1], delay * 2)

    async def run(self) -> None:
        """Run until cancelled: the worker thread feeds member sets, this task applies them."""
        send, receive = trio.open_memory_channel[list[Member]](self.channel_size)
        stop = threading.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._thread, send, stop)
                async with receive:
                    async for members in receive:
                        self.updates += 1
                        self.view.update(members, "Kubernetes EndpointSlices")
        finally:
            stop.set()

    async def _thread(self, send: trio.MemorySendChannel[list[Member]], stop: threading.Event) -> None:
        async with send:
            await trio.to_thread.run_sync(self._feed, send, stop, limiter=self.limiter, abandon_on_cancel=True)
