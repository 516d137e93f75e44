"""The Node service's fixed answers (capabilities, node info), the same from plugin and supervisor."""

from __future__ import annotations

from . import TOPOLOGY_KEY
from ._gen import csi_pb2 as pb

RPC = pb.NodeServiceCapability.RPC


def capabilities() -> pb.NodeGetCapabilitiesResponse:
    """Staging (one shared mount per dataset) and volume stats; nothing else."""
    return pb.NodeGetCapabilitiesResponse(
        capabilities=[
            pb.NodeServiceCapability(rpc=RPC(type=RPC.STAGE_UNSTAGE_VOLUME)),
            pb.NodeServiceCapability(rpc=RPC(type=RPC.GET_VOLUME_STATS)),
        ]
    )


def info(node_id: str) -> pb.NodeGetInfoResponse:
    """The node's id, also its topology segment (volumes are provisioned for one node)."""
    return pb.NodeGetInfoResponse(node_id=node_id, accessible_topology=pb.Topology(segments={TOPOLOGY_KEY: node_id}))
