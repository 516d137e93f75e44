"""Cache-aware scheduling: where each dataset's cache is, pod placement next to it, and a job queue.

Every module here is plain logic over JSON-shaped Kubernetes objects (``dict``s as the API
returns them, camelCase keys) and small frozen dataclasses; nothing here talks to an API server.
The controller's Kubernetes adapter does the reads and writes; ``tools/sim`` drives the same
functions in a simulated cluster.

- ``locations``  the cache location model: dataset keys, ``cache.fluidfs.io/<key>`` node labels
                 (bounded), which nodes hold how many bytes of which dataset, label clean-up
- ``resolve``    which datasets a pod (or a Job's pod template) reads: inline CSI volumes, PVCs
                 (PVC → PV → volumeAttributes, or StorageClass parameters), generic ephemeral
                 volumes; the ``VolumeLookups`` Protocol the adapter implements
- ``placement``  the node affinity a pod should get (preferred, weighted by cached bytes, or
                 required on request), merged into the pod as a JSONPatch without overriding the
                 user's affinity; kube-scheduler's NodeAffinity score of a node (for the simulator)
- ``ordering``   which suspended Jobs to admit next: FIFO or SJF, cache-aware within a look-ahead
                 window, with a bound on how often a job is passed over; GPU or slot capacity
- ``queue``      the Job queue over ``batch/v1`` Jobs: reads Jobs, Nodes and Pods, returns the
                 admissions (unsuspend patches), pass-over annotations and warm-up intents
- ``webhook``    the mutating admission webhook: AdmissionReview v1 handler and its TLS server
"""
