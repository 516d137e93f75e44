"""Pure CSI request logic: volume ids, dataset keys, capability/context validation, Dataset docs.

Nothing here touches the kernel or the network, so all of it is unit-tested directly.

Volume context (= StorageClass ``parameters`` or a PV's / inline volume's ``volumeAttributes``):

- the dataset, either ``url`` (``s3://bucket/prefix``, ``http(s)://...``, ``file:///abs``) plus
  source options (``endpoint``, ``region`` or any ``options.<key>``), or ``dataset`` (a whole
  Dataset YAML document);
- settings: every row of the settings table with a CSI attribute (``cacheSize``, ``memorySize``,
  ``blockSize``, ``eviction``, ``metadataTTL``, ``uid``, ``gid``, ``fileMode``, ``dirMode``; the
  list is in docs/configuration.md), checked by the row and passed to ``fluidfs mount`` as its flag;
- ``subPath`` (publish a subdirectory of the dataset), ``name`` (dataset name), and
  ``pinToNode`` ("true": CreateVolume ties the volume to the node the CO prefers).

Keys containing ``/`` (``csi.storage.k8s.io/...`` added by Kubernetes) are ignored; any other
unknown key is an INVALID_ARGUMENT so typos are not silently dropped.

Caveats: two volumes with the same dataset but different cache keys share one mount; the cache
settings of the first stage win until that mount is released.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import yaml

from fluidfs.config import SETTINGS, Setting
from fluidfs.spec import identity

from . import EPHEMERAL_KEY
from ._gen import csi_pb2 as pb

Mode = pb.VolumeCapability.AccessMode.Mode
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})
# Kubernetes asks for a writer mode for CSI ephemeral inline volumes (ReadWriteOnce); they are
# still published read-only.
EPHEMERAL_MODES = READ_ONLY_MODES | {
    Mode.SINGLE_NODE_WRITER,
    Mode.SINGLE_NODE_SINGLE_WRITER,
    Mode.SINGLE_NODE_MULTI_WRITER,
}

#: volume attribute -> the setting it sets (the settings table's ``csi`` column)
SETTING_ATTRIBUTES: dict[str, Setting] = {row.csi: row for row in SETTINGS if row.csi}
SOURCE_KEYS = {"endpoint", "region"}
OTHER_KEYS = {"url", "dataset", "subPath", "name", "pinToNode"}

# CSI secret key (as users tend to write it) -> Dataset credential name.
SECRET_ALIASES = {
    "accessKeyId": "accessKeyId",
    "access_key_id": "accessKeyId",
    "AWS_ACCESS_KEY_ID": "accessKeyId",
    "secretAccessKey": "secretAccessKey",
    "secret_access_key": "secretAccessKey",
    "AWS_SECRET_ACCESS_KEY": "secretAccessKey",
    "sessionToken": "sessionToken",
    "session_token": "sessionToken",
    "AWS_SESSION_TOKEN": "sessionToken",
    "username": "username",
    "password": "password",
    "bearerToken": "bearerToken",
    "bearer_token": "bearerToken",
}
_NAME_RE = re.compile(r"[^a-z0-9-]+")


class RequestError(Exception):
    """A request the plugin must answer with a gRPC error ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def digest(obj: Any) -> str:
    """Stable sha256 hex digest of a JSON-able object."""
    return identity.digest(obj)


def identity_context(ctx: Mapping[str, str]) -> dict[str, str]:
    """The part of a volume context that identifies the volume (Kubernetes' own keys dropped)."""
    return {k: v for k, v in ctx.items() if "/" not in k}


def is_ephemeral(ctx: Mapping[str, str]) -> bool:
    return ctx.get(EPHEMERAL_KEY, "").lower() == "true"


@dataclass(frozen=True)
class DatasetRequest:
    """What a volume context asks for."""

    name: str
    url: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    document: Mapping[str, Any] | None = None  # a parsed Dataset YAML
    cache_args: tuple[str, ...] = ()
    sub_path: str = ""
    pin_to_node: bool = False

    def dataset_digest(self) -> str:
        """Identifies the data (not cache settings, not subPath): equal digests share a mount.
        Its first 20 hex digits are the dataset key (``fluidfs.spec.identity``)."""
        if self.document is not None:
            return identity.document_digest(self.document)
        return identity.url_digest(self.url, self.options)


