"""Dataset identity: the digest, and the 20-hex *dataset key*, of a dataset as Kubernetes volumes name it.

A volume of the CSI driver names its dataset with volume attributes (StorageClass
``parameters``, a PV's or an inline volume's ``volumeAttributes``): either ``url`` plus source
options (``endpoint``, ``region``, ``options.<name>``), or ``dataset``, a whole Dataset document
in YAML.  The *dataset digest* is the SHA-256 of that description with everything that is not
the data left out -- credentials, cache settings (the document's ``spec.cache``, the
``cacheSize``-like attributes), ``subPath``, ``name``, ``pinToNode`` -- so every volume of the
same data has the same digest.  Its first :data:`KEY_LENGTH` hex digits are the *dataset key*:

- the CSI plugin's volume ids (``fluidfs-<key>-...``) and its shared mounts are built from it;
- the node labels ``cache.fluidfs.io/<key>`` that say where a dataset's cache is, and the
  admission webhook that reads them, name datasets by it.

This module is the one definition both use (``csi.volumes`` and ``fluidfs.control.sched``).

Caveats: the digest is of the *description*, not of the data: two documents describing the same
objects differently (another mount name, another option spelling) have different keys.  A
document is digested as parsed YAML (key order and formatting do not count; a YAML value JSON
cannot represent, such as a bare date, makes :func:`dataset_key` answer None).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

#: hex digits of the dataset key (80 bits: collisions need ~10^12 datasets)
KEY_LENGTH = 20
#: volume attributes that are source options of a ``url`` dataset (any ``options.<name>`` too)
SOURCE_KEYS = frozenset({"endpoint", "region"})
OPTION_PREFIX = "options."


def digest(obj: Any) -> str:
    """Stable SHA-256 hex digest of a JSON-able object (sorted keys, compact, UTF-8)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def url_digest(url: str, options: Mapping[str, str] | None = None) -> str:
    """Digest of a ``url`` dataset with its source options (names without ``options.``)."""
    return digest({"url": url.strip(), "options": dict(options or {})})


def document_digest(document: Mapping[str, Any]) -> str:
    """Digest of a Dataset document (as parsed from YAML); its ``spec.cache`` does not count."""
    doc = dict(document)
    spec = dict(doc.get("spec") or {})
    spec.pop("cache", None)
    doc["spec"] = spec
    return digest({"dataset": doc})


def key_of(full_digest: str) -> str:
    """The dataset key of a digest."""
    return full_digest[:KEY_LENGTH]


def source_options(attributes: Mapping[str, str]) -> dict[str, str]:
    """The source options named by volume attributes: ``endpoint``, ``region``, ``options.<name>``."""
    out: dict[str, str] = {}
    for k, v in attributes.items():
        if k in SOURCE_KEYS:
            out[k] = str(v)
        elif k.startswith(OPTION_PREFIX) and len(k) > len(OPTION_PREFIX):
            out[k[len(OPTION_PREFIX) :]] = str(v)
    return out


def dataset_key(attributes: Mapping[str, Any]) -> str | None:
    """Key of the dataset named by volume attributes / StorageClass parameters, or None when they
    name no dataset or cannot be read (the CSI plugin refuses such a volume)."""
    attrs = {str(k): str(v) for k, v in attributes.items() if "/" not in str(k)}
    url = attrs.get("url", "").strip()
    text = attrs.get("dataset", "")
    if bool(url) == bool(text):
        return None
    if not text:
        return key_of(url_digest(url, source_options(attrs)))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict) or doc.get("kind") != "Dataset":
        return None
    try:
        return key_of(document_digest(doc))
    except (TypeError, ValueError):  # a YAML value JSON cannot represent (a bare date, ...)
        return None


def is_key(text: str) -> bool:
    """Whether ``text`` has the form of a dataset key."""
    return len(text) == KEY_LENGTH and all(c in "0123456789abcdef" for c in text)
