"""Helpers for tests that talk to an embedded S3 server (no fixtures here; see fixtures_s3.py)."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def put_objects(client: Any, bucket: str, objects: Mapping[str, bytes], workers: int = 16) -> None:
    """Upload ``{key: body}`` in parallel (the boto3 client is thread-safe), shallow keys first.

    Keys are uploaded one depth (number of ``/``) after another: SeaweedFS keeps objects in a
    filer tree, so an object ``a`` and a key ``a/b`` end as the directory ``a`` (what S3 lists)
    only when ``a`` is written first; written the other way round, the object replaces the
    directory.  Uploading by depth makes the tree the same on every run."""

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    by_depth: dict[int, list[tuple[str, bytes]]] = {}
    for key, body in objects.items():
        by_depth.setdefault(key.count("/"), []).append((key, body))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for depth in sorted(by_depth):
            list(pool.map(put, by_depth[depth]))
