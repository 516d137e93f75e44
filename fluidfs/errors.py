"""The one exception tree of fluidfs.

Every error fluidfs raises on purpose is a ``FluidfsError``.  Library errors (botocore,
urllib, OSError from a source) are converted at the *source edge* into one of these; they are
turned into errnos only in the FUSE adapter (``fluidfs/fs/fuse_ops.py``) and into exit codes
only by :func:`exit_code` below (used by the CLI and by the daemon's readiness report).

    FluidfsError
    ├── SpecError            malformed Dataset document / bad option       (exit 2)
    ├── ConfigError          bad command-line or cache configuration       (exit 2)
    ├── MountError           mountpoint missing/busy, FUSE failure         (exit 1)
    ├── SourceError          anything that went wrong talking to a source  (EIO)
    │   ├── NotFoundError        object or prefix does not exist           (ENOENT)
    │   ├── AccessDeniedError    wrong credentials / forbidden             (EACCES)
    │   ├── UnavailableError     endpoint unreachable / 5xx after retries  (EIO)
    │   │   └── SourceTimeoutError   no answer within the request timeout  (EIO)
    │   └── VersionChangedError  object changed since it was opened        (ESTALE→EIO)
    ├── CacheError           a cache tier failed (the tiered cache degrades, never raises to reads)
    ├── PeerError            a request to a cluster peer failed (the peer tier falls back, never raises to reads)
    │   └── PeerRequestError     a peer request was rejected: carries its HTTP status (401, 400, 404…)
    ├── ControlError         the control plane (fluidfs-controller) could not do something  (exit 1)
    │   ├── KubeApiError         a Kubernetes API call failed (``status``: HTTP code, 0 = no answer)
    │   └── ScrapeError          a metrics endpoint could not be read
    └── FsOpError            a filesystem operation is invalid (carries its errno: ENOTDIR, EROFS…)
"""

from __future__ import annotations


class FluidfsError(Exception):
    """Base of every error fluidfs raises on purpose."""


class SpecError(FluidfsError):
    """A Dataset document is malformed.  ``str()`` is the one-line message shown to users:
    ``<document>: <field.path>: <problem>``."""

    def __init__(self, document: str, field: str, problem: str) -> None:
        self.document = document
        self.field = field
        self.problem = problem
        where = f"{field}: " if field else ""
        super().__init__(f"{document}: {where}{problem}")


class ConfigError(FluidfsError):
    """A command-line or configuration value is invalid."""


class MountError(FluidfsError):
    """The filesystem could not be mounted or unmounted."""


class SourceError(FluidfsError):
    """Talking to a source failed.  ``url`` names the object or prefix involved."""

    def __init__(self, message: str, url: str = "") -> None:
        self.url = url
        super().__init__(f"{message}: {url}" if url else message)


class NotFoundError(SourceError):
    """The object, prefix, bucket or directory does not exist."""


class AccessDeniedError(SourceError):
    """The source refused our credentials."""


class UnavailableError(SourceError):
    """The source could not be reached, timed out, or answered 5xx after all retries."""


class SourceTimeoutError(UnavailableError):
    """The source did not answer within the request timeout (e.g. a paused or overloaded server)."""


class VersionChangedError(SourceError):
    """The object changed at the source since its version token was taken."""


class CacheError(FluidfsError):
    """A cache tier failed (I/O error, disk full, corrupt block)."""


class FsOpError(FluidfsError):
    """A filesystem operation that cannot succeed for a POSIX reason; ``errno`` says which."""

    def __init__(self, errno: int, message: str = "") -> None:
        self.errno = errno
        super().__init__(message or f"errno {errno}")


class PeerError(FluidfsError):
    """A cluster peer could not serve a block: refused, timed out, answered badly or sent a bad
    block.  ``reason`` is a short bounded label (for metrics): refused, timeout, bad_block,
    unauthorized, busy, protocol, error."""

    def __init__(self, message: str, reason: str = "error") -> None:
        self.reason = reason
        super().__init__(message)


class PeerRequestError(PeerError):
    """A peer request that the serving side rejects; ``status`` is the HTTP status it answers."""

    def __init__(self, status: int, message: str, reason: str = "protocol") -> None:
        self.status = status
        super().__init__(message, reason)


class ControlError(FluidfsError):
    """The control plane (``fluidfs-controller``, its adapters and actuators) failed."""


class KubeApiError(ControlError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (409 conflict, 404 not
    found, ...) or 0 when the API server did not answer."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class ScrapeError(ControlError):
    """A Prometheus metrics endpoint could not be read (refused, timed out, not 200)."""


#: Exit codes of every ``fluidfs`` command (the README's tables).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_SOURCE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one exception each, else ``exc``.

    trio's nurseries wrap what their tasks raise in groups; a start-up error of one task (a port
    in use, say) is still that one error to the user.
    """
    while True:
        inner = getattr(exc, "exceptions", None)  # an exception group (also Python 3.10's backport)
        if not isinstance(inner, tuple) or len(inner) != 1 or not isinstance(inner[0], BaseException):
            return exc
        exc = inner[0]


def exit_code(exc: BaseException) -> int:
    """The exit code for an error that ends a command: 2 usage/spec/config, 3 source, else 1."""
    if isinstance(exc, (SpecError, ConfigError)):
        return EXIT_USAGE
    if isinstance(exc, SourceError):
        return EXIT_SOURCE
    return EXIT_FAILURE
