"""CSI Identity service: plugin name/version, plugin capabilities, readiness probe."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import wrappers_pb2

import fluidfs

from . import DRIVER_NAME
from ._gen import csi_pb2 as pb
from ._gen import csi_pb2_grpc as pb_grpc

Service = pb.PluginCapability.Service


class IdentityServicer(pb_grpc.IdentityServicer):
    """``ready`` answers Probe: the node plugin is ready once /dev/fuse and the fluidfs CLI are
    usable and the state was recovered; a controller-only plugin is always ready."""

    def __init__(self, with_controller: bool, ready: Callable[[], bool]) -> None:
        self.with_controller = with_controller
        self.ready = ready

    def GetPluginInfo(self, request: pb.GetPluginInfoRequest, context: object) -> pb.GetPluginInfoResponse:
        return pb.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=fluidfs.__version__)

    def GetPluginCapabilities(
        self, request: pb.GetPluginCapabilitiesRequest, context: object
    ) -> pb.GetPluginCapabilitiesResponse:
        types = [Service.VOLUME_ACCESSIBILITY_CONSTRAINTS]
        if self.with_controller:
            types.insert(0, Service.CONTROLLER_SERVICE)
        return pb.GetPluginCapabilitiesResponse(
            capabilities=[pb.PluginCapability(service=Service(type=t)) for t in types]
        )

    def Probe(self, request: pb.ProbeRequest, context: object) -> pb.ProbeResponse:
        return pb.ProbeResponse(ready=wrappers_pb2.BoolValue(value=bool(self.ready())))
