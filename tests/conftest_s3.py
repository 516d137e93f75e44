"""Helpers for tests that talk to an embedded S3 server (no fixtures here; see fixtures_s3.py)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping


def put_objects(client: Any, bucket: str, objects: Mapping[str, bytes], workers: int = 16) -> None:
    """Upload ``{key: body}`` in parallel (the boto3 client is thread-safe)."""

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(put, objects.items()))


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
