"""Prometheus plumbing shared by the mount daemon, the CSI plugin, the CLI and the tools: serve a
registry over HTTP, and fetch and parse a metrics page into samples.

Caveats: serving uses prometheus-client's own small daemon thread (library-owned, it touches no
fluidfs state).
"""

from __future__ import annotations

import urllib.request
from typing import NamedTuple

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families


class Sample(NamedTuple):
    """One sample of a metrics page."""

    name: str
    labels: dict[str, str]
    value: float


def serve(addr: str, registry: CollectorRegistry = REGISTRY) -> tuple[str, int]:
    """Serve ``registry`` on ``HOST:PORT`` (port 0 = any free port, no host = loopback); return the bound address."""
    host, _, port = addr.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    bound = server.server_address
    return str(bound[0]), int(bound[1])


def parse_samples(text: str) -> list[Sample]:
    """All samples of a Prometheus text page."""
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def fetch_text(url: str, timeout: float = 5.0) -> str:
    """The metrics page at ``url`` (never through an HTTP proxy: the endpoints are local); raises OSError."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return str(resp.read().decode("utf-8", "replace"))


def fetch_samples(url: str, timeout: float = 5.0) -> list[Sample]:
    """All samples of the metrics page at ``url``; raises OSError (or ValueError for a bad page)."""
    return parse_samples(fetch_text(url, timeout))


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
