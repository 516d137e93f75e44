"""The cache location model: which nodes hold how many bytes of which dataset, as node labels.

A dataset is named by its *dataset key* (``fluidfs.spec.identity``, the one definition the CSI
plugin uses too): the first 20 hex digits of the digest of the ``url`` and source options, or
the ``dataset`` document without ``spec.cache``, of a StorageClass's ``parameters`` or a PV's /
inline volume's ``volumeAttributes`` (the same digits as in the plugin's volume ids
``fluidfs-<key>-...``). Credentials and cache settings are not part of it, so every volume of
the same data has the same key.

Where the cache is gets published as node labels, written by whoever measures it (the node
plugin for its own node, or the controller from the Dataset status)::

    cache.fluidfs.io/<dataset key>: "<MiB cached on this node, bucketed>"

The value is an integer (so that node affinity can compare it with ``Gt``/``Lt``) in MiB,
rounded *down* to three significant bits (1, 2, 3, ... 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40,
...): at most 25 % below the true size and about four distinct values per doubling, so a cache
that fills up changes its label a few dozen times in its life, not on every block.

Cardinality is bounded three ways: a node carries at most ``LabelPolicy.max_labels`` of these
labels (the datasets it holds most of; default 16); a dataset below ``LabelPolicy.min_bytes`` on
a node (default 64 MiB) is not labelled there; and ``label_patch`` removes the labels of datasets
that no longer exist (``live``), so the cluster-wide set of label keys is at most the number of
live datasets and each key has at most ~4 values per doubling of its size.

Caveats: labels are a lower bound (rounded down) and as fresh as their writer makes them; the
writer should rate-limit node updates (every label change is a Node update that all watchers
see). A Dataset status that reports per-node bytes is more precise and can replace the
label-derived entry (``CacheLocations.with_dataset``). Two different documents describing the
same objects have different keys (the key is a digest of the description, not of the data).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fluidfs.spec import identity

log = logging.getLogger(__name__)

LABEL_PREFIX = "cache.fluidfs.io/"
MIB = 1024 * 1024
#: significant bits kept in a label value (3: at most 25 % below the true value)
VALUE_BITS = 3


# ---------------------------------------------------------------------------- dataset keys


def dataset_key_for_url(url: str, options: Mapping[str, str] | None = None) -> str:
    """Key of a ``url`` dataset with its source options (``endpoint``, ``region``, ``options.*``
    without the ``options.`` prefix)."""
    return identity.key_of(identity.url_digest(url, options))


def dataset_key_for_document(document: Mapping[str, Any]) -> str:
    """Key of a Dataset document (as parsed from YAML); its ``spec.cache`` does not count."""
    return identity.key_of(identity.document_digest(document))


def label_name(key: str) -> str:
    """The node label that says how much of dataset ``key`` a node holds."""
    return LABEL_PREFIX + key


def key_of_label(name: str) -> str | None:
    """The dataset key of a ``cache.fluidfs.io/<key>`` label name, None for any other label."""
    if not name.startswith(LABEL_PREFIX):
        return None
    key = name[len(LABEL_PREFIX) :]
    return key if identity.is_key(key) else None


# ---------------------------------------------------------------------------- label values


def bucket_mib(nbytes: int) -> int:
    """``nbytes`` in whole MiB, rounded down to ``VALUE_BITS`` significant bits (0 below 1 MiB)."""
    mib = max(0, int(nbytes)) // MIB
    shift = max(0, mib.bit_length() - VALUE_BITS)
    return (mib >> shift) << shift


def label_value(nbytes: int) -> str:
    return str(bucket_mib(nbytes))


def parse_label_value(value: str) -> int | None:
    """Bytes a label value stands for (its lower bound), None if it is not one of ours."""
    if not value.isdigit() or len(value) > 12:
        return None
    return int(value) * MIB


@dataclass(frozen=True)
class LabelPolicy:
    """Bounds on the labels one node carries."""

    max_labels: int = 16
    min_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        if self.max_labels < 0:
            raise ValueError(f"max_labels must be >= 0, not {self.max_labels}")
        if self.min_bytes < MIB:
            raise ValueError(f"min_bytes must be at least 1 MiB, not {self.min_bytes}")


def desired_labels(cached: Mapping[str, int], policy: LabelPolicy | None = None) -> dict[str, str]:
    """The cache labels a node holding ``cached`` (dataset key -> bytes) should carry: the
    ``max_labels`` datasets it holds most of, each at least ``min_bytes``."""
    policy = policy or LabelPolicy()
    eligible = [(n, k) for k, n in cached.items() if n >= policy.min_bytes and bucket_mib(n) > 0]
    eligible.sort(key=lambda nk: (-nk[0], nk[1]))
    return {label_name(k): label_value(n) for n, k in eligible[: policy.max_labels]}


def label_patch(
    current: Mapping[str, str],
    cached: Mapping[str, int] | None,
    policy: LabelPolicy | None = None,
    live: Collection[str] | None = None,
) -> dict[str, Any] | None:
    """A JSON merge patch of a Node's ``metadata.labels`` (``None`` deletes a label), or None
    when nothing changes.

    ``current`` is the node's labels now; ``cached`` what the node holds (dataset key -> bytes),
    or None to only clean up (the caller does not measure this node); ``live`` the keys of the
    datasets that still exist (None: do not judge). Labels that are not ours are never touched.
    """
    ours = {name: value for name, value in current.items() if key_of_label(name) is not None}
    if cached is None:
        want = dict(ours)
    else:
        keep = {k: n for k, n in cached.items() if live is None or k in live}
        want = desired_labels(keep, policy)
    if live is not None:
        want = {name: v for name, v in want.items() if key_of_label(name) in live}
    changes: dict[str, str | None] = {}
    for name in ours:
        if name not in want:
            changes[name] = None
    for name, value in want.items():
        if ours.get(name) != value:
            changes[name] = value
    if not changes:
        return None
    return {"metadata": {"labels": dict(sorted(changes.items()))}}


# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class CacheLocations:
    """Per dataset key, the bytes each node holds (only nodes holding something are listed)."""

    by_dataset: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @classmethod
    def from_node_labels(cls, labels_by_node: Mapping[str, Mapping[str, str]]) -> CacheLocations:
        """Build the model from each node's labels (node name -> labels)."""
        out: dict[str, dict[str, int]] = {}
        for node, labels in labels_by_node.items():
            for name, value in labels.items():
                key = key_of_label(name)
                if key is None:
                    continue
                nbytes = parse_label_value(str(value))
                if nbytes is None:
                    log.debug("node %s: label %s=%r is not a byte count; ignored", node, name, value)
                    continue
                if nbytes > 0:
                    out.setdefault(key, {})[node] = nbytes
        return cls(out)

    @classmethod
    def from_nodes(cls, nodes: Iterable[Mapping[str, Any]]) -> CacheLocations:
        """Build the model from Node objects (JSON as the API returns them)."""
        labels: dict[str, Mapping[str, str]] = {}
        for node in nodes:
            meta = node.get("metadata") or {}
            name = meta.get("name")
            if isinstance(name, str):
                labels[name] = meta.get("labels") or {}
        return cls.from_node_labels(labels)

    def with_dataset(self, key: str, per_node: Mapping[str, int]) -> CacheLocations:
        """A copy where dataset ``key`` is described by ``per_node`` (e.g. from a Dataset status,
        which is more precise than labels)."""
        out = {k: v for k, v in self.by_dataset.items() if k != key}
        nodes = {n: int(b) for n, b in per_node.items() if int(b) > 0}
        if nodes:
            out[key] = nodes
        return CacheLocations(out)

    def nodes(self, key: str) -> Mapping[str, int]:
        return self.by_dataset.get(key, {})

    def bytes_on(self, key: str, node: str) -> int:
        return self.by_dataset.get(key, {}).get(node, 0)

    def total(self, key: str) -> int:
        return sum(self.by_dataset.get(key, {}).values())

    def keys(self) -> Iterator[str]:
        return iter(self.by_dataset)

    def node_labels(self, node: str, policy: LabelPolicy | None = None) -> dict[str, str]:
        """The cache labels ``node`` should carry according to this model."""
        held = {k: nodes[node] for k, nodes in self.by_dataset.items() if node in nodes}
        return desired_labels(held, policy)
