"""What a CSI volume may make the node read: the cluster admin's policy, applied to every request.

A volume's attributes come from whoever may create a PVC, a PV or a pod with an inline volume;
the mount supervisor that serves them runs as root, sees the node's files (the kubelet directory
with every pod's Secrets and tokens, the plugin's own state directory with every tenant's staged
credentials) and may act with the node's cloud identity.  So, unless the admin says otherwise
(chart values ``security.*``, plugin flags):

- **local sources** (``file://``, ``local://``, absolute paths, in ``url`` or in a ``dataset``
  document) are refused, except at or below a host path the admin allow-lists
  (``--allow-host-path``, repeatable).  A path that is, contains or lies inside one of the
  plugin's own directories (state directory, cache root) is refused even then.  Paths are checked
  as written and after resolving symlinks.
- **the node's cloud identity**: an S3 source without credentials would sign its requests with
  the default AWS chain (environment, config files, web identity, container credentials,
  instance metadata), i.e. as the node.  Without ``--node-identity`` such a source is refused
  unless it asks for anonymous access (``options.anonymous: "true"``, public buckets), and every
  dataset daemon runs with those variables removed and instance metadata disabled.  An http(s)
  source or S3 endpoint on an instance metadata address (``169.254.0.0/16``, ``fd00:ec2::254``,
  ``metadata.google.internal``...) is refused too: reading it would hand out the node's role.
- **inline (ephemeral) volumes** are refused when the admin switched them off
  (``--disable-ephemeral``; the chart also leaves ``Ephemeral`` out of the CSIDriver).

Refusals are PERMISSION_DENIED with a message naming what was refused and which setting allows
it.  ``{file: ...}`` / ``{env: ...}`` credential references are refused for everyone, by
``csi/volumes.py``.

Caveats: host names are checked as written: a DNS name of the attacker's that resolves to a
link-local address is not caught, and the supervisor reaches whatever its network reaches;
block the metadata endpoint for pods on the network as well (IMDSv2 with a hop limit of 1, or
a NetworkPolicy; the supervisor does not use the host network unless ``node.hostNetwork``).
Symlinks are resolved when the request arrives; below the root, the local source itself
refuses symlinks that lead outside it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from .mountops import real_path
from .volumes import DOCUMENT, DatasetRequest, RequestError, credential_names, denied

RESOLVE_TIMEOUT = 5.0  # resolving the symlinks of a local source path
#: the environment of the AWS default credential chain: removed from a daemon's environment
#: unless the node's identity may be used
AMBIENT_AWS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")})
_S3_KEYS = ("access_key_id", "secret_access_key")


def overlaps(a: str, b: str) -> bool:
    """``a`` and ``b`` (normalised absolute paths) are the same, or one lies inside the other."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (normalised absolute paths)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def metadata_host(host: str) -> bool:
    """``host`` names an instance metadata endpoint (as written: names are not resolved)."""
    h = host.strip("[]").rstrip(".").lower()
    if h in METADATA_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        try:  # the forms inet_aton accepts too: 2852039166, 0xa9.0xfe.0xa9.0xfe, 169.254.43518
            ip = ipaddress.ip_address(socket.inet_aton(h))
        except (OSError, ValueError):
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip in METADATA_ADDRESSES


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


