"""A mounted fluidfs tree as its clients see it: PATH arguments, a streamed walk of the regular
files, and how much of each file the mount's cache holds (the ``user.fluidfs.cached`` xattr).

Shared by ``fluidfs load MOUNTPOINT`` (:mod:`fluidfs.warmup.mount`) and ``fluidfs status``.

Caveats: :func:`cached_summary` costs one ``getxattr`` (a FUSE round trip) per file, done by a
thread pool; files that are partly cached count with their fraction.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as S
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fluidfs.errors import ConfigError
from fluidfs.fs.xattrs import XATTR_CACHED

log = logging.getLogger(__name__)

WALK_BATCH = 256


def resolve_paths(root: str, paths: Sequence[str]) -> list[str]:
    """PATH arguments (relative to the mount, or absolute inside it) → relative paths ("" = all)."""
    real_root = os.path.realpath(root)
    out: list[str] = []
    for p in paths or [""]:
        full = os.path.normpath(os.path.join(real_root, p))  # an absolute p replaces the root
        rel = os.path.relpath(full, real_root)
        if rel == ".":
            rel = ""
        if rel == ".." or rel.startswith("../"):
            raise ConfigError(f"{p}: not inside the mount {root}")
        try:
            os.stat(os.path.join(root, rel) if rel else root)
        except OSError as exc:
            raise ConfigError(f"{p}: {exc.strerror or exc} (in the mount {root})") from None
        out.append(rel)
    return out


def iter_files(root: str, rels: Sequence[str]) -> Iterator[list[tuple[str, int]]]:
    """Batches of (relative path, size) of the regular files at or below each of ``rels``.

    Streamed (depth first, one directory listing at a time); a file named twice (overlapping
    PATHs) is yielded once.
    """
    seen: set[str] = set()
    batch: list[tuple[str, int]] = []
    for rel in rels:
        if any(rel == s or rel.startswith(s + "/") for s in seen if s) or "" in seen:
            continue  # covered by an earlier PATH
        seen.add(rel)
        top = os.path.join(root, rel) if rel else root
        st = os.stat(top)
        if not S.S_ISDIR(st.st_mode):
            if S.S_ISREG(st.st_mode):
                batch.append((rel, st.st_size))
            continue
        stack = [rel]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(os.path.join(root, d) if d else root) as it:
                    subdirs = []
                    for de in it:
                        child = f"{d}/{de.name}" if d else de.name
                        if de.is_dir(follow_symlinks=False):
                            subdirs.append(child)
                        elif de.is_file(follow_symlinks=False):
                            batch.append((child, de.stat(follow_symlinks=False).st_size))
                            if len(batch) >= WALK_BATCH:
                                yield batch
                                batch = []
            except OSError as exc:
                log.warning("cannot list %s: %s", os.path.join(root, d), exc)
                continue
            stack.extend(reversed(sorted(subdirs)))
    if batch:
        yield batch


def cached_fraction(path: str) -> float:
    """The file's ``user.fluidfs.cached`` value (0.0 when the xattr is absent)."""
    try:
        return float(os.getxattr(path, XATTR_CACHED).decode())
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return 0.0
        raise
    except ValueError:
        return 0.0


@dataclass
class CachedSummary:
    """Bytes of the files under ``paths`` that are held by the mount's cache tiers."""

    paths: list[str]
    files: int = 0
    bytes: int = 0
    cached_bytes: int = 0
    fully_cached_files: int = 0
    errors: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.cached_bytes / self.bytes if self.bytes else (1.0 if not self.errors else 0.0)


def cached_summary(root: str, rels: Sequence[str], threads: int = 16) -> CachedSummary:
    """Walk the mounted tree and add up ``cached xattr × size`` per file."""
    out = CachedSummary(paths=["/" + r for r in rels])

    def one(item: tuple[str, int]) -> tuple[str, int, float | None]:
        rel, size = item
        try:
            return rel, size, cached_fraction(os.path.join(root, rel))
        except OSError:
            return rel, size, None

    with ThreadPoolExecutor(threads, thread_name_prefix="fluidfs-status") as pool:
        for batch in iter_files(root, rels):
            for rel, size, frac in pool.map(one, batch):
                out.files += 1
                out.bytes += size
                if frac is None:
                    out.errors += 1
                    if len(out.examples) < 3:
                        out.examples.append(rel)
                    continue
                out.cached_bytes += size if frac >= 1.0 else int(frac * size)
                out.fully_cached_files += frac >= 1.0
    return out
