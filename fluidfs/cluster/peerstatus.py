"""Asking a running member for its view of the cluster from outside (``fluidfs status``), and summing it up.

:func:`ask` sends an authenticated ``GET /v1/status`` to a member's peer address (a mount's or a
worker's) and returns :func:`summary` of the answer: the dataset, this member, the membership
generation, and per member its address, weight, ownership share, the asked member's breaker for
it, its health and the bytes it holds for the dataset (from each member's ``/v1/info``, which the
asked member gathers concurrently).  A member that cannot be asked gives ``{"error": ...}``
rather than an exception, so a status page still shows the rest.

Blocking (plain ``http.client`` through :class:`~fluidfs.cluster.client.PeerClient`'s
synchronous path): call it from a command, not from a trio loop.

Caveats: the caller needs the cluster secret (the same file or ``$FLUIDFS_PEER_SECRET``) — the
status request is signed like any peer request.  A wildcard listen address (``0.0.0.0:7070``) is
asked on loopback.
"""

from __future__ import annotations

from typing import Any

from fluidfs.cluster.auth import PeerAuth, load_secret
from fluidfs.cluster.client import PeerClient
from fluidfs.cluster.membership import WILDCARD_HOSTS, Member, format_address, parse_address
from fluidfs.errors import ConfigError, PeerError

__all__ = ["ask", "summary"]

#: the sender id of status requests (informational: the server logs it)
ASKER = "fluidfs-status"


def ask(address: str, secret_file: str | None, *, timeout: float = 10.0) -> dict[str, Any]:
    """The :func:`summary` of the member at ``address``, or ``{"address", "error"}`` if it cannot be asked."""
    try:
        host, port = parse_address(address, any_port=False)
    except ValueError as exc:
        raise ConfigError(f"member address: {exc}") from None
    target = format_address("127.0.0.1" if host in WILDCARD_HOSTS else host, port)
    try:
        secret = load_secret(secret_file)
    except ConfigError as exc:
        return {"address": target, "error": f"cannot ask it: {exc}"}
    client = PeerClient(PeerAuth(secret, member_id=ASKER), connect_timeout=2.0, read_timeout=timeout)
    try:
        doc = client.status_sync(Member("asked", target))
    except PeerError as exc:
        return {"address": target, "error": str(exc)}
    finally:
        client.close()
    return summary(doc, target)


def _int(v: object) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summary(doc: dict[str, Any], address: str = "") -> dict[str, Any]:
    """The ``/v1/status`` document as ``fluidfs status`` shows it (see the module docstring)."""
    view = doc.get("view") if isinstance(doc.get("view"), dict) else {}
    assert isinstance(view, dict)
    dataset = str(doc.get("dataset", ""))
    survey = {str(r.get("id")): r for r in doc.get("survey") or [] if isinstance(r, dict)}
    members: list[dict[str, Any]] = []
    for m in view.get("members") or []:
        if not isinstance(m, dict):
            continue
        row = survey.get(str(m.get("id")), {})
        info = row.get("info") if isinstance(row.get("info"), dict) else {}
        usage = ((info or {}).get("datasets") or {}).get(dataset) or {}
        members.append(
            {
                "id": m.get("id"),
                "address": m.get("address"),
                "weight": m.get("weight"),
                "share": m.get("share"),
                "breaker": m.get("breaker"),
                "self": m.get("id") == view.get("self"),
                "health": row.get("health", "unknown"),
                "error": row.get("error"),
                "ssd_used_bytes": _int(usage.get("ssd_used_bytes")),
                "ssd_quota_bytes": _int(usage.get("ssd_quota_bytes")),
                "mem_used_bytes": _int(usage.get("mem_used_bytes")),
                "mem_quota_bytes": _int(usage.get("mem_quota_bytes")),
            }
        )
    return {
        "address": view.get("address") or address,
        "dataset": dataset,
        "self": view.get("self"),
        "generation": view.get("generation"),
        "replicas": view.get("replicas"),
        "copy": view.get("copy"),
        "members": members,
    }
