"""The extended attributes a fluidfs mount serves (read-only), shared with its clients (load, status).

- ``user.fluidfs.source``: the URL a file or directory comes from;
- ``user.fluidfs.version``: a file's version token (ETag, ...);
- ``user.fluidfs.cached``: the fraction of a file's blocks held by any cache tier (``0.2500``).
"""

from __future__ import annotations

XATTR_SOURCE = b"user.fluidfs.source"
XATTR_VERSION = b"user.fluidfs.version"
XATTR_CACHED = b"user.fluidfs.cached"
