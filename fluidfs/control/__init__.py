"""fluidfs's control plane: the Dataset custom resource, fluidfs-controller and its autoscaler.

The controller is its own process (``fluidfs-controller``), made of plain functions —
``resource`` (a Dataset resource parsed), ``signals`` (metrics text → samples), ``autoscaler``
(samples → decisions), ``objects`` and ``reconcile`` (Dataset → desired Kubernetes objects,
status) — driven by ``controller`` through one adapter (``adapter.KubeApi``) with two
backends: ``kube`` (the Kubernetes API) and ``local`` (workers as local processes).

It imports only ``fluidfs.spec``, ``fluidfs.util.sizes``, ``fluidfs.errors`` (and
prometheus_client): never the FUSE data path, the daemon or the cache.
"""
