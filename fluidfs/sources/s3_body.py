"""Receiving an S3 response body straight into a caller's buffer, under botocore and urllib3.

botocore's ``StreamingBody.readinto`` and urllib3's ``HTTPResponse.readinto`` both read into a
new ``bytes`` and copy it into the caller's buffer: for a 4 MiB block that is a 4 MiB allocation
(page faults) and a copy that the cache does not need.  ``http.client.HTTPResponse.readinto``,
one layer further down, hands the caller's buffer to the socket (``recv_into``) for everything
its small read buffer does not already hold.  :func:`direct_body` finds that response under a
botocore body when reading it directly is equivalent to ``body.read()``; :func:`receive_into`
fills a buffer from it and gives the connection back to urllib3's pool once the body is complete.

Caveats: this reaches private attributes (``StreamingBody._raw_stream``, urllib3's
``HTTPResponse._fp`` and ``_fp_bytes_read``); :func:`direct_body` checks every type and state it
relies on and returns None otherwise, and the caller then reads through botocore and copies.
A body read this way bypasses botocore's content-length check (the caller compares what it got
with ``Content-Length``) and any checksum-validating wrapper (there is none unless a checksum
mode is asked for: the wrapper is not a plain ``StreamingBody``, so it is never bypassed).
"""

from __future__ import annotations

from http.client import HTTPResponse as SocketResponse
from typing import Any

import urllib3
from botocore.response import StreamingBody

DirectBody = tuple[urllib3.HTTPResponse, SocketResponse]


def direct_body(body: Any) -> DirectBody | None:
    """The urllib3 response under ``body`` and the ``http.client`` response under that, when
    ``body`` is a plain ``StreamingBody`` with nothing read or decoded yet; None otherwise."""
    if type(body) is not StreamingBody:
        return None
    raw = getattr(body, "_raw_stream", None)
    if not isinstance(raw, urllib3.HTTPResponse) or raw.decode_content:
        return None
    fp = getattr(raw, "_fp", None)
    if not isinstance(fp, SocketResponse) or getattr(raw, "_fp_bytes_read", 1) != 0:
        return None
    return raw, fp


def receive_into(direct: DirectBody, view: memoryview) -> int:
    """Fill ``view`` from the body; the bytes received (fewer if the connection ended early).

    Once ``view`` is full the connection goes back to the pool: the caller sizes ``view`` to the
    body's ``Content-Length``, so the body is then complete.  After a short body the caller
    closes the response, which closes the connection."""
    raw, fp = direct
    got = 0
    while got < len(view):
        n = fp.readinto(view[got:])
        if not n:
            return got
        got += n
    raw.release_conn()
    return got