def has_dataset(ctx: Mapping[str, str]) -> bool:
    return bool(ctx.get("url") or ctx.get("dataset"))


def parse_context(ctx: Mapping[str, str]) -> DatasetRequest:
    """Validate a volume context; raises RequestError(INVALID_ARGUMENT) on any mistake."""
    ctx = identity_context(ctx)
    unknown = sorted(
        k
        for k in ctx
        if k not in OTHER_KEYS and k not in SETTING_ATTRIBUTES and k not in SOURCE_KEYS and not k.startswith("options.")
    )
    if unknown:
        raise invalid(f"unknown volume attribute(s): {', '.join(unknown)}")
    url = ctx.get("url", "").strip()
    doc_text = ctx.get("dataset", "")
    if bool(url) == bool(doc_text):
        raise invalid("exactly one of the volume attributes 'url' and 'dataset' must be set")
    options: dict[str, str] = {}
    for k, v in ctx.items():
        if k in SOURCE_KEYS:
            options[k] = v
        elif k.startswith("options."):
            if not k[len("options.") :]:
                raise invalid("empty option name in volume attribute 'options.'")
            options[k[len("options.") :]] = v
    document = None
    if doc_text:
        if options:
            raise invalid("source options go inside the 'dataset' document, not next to it")
        document = _parse_document(doc_text)
    else:
        if not re.match(r"^(s3|https?|file)://", url):
            raise invalid(f"url {url!r}: must start with s3://, http://, https:// or file://")
    cache_args = setting_args(ctx)
    name = ctx.get("name") or (document or {}).get("metadata", {}).get("name") or _name_from_url(url)
    pin = ctx.get("pinToNode", "false").lower()
    if pin not in ("true", "false"):
        raise invalid(f"pinToNode: must be 'true' or 'false', not {pin!r}")
    return DatasetRequest(
        name=_dns_name(str(name)),
        url=url,
        options=options,
        document=document,
        cache_args=tuple(cache_args),
        sub_path=normalize_sub_path(ctx.get("subPath", "")),
        pin_to_node=pin == "true",
    )


def setting_args(ctx: Mapping[str, str]) -> list[str]:
    """The ``fluidfs mount`` flags of the settings in a volume context, each value checked by its row."""
    args: list[str] = []
    for key, row in SETTING_ATTRIBUTES.items():
        if key not in ctx:
            continue
        value = ctx[key].strip()
        try:
            row.parse_arg(value)
        except ValueError as e:
            raise invalid(f"{key}: {e}") from None
        args += [str(row.cli), value]
    return args


