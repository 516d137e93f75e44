"""The Source interface every storage backend implements, plus the entry record it returns.

Sources are *synchronous and blocking*: they are called from worker threads through
``trio.to_thread.run_sync`` with a bounded limiter by the layers above (never on the trio
thread).  Every implementation must be thread-safe.

Paths handed to a source are *relative to the source's root*, use ``/`` separators, have no
leading or trailing slash, and ``""`` means the root.  They never contain ``..`` or empty
components (the namespace layer guarantees that).

Errors: implementations raise only ``fluidfs.errors.SourceError`` subclasses
(``NotFoundError``, ``AccessDeniedError``, ``UnavailableError``, ``VersionChangedError``);
library exceptions are converted at this edge.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a source: a file (object) or a directory (prefix)."""

    name: str  # the last path component (no slashes)
    is_dir: bool
    size: int = 0  # bytes; 0 for directories
    mtime: float = 0.0  # seconds since the epoch (float for sub-second precision)
    version: str = ""  # opaque token that changes whenever the content changes (ETag, mtime+size)
    mtime_ns: int = 0  # exact mtime in nanoseconds when the source knows it (0: use ``mtime``)


class Source(abc.ABC):
    """A read-only view of one storage location (a bucket prefix, an HTTP tree, a local dir)."""

    #: short bounded label for metrics: "s3", "http", "local"
    kind: str = "abstract"
    #: True if the backend reports every request it sends (``fluidfs.sources.call.count_request``);
    #: otherwise each operation counts as one request in the metrics
    counts_requests: bool = False

    @abc.abstractmethod
    def stat(self, path: str) -> Entry:
        """Return the entry for ``path`` (``""`` is the root and is always a directory).

        Raises NotFoundError if nothing exists there.
        """

    @abc.abstractmethod
    def list(self, path: str) -> Iterator[list[Entry]]:
        """Yield the directory's entries page by page (each page a bounded list, e.g. 1000).

        Pages are produced lazily: a directory with 100k entries is never one giant request.
        Names are unique within the whole listing; order is the source's natural order.
        Raises NotFoundError (on first iteration) if ``path`` is not a directory.
        """

    @abc.abstractmethod
    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        """Return bytes ``[start, end)`` of the object (fewer only at end of object).

        If ``version`` is given and the object no longer has that version, raise
        VersionChangedError rather than return bytes of another version.
        """

    @abc.abstractmethod
    def url(self, path: str) -> str:
        """The object's full URL (``s3://b/p/x``, ``https://h/x``, ``file:///d/x``) for xattrs/logs."""

    def check(self) -> None:
        """Verify the source is reachable and the credentials work (called once at mount).

        Raises the matching SourceError with a clear message.  Default: ``stat("")``.
        """
        self.stat("")

    def close(self) -> None:  # noqa: B027 - an optional hook with a default, not abstract
        """Release connections.  Default: nothing."""
