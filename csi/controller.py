"""CSI Controller service: dynamic provisioning of Dataset volumes (nothing is created remotely).

A "volume" is a view of an existing dataset, so CreateVolume only validates the parameters,
derives a deterministic volume id (``fluidfs-<dataset digest>-<name digest>``) and returns the
parameters as ``volume_context``; DeleteVolume forgets it.  The name -> (volume id, parameters,
capacity, node) map is kept in the state file: a repeated CreateVolume gets the same volume back,
and one whose parameters differ, whose capacity range excludes the volume's capacity or whose
topology requirement excludes its node is answered ALREADY_EXISTS, as the spec requires.  The
node's policy (``csi/policy.py``, the same flags as the node's) is checked here too, so a PVC
asking for what the nodes refuse fails at provisioning, with the same message.

Caveats: ``capacity_bytes`` echoes the requested size (a dataset has no capacity of its own).
With ``pinToNode: "true"`` the volume is tied to the CO's preferred (else first requisite)
topology segment, i.e. the node that will hold its cache; by default it is usable everywhere.
"""

from __future__ import annotations

import logging
import threading

import grpc

from . import TOPOLOGY_KEY
from ._gen import csi_pb2 as pb
from ._gen import csi_pb2_grpc as pb_grpc
from .policy import Policy
from .state import State, StateStore
from .volumes import (
    RequestError,
    capability_error,
    digest,
    has_dataset,
    identity_context,
    invalid,
    parse_context,
    volume_id_for,
)

log = logging.getLogger(__name__)
RPC = pb.ControllerServiceCapability.RPC


class ControllerServicer(pb_grpc.ControllerServicer):
    def __init__(self, store: StateStore, state: State, lock: threading.RLock, policy: Policy | None = None) -> None:
        self.store = store
        self.state = state
        self.lock = lock
        self.policy = policy if policy is not None else Policy()

    def _fail(self, context: grpc.ServicerContext, e: RequestError) -> None:
        context.abort(e.code, e.message)

    def ControllerGetCapabilities(
        self, request: pb.ControllerGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> pb.ControllerGetCapabilitiesResponse:
        return pb.ControllerGetCapabilitiesResponse(
            capabilities=[pb.ControllerServiceCapability(rpc=RPC(type=RPC.CREATE_DELETE_VOLUME))]
        )

    def CreateVolume(self, request: pb.CreateVolumeRequest, context: grpc.ServicerContext) -> pb.CreateVolumeResponse:
        try:
            return self._create(request)
        except RequestError as e:
            self._fail(context, e)
            raise  # unreachable: abort raises

    def _create(self, request: pb.CreateVolumeRequest) -> pb.CreateVolumeResponse:
        if not request.name:
            raise invalid("name is required")
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is required")
        for cap in request.volume_capabilities:
            err = capability_error(cap)
            if err:
                raise invalid(err)
        if request.HasField("volume_content_source"):
            raise invalid("volume_content_source is not supported: volumes are views of datasets")
        cr = request.capacity_range
        if cr.required_bytes < 0 or cr.limit_bytes < 0:
            raise RequestError(grpc.StatusCode.OUT_OF_RANGE, "capacity_range must not be negative")
        if cr.limit_bytes and cr.required_bytes > cr.limit_bytes:
            raise RequestError(grpc.StatusCode.OUT_OF_RANGE, "required_bytes exceeds limit_bytes")
        params = identity_context(request.parameters)
        if not has_dataset(params):
            raise invalid("parameters must name a dataset: set 'url' or 'dataset'")
        req = parse_context(params)
        self.policy.check_sources(req)
        vid = volume_id_for(request.name, req)
        pdigest = digest(params)
        capacity = cr.required_bytes or cr.limit_bytes
        node = _pinned_node(request.accessibility_requirements) if req.pin_to_node else ""
        with self.lock:
            known = self.state.controller.get(request.name)
            if known is not None:
                _check_compatible(request, known, pdigest)
                capacity = int(known.get("capacity") or capacity)
                node = known.get("node", node) if req.pin_to_node else ""
            else:
                self.state.controller[request.name] = {
                    "volume_id": vid,
                    "digest": pdigest,
                    "capacity": str(capacity),
                    "node": node,
                }
                self.store.save(self.state)
                log.info("created volume %s (name %s)", vid, request.name)
        volume = pb.Volume(volume_id=vid, capacity_bytes=capacity, volume_context=params)
        if node:
            volume.accessible_topology.append(pb.Topology(segments={TOPOLOGY_KEY: node}))
        return pb.CreateVolumeResponse(volume=volume)

    def DeleteVolume(self, request: pb.DeleteVolumeRequest, context: grpc.ServicerContext) -> pb.DeleteVolumeResponse:
        if not request.volume_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is required")
        with self.lock:
            names = [n for n, v in self.state.controller.items() if v.get("volume_id") == request.volume_id]
            for n in names:
                del self.state.controller[n]
            if names:
                self.store.save(self.state)
                log.info("deleted volume %s", request.volume_id)
        return pb.DeleteVolumeResponse()

    def ValidateVolumeCapabilities(
        self, request: pb.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> pb.ValidateVolumeCapabilitiesResponse:
        if not request.volume_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is required")
        if not request.volume_capabilities:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_capabilities is required")
        with self.lock:
            known = any(v.get("volume_id") == request.volume_id for v in self.state.controller.values())
        ctx = identity_context(request.volume_context)
        if not known and not has_dataset(ctx):
            context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} does not exist")
        if has_dataset(ctx):
            try:
                self.policy.check_sources(parse_context(ctx))
            except RequestError as e:
                return pb.ValidateVolumeCapabilitiesResponse(message=e.message)
        for cap in request.volume_capabilities:
            err = capability_error(cap)
            if err:
                return pb.ValidateVolumeCapabilitiesResponse(message=err)
        return pb.ValidateVolumeCapabilitiesResponse(
            confirmed=pb.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=request.volume_context,
                volume_capabilities=request.volume_capabilities,
                parameters=request.parameters,
            )
        )


def _pinned_node(ar: pb.TopologyRequirement) -> str:
    """The node a ``pinToNode`` volume is tied to: the CO's first preferred, else first requisite."""
    for topo in list(ar.preferred) + list(ar.requisite):
        if TOPOLOGY_KEY in topo.segments:
            return str(topo.segments[TOPOLOGY_KEY])
    return ""


def _check_compatible(request: pb.CreateVolumeRequest, known: dict[str, str], pdigest: str) -> None:
    """ALREADY_EXISTS when the volume created under this name does not satisfy ``request``."""
    name = request.name
    if known.get("digest") != pdigest:
        raise RequestError(grpc.StatusCode.ALREADY_EXISTS, f"volume {name!r} already exists with different parameters")
    cr = request.capacity_range
    if known.get("capacity"):
        capacity = int(known["capacity"])
        if capacity < cr.required_bytes or (cr.limit_bytes and capacity > cr.limit_bytes):
            raise RequestError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"volume {name!r} already exists with capacity {capacity} bytes, outside the requested range"
                f" (required {cr.required_bytes}, limit {cr.limit_bytes or 'none'})",
            )
    node = known.get("node", "")
    requisite = [t.segments.get(TOPOLOGY_KEY) for t in request.accessibility_requirements.requisite]
    if node and requisite and node not in requisite:
        raise RequestError(
            grpc.StatusCode.ALREADY_EXISTS,
            f"volume {name!r} already exists on node {node}, which the requested topology does not include",
        )
