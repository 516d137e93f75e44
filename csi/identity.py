"""CSI Identity service: plugin name/version, plugin capabilities, readiness probe."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import wrappers_pb2

import fluidfs

from . import DRIVER_NAME
from ._gen import csi_pb2 as pb
from ._gen import csi_pb2_grpc as pb_grpc

Service = pb.PluginCapability.Service


class IdentityServicer(pb_grpc.IdentityServicer):
    """Probe never waits behind a mount.  ``missing()`` names a dependency the plugin cannot work
    without (a plugin that mounts: /dev/fuse, the fluidfs CLI): then Probe fails with
    FAILED_PRECONDITION, as the spec's table says.  Otherwise ``ready()`` is the answer: a
    forwarding node plugin is ready while the mount supervisor answers its own Probe, a
    controller-only plugin always."""

    def __init__(
        self, with_controller: bool, ready: Callable[[], bool], missing: Callable[[], str] | None = None
    ) -> None:
        self.with_controller = with_controller
        self.ready = ready
        self.missing = missing if missing is not None else (lambda: "")

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

    def Probe(self, request: pb.ProbeRequest, context: grpc.ServicerContext) -> pb.ProbeResponse:
        missing = self.missing()
        if missing:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the plugin cannot mount: {missing}")
        return pb.ProbeResponse(ready=wrappers_pb2.BoolValue(value=bool(self.ready())))
