"""LocalSource: a read-only view of one local (or NFS/host-mounted) directory.

- ``stat`` uses ``os.stat`` (symlinks are followed); ``list`` streams ``os.scandir`` in pages of
  1000 entries; ``read`` opens the file per call and uses ``os.pread``.
- **Symlinks** are followed, but one that resolves *outside* the source root (or is broken, or
  loops) is treated as if it did not exist: ``stat``/``read`` raise NotFoundError and ``list``
  omits it.  Mounting a directory must not expose the rest of the host's filesystem.
- **Directory loops** are hidden the same way: a directory that is one of its own ancestors (the
  same ``(st_dev, st_ino)``: a symlink such as ``a/up -> ..`` or a bind mount back up the tree)
  is omitted by ``list`` and is NotFoundError for ``stat``/``read``, so a walk (``du``, ``find``,
  ``fluidfs load``) sees every file once instead of the tree replicated 40 levels deep.  Other
  symlinked directories inside the root are shown (their files then appear under both names).
- Only directories and regular files are shown; sockets, FIFOs and device nodes are omitted
  (reading a FIFO would block a worker thread forever).
- ``version`` is ``f"{st_mtime_ns}-{st_size}"``.  ``read`` compares it with ``fstat`` of the
  opened file before and after reading: a mismatch raises VersionChangedError, so a caller never
  gets bytes of a different version than it asked for.  Directories have version ``""``.
- OSError mapping: ENOENT/ENOTDIR/ELOOP/ENAMETOOLONG → NotFoundError, EACCES/EPERM →
  AccessDeniedError, ESTALE/ETIMEDOUT/EHOSTDOWN/ENOTCONN (stale NFS) → UnavailableError,
  anything else → SourceError.

Caveats: the symlink check (``realpath``) and the ``open`` that follows are not atomic, so a
symlink swapped in between by a local writer can escape the root (fluidfs trusts whoever can
write the source directory).  Timestamps have the file system's granularity: a rewrite of a
file with the same size within one timestamp tick keeps the same version.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as statmod
from collections.abc import Iterator

from fluidfs.errors import (
    AccessDeniedError,
    NotFoundError,
    SourceError,
    UnavailableError,
    VersionChangedError,
)
from fluidfs.sources.base import Entry, Source

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}
_DENIED = {errno.EACCES, errno.EPERM}
_UNAVAILABLE = {errno.ESTALE, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.ENOTCONN, errno.EHOSTUNREACH}


def version_of(st: os.stat_result) -> str:
    """The version token of a regular file's stat result."""
    return f"{st.st_mtime_ns}-{st.st_size}"


def _entry(name: str, st: os.stat_result) -> Entry | None:
    if statmod.S_ISDIR(st.st_mode):
        return Entry(name=name, is_dir=True, mtime=st.st_mtime_ns / 1e9, mtime_ns=st.st_mtime_ns)
    if statmod.S_ISREG(st.st_mode):
        return Entry(
            name=name,
            is_dir=False,
            size=st.st_size,
            mtime=st.st_mtime_ns / 1e9,
            version=version_of(st),
            mtime_ns=st.st_mtime_ns,
        )
    return None  # socket, FIFO, device: not exposed


