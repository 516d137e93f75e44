"""The one rule that turns an HTTP or S3 ``ETag`` into a version token.

A strong entity tag loses its quotes (``"abc"`` → ``abc``).  A weak tag (``W/"abc"``) or a
missing one gives ``""``: a weak tag does not promise byte-identical content and never matches
``If-Match`` (RFC 9110 §13.1.1), so it cannot pin the version of a ranged read.

Caveats: an unquoted tag (not RFC-conformant, but sent by some servers) is taken as is.
"""

from __future__ import annotations


def normalize_etag(raw: str | None) -> str:
    """The version token of an ``ETag`` value; ``""`` for a weak or missing one."""
    if not raw:
        return ""
    raw = raw.strip()
    if raw.startswith("W/"):
        return ""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    return raw
