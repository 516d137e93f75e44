"""fluidfs CSI plugin: serves Datasets to Kubernetes pods through the CSI v1 gRPC interface.

Layout:

- ``csi/server.py``     command line (``fluidfs-csi``), gRPC server on a unix socket, metrics
- ``csi/identity.py``   Identity service (plugin info, capabilities, probe)
- ``csi/controller.py`` Controller service (CreateVolume/DeleteVolume/ValidateVolumeCapabilities)
- ``csi/node.py``       Node service (stage/publish/unpublish/unstage/stats)
- ``csi/volumes.py``    pure request logic: volume ids, dataset keys, capability and context checks
- ``csi/mounts.py``     node-level mount manager: one shared fluidfs mount per dataset + bind mounts
- ``csi/recovery.py``   monitor thread: repairs dead FUSE daemons and stale bind mounts
- ``csi/state.py``      the persisted JSON state file (atomic tmp -> rename)
- ``csi/metrics.py``    the plugin's Prometheus registry
- ``csi/_gen/``        stubs generated from ``csi/proto/csi.proto`` by ``tools/gen_csi_stubs.py``
"""

from __future__ import annotations

DRIVER_NAME = "csi.fluidfs.io"
TOPOLOGY_KEY = "topology.csi.fluidfs.io/node"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
