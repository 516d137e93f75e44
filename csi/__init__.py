"""fluidfs CSI plugin: serves Datasets to Kubernetes pods through the CSI v1 gRPC interface.

Layout:

- ``csi/server.py``     command line (``fluidfs-csi``), gRPC server on a unix socket, metrics
- ``csi/identity.py``   Identity service (plugin info, capabilities, probe)
- ``csi/controller.py`` Controller service (CreateVolume/DeleteVolume/ValidateVolumeCapabilities)
- ``csi/node.py``       Node service (stage/publish/unpublish/unstage/stats)
- ``csi/forward.py``    Node service of a plugin that forwards volume calls to the mount supervisor
- ``csi/nodeinfo.py``   Node capabilities and node info, shared by the two Node services
- ``csi/rpc.py``        call budgets, admission slots, error mapping shared by the services
- ``csi/volumes.py``    pure request logic: volume ids, dataset keys, capability and context checks
- ``csi/mounts.py``     node-level mount manager: one shared fluidfs mount per dataset, its life cycle
- ``csi/binds.py``      read-only binds of a shared mount: stage/publish binds, stacked repairs
- ``csi/datasetfiles.py`` a dataset's files under the state dir: document, secret files, identity
- ``csi/mountops.py``   mount system calls: probes, read-only binds, stacked repairs, layered unmount
- ``csi/daemons.py``    start/stop a dataset daemon (``fluidfs mount``), know it by pid + start time
- ``csi/recovery.py``   one checker thread per dataset: repairs dead daemons and binds
- ``csi/reaper.py``     PID 1 of the supervisor's container: restarts it, reaps orphaned daemons
- ``csi/state.py``      the persisted JSON state file (atomic tmp -> rename)
- ``csi/metrics.py``    the plugin's Prometheus registry
- ``csi/_gen/``        stubs generated from ``csi/proto/csi.proto`` by ``tools/gen_csi_stubs.py``
"""

from __future__ import annotations

DRIVER_NAME = "csi.fluidfs.io"
TOPOLOGY_KEY = "topology.csi.fluidfs.io/node"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
