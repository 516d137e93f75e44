"""The node plugin's Node service when a mount supervisor owns the mounts: every volume call is
forwarded over the supervisor's unix socket; NodeGetInfo and NodeGetCapabilities are answered here.

The plugin (``fluidfs-csi --mode node --mounter unix:///run/fluidfs/mounter.sock``) holds no
mount, no daemon and no state: it can be restarted, upgraded or killed at any moment without a
pod noticing.  The supervisor (``--mode mounter``, ``csi/server.py``) serves the same CSI Node
calls on its own socket with the full logic of ``csi/node.py``; requests and answers (status
codes and messages included) pass through unchanged.  Each forwarded call takes an admission slot
and carries a deadline (the caller's, capped), so a supervisor that is busy or gone turns into
UNAVAILABLE / DEADLINE_EXCEEDED answers, never into a stuck plugin.

Caveats: secrets travel to the supervisor in the request, over a root-only unix socket on the
node (the same trust as kubelet -> plugin).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from . import nodeinfo
from ._gen import csi_pb2 as pb
from ._gen import csi_pb2_grpc as pb_grpc
from .rpc import OP_SLOTS, STATS_SLOTS, Admission, Budget, call
from .volumes import RequestError

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 2.0  # the plugin's Probe asks the supervisor's, at most this long


# Reconnect within a second of the supervisor coming back (gRPC's default backoff grows to 120 s,
# and calls fail at once while it waits).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def supervisor_channel(endpoint: str) -> grpc.Channel:
    return grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


class Supervisor:
    """Client side of the supervisor's socket."""

    def __init__(self, endpoint: str, call_cap: float) -> None:
        self.endpoint = endpoint
        self.call_cap = call_cap
        self.channel = supervisor_channel(endpoint)
        self.node = pb_grpc.NodeStub(self.channel)
        self.identity = pb_grpc.IdentityStub(self.channel)

    def ready(self) -> bool:
        """The supervisor answers its Probe and is ready (bounded by PROBE_TIMEOUT)."""
        try:
            return bool(self.identity.Probe(pb.ProbeRequest(), timeout=PROBE_TIMEOUT).ready.value)
        except grpc.RpcError as e:
            log.warning("mount supervisor at %s: %s", self.endpoint, e.details() or e.code().name)
            return False

    def close(self) -> None:
        self.channel.close()


class ForwardingNodeServicer(pb_grpc.NodeServicer):
    def __init__(self, node_id: str, supervisor: Supervisor) -> None:
        self.node_id = node_id
        self.sup = supervisor
        self.ops = Admission("volume", OP_SLOTS)
        self.stats = Admission("volume stats", STATS_SLOTS)

    def _forward(
        self, method: Callable[..., Any], request: Any, context: grpc.ServicerContext, slots: Admission
    ) -> Any:
        budget = Budget.of(context, self.sup.call_cap)

        def run() -> Any:
            with slots.slot():
                timeout = budget.require(0.5, "reach the mount supervisor")
                try:
                    return method(request, timeout=timeout)
                except grpc.RpcError as e:
                    code = e.code()
                    details = e.details() or code.name
                    if code == grpc.StatusCode.UNAVAILABLE and "supervisor" not in details:
                        details = f"mount supervisor at {self.sup.endpoint}: {details}"
                    raise RequestError(code, details) from None

        return call(context, run)

    def NodeGetCapabilities(
        self, request: pb.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> pb.NodeGetCapabilitiesResponse:
        return nodeinfo.capabilities()

    def NodeGetInfo(self, request: pb.NodeGetInfoRequest, context: grpc.ServicerContext) -> pb.NodeGetInfoResponse:
        return nodeinfo.info(self.node_id)

    def NodeStageVolume(
        self, request: pb.NodeStageVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodeStageVolumeResponse:
        return self._forward(self.sup.node.NodeStageVolume, request, context, self.ops)  # type: ignore[no-any-return]

    def NodeUnstageVolume(
        self, request: pb.NodeUnstageVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodeUnstageVolumeResponse:
        return self._forward(self.sup.node.NodeUnstageVolume, request, context, self.ops)  # type: ignore[no-any-return]

    def NodePublishVolume(
        self, request: pb.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodePublishVolumeResponse:
        return self._forward(self.sup.node.NodePublishVolume, request, context, self.ops)  # type: ignore[no-any-return]

    def NodeUnpublishVolume(
        self, request: pb.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> pb.NodeUnpublishVolumeResponse:
        return self._forward(self.sup.node.NodeUnpublishVolume, request, context, self.ops)  # type: ignore[no-any-return]

    def NodeGetVolumeStats(
        self, request: pb.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> pb.NodeGetVolumeStatsResponse:
        return self._forward(self.sup.node.NodeGetVolumeStats, request, context, self.stats)  # type: ignore[no-any-return]