@dataclass(frozen=True)
class Policy:
    """The admin's answers; the defaults refuse everything that reaches the node itself."""

    host_paths: tuple[str, ...] = ()  # allowed local source roots (normalised, absolute)
    node_identity: bool = False  # S3 without credentials may use the node's own identity
    ephemeral: bool = True  # inline volumes are served
    protected: tuple[str, ...] = ()  # the plugin's own directories: never a source

    @classmethod
    def build(
        cls, host_paths: Iterable[str], *, node_identity: bool, ephemeral: bool, protected: Iterable[str]
    ) -> Policy:
        """Check the admin's flags; ValueError (a usage error) for a path that is not absolute or
        that overlaps one of the plugin's own directories."""
        own = tuple(sorted({os.path.realpath(p) for p in protected if p}))
        allowed = []
        for raw in host_paths:
            if not raw.startswith("/"):
                raise ValueError(f"--allow-host-path {raw!r}: must be an absolute path")
            path = os.path.normpath(raw)
            for p in (path, os.path.realpath(path)):
                clash = next((o for o in own if overlaps(p, o)), None)
                if clash is not None:
                    raise ValueError(f"--allow-host-path {raw}: overlaps the plugin's own directory {clash}")
            allowed.append(path)
        return cls(tuple(allowed), node_identity, ephemeral, own)

    # -- requests ---------------------------------------------------------------------------------
    def check_ephemeral(self) -> None:
        if not self.ephemeral:
            raise denied(
                "inline (ephemeral) volumes are switched off on this cluster (chart value"
                " security.ephemeralVolumes); use a PersistentVolumeClaim"
            )

    def check_sources(self, req: DatasetRequest) -> None:
        """Local paths and metadata endpoints of every source (needs no secrets: the controller
        checks too)."""
        for i, m in enumerate(req.sources):
            where = self._where(req, i)
            if m.scheme == "file":
                self._check_local(m.url[len("file://") :], where)
            elif not self.node_identity:
                for label, url in (("url", m.url), ("endpoint", m.options.get("endpoint", ""))):
                    if url and metadata_host(_host(url)):
                        raise denied(
                            f"{where}: {label} {_host(url)!r} is an instance metadata endpoint, which serves"
                            " the node's own credentials (allowed only with security.nodeIdentity)"
                        )

    def check_credentials(self, req: DatasetRequest, secrets: Mapping[str, str]) -> None:
        """S3 sources without credentials would act as the node: refused unless anonymous or the
        node's identity is allowed."""
        if self.node_identity:
            return
        from_secret = {_snake(c) for c in credential_names(secrets)}
        for i, m in enumerate(req.sources):
            if m.scheme != "s3" or m.options.get("anonymous") == "true":
                continue
            creds = set(m.credentials) or from_secret
            if not all(k in creds for k in _S3_KEYS):
                raise denied(
                    f"{self._where(req, i)}: s3 source without credentials would read with the node's own"
                    " identity: give accessKeyId and secretAccessKey in the volume's CSI secret, or set"
                    ' options.anonymous: "true" for a public bucket (the node\'s identity is allowed only'
                    " with security.nodeIdentity)"
                )

    def check(self, req: DatasetRequest, secrets: Mapping[str, str]) -> None:
        self.check_sources(req)
        self.check_credentials(req, secrets)

    def daemon_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment of a dataset daemon: without the AWS default chain's sources unless the
        node's identity is allowed."""
        env = dict(environ)
        if self.node_identity:
            return env
        for k in AMBIENT_AWS:
            env.pop(k, None)
        env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
        return env

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _where(req: DatasetRequest, i: int) -> str:
        return f"{DOCUMENT}: spec.mounts[{i}]" if req.document is not None else f"url {req.url!r}"

    def _check_local(self, path: str, where: str) -> None:
        norm = os.path.normpath(path)
        hint = "local sources are allowed only below the host paths listed in security.allowedHostPaths"
        if not any(inside(norm, a) for a in self.host_paths):
            raise denied(f"{where}: local source {norm} is not an allowed host path ({hint})")
        real = real_path(norm, RESOLVE_TIMEOUT)
        if real is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"{where}: local source {norm} does not answer; retry")
        if not any(inside(real, os.path.realpath(a)) for a in self.host_paths):
            raise denied(f"{where}: local source {norm} leads to {real}, which is not an allowed host path ({hint})")
        for p in (norm, real):
            clash = next((o for o in self.protected if overlaps(p, o)), None)
            if clash is not None:
                raise denied(f"{where}: local source {norm} overlaps the plugin's own directory {clash}")


def _snake(credential: str) -> str:
    """Dataset credential name (``accessKeyId``) -> MountSpec credential key (``access_key_id``)."""
    return "".join("_" + c.lower() if c.isupper() else c for c in credential)