def _parse_document(text: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise invalid(f"dataset: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "Dataset":
        raise invalid("dataset: must be a YAML document of kind: Dataset")
    mounts = (doc.get("spec") or {}).get("mounts")
    if not isinstance(mounts, list) or not mounts:
        raise invalid("dataset: spec.mounts must be a non-empty list")
    return doc


def _name_from_url(url: str) -> str:
    tail = url.split("://", 1)[-1].strip("/")
    return tail.split("/")[0] if tail else "dataset"


def _dns_name(name: str) -> str:
    cleaned = _NAME_RE.sub("-", name.lower()).strip("-")[:63].strip("-")
    return cleaned or "dataset"


def normalize_sub_path(sub: str) -> str:
    """``a/b`` -> ``a/b``; "" and "/" -> ""; absolute or ``..`` paths are rejected."""
    sub = sub.strip()
    if not sub or sub == "/":
        return ""
    if sub.startswith("/"):
        sub = sub.lstrip("/")
    norm = posixpath.normpath(sub)
    if norm == "." or norm.startswith("..") or "\0" in norm:
        raise invalid(f"subPath {sub!r}: must be a relative path inside the dataset")
    return norm


def mount_key(dataset_digest: str, secrets: Mapping[str, str]) -> str:
    """Key of the shared node-level mount: the dataset plus the credentials used to read it, so
    volumes with different credentials never share (and so never borrow) each other's access."""
    return digest({"dataset": dataset_digest, "secrets": digest(dict(secrets))})[:20]


def volume_id_for(name: str, req: DatasetRequest) -> str:
    """CreateVolume's volume id: deterministic from the dataset and the request name."""
    return f"fluidfs-{identity.key_of(req.dataset_digest())}-{digest(name)[:8]}"


# -- capabilities -------------------------------------------------------------------------------
def capability_error(cap: pb.VolumeCapability, *, ephemeral: bool = False) -> str | None:
    """Why the plugin cannot serve ``cap`` (None when it can).  Read-only filesystem only."""
    if cap.HasField("block"):
        return "block volumes are not supported: fluidfs volumes are filesystems"
    if not cap.HasField("mount"):
        return "volume capability must set access_type (mount)"
    if not cap.HasField("access_mode") or cap.access_mode.mode == Mode.UNKNOWN:
        return "volume capability must set an access mode"
    allowed = EPHEMERAL_MODES if ephemeral else READ_ONLY_MODES
    if cap.access_mode.mode not in allowed:
        return (
            f"access mode {Mode.Name(cap.access_mode.mode)} is not supported: fluidfs volumes are"
            " read-only (use ReadOnlyMany / MULTI_NODE_READER_ONLY or SINGLE_NODE_READER_ONLY)"
        )
    return None


def require_capability(cap: pb.VolumeCapability, present: bool, *, ephemeral: bool = False) -> None:
    if not present:
        raise invalid("volume_capability is required")
    err = capability_error(cap, ephemeral=ephemeral)
    if err:
        raise invalid(err)


def capability_digest(cap: pb.VolumeCapability) -> str:
    return hashlib.sha256(cap.SerializeToString(deterministic=True)).hexdigest()[:16]


# -- Dataset documents ----------------------------------------------------------------------------
def credential_names(secrets: Mapping[str, str]) -> dict[str, str]:
    """Map CSI secret keys to Dataset credential names: {credential_name: secret_key}."""
    out: dict[str, str] = {}
    for key in sorted(secrets):
        cred = SECRET_ALIASES.get(key)
        if cred and cred not in out:
            out[cred] = key
    return out


def build_document(req: DatasetRequest, secret_files: Mapping[str, str]) -> dict[str, Any]:
    """The Dataset document handed to ``fluidfs mount``.

    ``secret_files`` maps CSI secret key -> path of the 0600 file holding its value.  Credentials
    are only ever referenced as ``{file: path}``.
    """
    by_cred = {
        cred: {"file": secret_files[key]} for cred, key in credential_names({k: "" for k in secret_files}).items()
    }
    if req.document is None:
        mount: dict[str, Any] = {"mountPoint": req.url, "name": "data", "path": "/"}
        if req.options:
            mount["options"] = dict(sorted(req.options.items()))
        if by_cred:
            mount["credentials"] = by_cred
        return {
            "apiVersion": "fluidfs.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": req.name},
            "spec": {"mounts": [mount]},
        }
    doc = json.loads(json.dumps(req.document))  # deep copy
    for m in doc["spec"]["mounts"]:
        if not isinstance(m, dict):
            raise invalid("dataset: every entry of spec.mounts must be a mapping")
        creds = m.get("credentials")
        if isinstance(creds, dict):
            for cname, ref in list(creds.items()):
                key = _secret_ref_key(ref)
                if key is None:
                    continue
                if key not in secret_files:
                    raise invalid(
                        f"dataset: credentials.{cname} refers to secret key {key!r}, which the"
                        " node-stage secret does not contain"
                    )
                creds[cname] = {"file": secret_files[key]}
        elif creds is None and by_cred and str(m.get("mountPoint", "")).startswith("s3://"):
            m["credentials"] = by_cred
    return dict(doc)


def _secret_ref_key(ref: Any) -> str | None:
    """The secret key a credential reference names (``{secretKeyRef: {key}}`` or
    ``{secretName, secretKey}``), or None for env/file references."""
    if not isinstance(ref, dict):
        return None
    if isinstance(ref.get("secretKeyRef"), dict):
        return str(ref["secretKeyRef"].get("key", ""))
    if "secretKey" in ref:
        return str(ref["secretKey"])
    return None
