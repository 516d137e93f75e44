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
    """``ready`` answers Probe (never waiting behind a mount): a plugin that mounts is ready
    once /dev/fuse and the fluidfs CLI are usable, a forwarding node plugin while the mount
    supervisor answers its own Probe, a controller-only plugin always."""

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