class LocalSource(Source):
    """One local directory tree.  Thread-safe (no shared mutable state)."""

    kind = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(os.path.abspath(os.fspath(root)))
        self._root_slash = self.root.rstrip("/") + "/"

    # ----------------------------------------------------------------- helpers

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def url(self, path: str) -> str:
        return "file://" + self._full(path)

    def _error(self, exc: OSError, path: str, op: str) -> SourceError:
        url = self.url(path)
        code = exc.errno
        reason = os.strerror(code) if code else str(exc)
        if code in _NOT_FOUND:
            return NotFoundError(f"no such file or directory ({reason})", url)
        if code in _DENIED:
            return AccessDeniedError(f"permission denied ({reason})", url)
        if code in _UNAVAILABLE:
            return UnavailableError(f"local {op} failed ({reason})", url)
        return SourceError(f"local {op} failed ({reason})", url)

    def _inside(self, full: str) -> bool:
        """True if ``full`` (after resolving every symlink) stays within the root."""
        real = os.path.realpath(full)
        return real == self.root or real.startswith(self._root_slash)

    def _checked(self, path: str) -> tuple[str, bool]:
        """``(full path, whether a symlink is involved)``; NotFoundError if it leads outside."""
        full = self._full(path)
        if not path:
            return full, False
        real = os.path.realpath(full)
        if not (real == self.root or real.startswith(self._root_slash)):
            raise NotFoundError("symlink leads outside the source root", self.url(path))
        return full, real != full

    def _directories(self, path: str, upto: int) -> set[tuple[int, int]]:
        """``(st_dev, st_ino)`` of the root and of the first ``upto`` components of ``path``
        (each a directory); NotFoundError if one of them repeats an earlier one (a loop)."""
        comps = path.split("/") if path else []
        seen: set[tuple[int, int]] = set()
        for i in range(upto + 1):
            full = os.path.join(self.root, *comps[:i]) if i else self.root
            try:
                st = os.stat(full)
            except OSError as e:
                raise self._error(e, path, "stat") from e
            key = (st.st_dev, st.st_ino)
            if key in seen:
                raise NotFoundError("directory loop (a directory inside itself) hidden", self.url(path))
            seen.add(key)
        return seen

    # ----------------------------------------------------------------- Source API

    def stat(self, path: str) -> Entry:
        full, _ = self._checked(path)
        try:
            st = os.stat(full)
        except OSError as e:
            raise self._error(e, path, "stat") from e
        entry = _entry(path.rsplit("/", 1)[-1] if path else "", st)
        if entry is None:
            raise NotFoundError("not a regular file or directory", self.url(path))
        if path:
            depth = path.count("/") + 1
            self._directories(path, depth if entry.is_dir else depth - 1)
        return entry

    def list(self, path: str) -> Iterator[list[Entry]]:
        full, _ = self._checked(path)
        ancestors = self._directories(path, path.count("/") + 1 if path else 0)
        try:
            it = os.scandir(full)
        except OSError as e:
            raise self._error(e, path, "list") from e
        with it:
            page: list[Entry] = []
            while True:
                try:
                    de = next(it)
                except StopIteration:
                    break
                except OSError as e:
                    raise self._error(e, path, "list") from e
                try:
                    if de.is_symlink() and not self._inside(de.path):
                        continue  # escapes the root: not shown
                    st = de.stat(follow_symlinks=True)
                except OSError as e:
                    if e.errno in _NOT_FOUND:
                        continue  # broken symlink, or deleted while listing
                    raise self._error(e, f"{path}/{de.name}" if path else de.name, "list") from e
                entry = _entry(de.name, st)
                if entry is None or (entry.is_dir and (st.st_dev, st.st_ino) in ancestors):
                    continue  # not a file or directory, or a directory loop
                page.append(entry)
                if len(page) >= PAGE_SIZE:
                    yield page
                    page = []
            if page:
                yield page

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        full, via_symlink = self._checked(path)
        if via_symlink and "/" in path:
            self._directories(path, path.count("/"))  # the file is not reached through a loop
        if end <= start:
            end = start
        attempts = 1 if version else 3  # without a version, retry a read torn by a writer
        for _ in range(attempts):
            try:
                fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise self._error(e, path, "read") from e
            try:
                before = os.fstat(fd)
                if not statmod.S_ISREG(before.st_mode):
                    raise NotFoundError("not a regular file", self.url(path))
                if version and version_of(before) != version:
                    raise VersionChangedError("file changed since it was opened", self.url(path))
                chunks: list[bytes] = []
                pos = start
                while pos < end:
                    chunk = os.pread(fd, end - pos, pos)
                    if not chunk:
                        break  # end of file
                    chunks.append(chunk)
                    pos += len(chunk)
                after = os.fstat(fd)
            except OSError as e:
                raise self._error(e, path, "read") from e
            finally:
                os.close(fd)
            if version_of(after) == version_of(before):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            log.debug("local read %s [%d, %d): file changed during read", full, start, end)
        raise VersionChangedError("file changed while being read", self.url(path))

    def check(self) -> None:
        try:
            st = os.stat(self.root)
        except OSError as e:
            if e.errno in _NOT_FOUND:
                raise NotFoundError("directory does not exist", self.url("")) from e
            raise self._error(e, "", "check") from e
        if not statmod.S_ISDIR(st.st_mode):
            raise NotFoundError("not a directory", self.url(""))
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise AccessDeniedError("directory is not readable", self.url(""))
