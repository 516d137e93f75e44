"""Test doubles other tests (and benchmarks) need: an in-memory source, and wrappers that
count, slow down or break any source.  Not used by the product itself.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

from fluidfs.errors import NotFoundError, UnavailableError, VersionChangedError
from fluidfs.sources.base import Entry, Source


class MemorySource(Source):
    """A source whose objects live in a dict ``{"a/b.txt": b"..."}``; directories are implicit.

    ``put``/``delete`` change it at any time (versions change with every put).
    """

    kind = "memory"

    def __init__(self, objects: dict[str, bytes] | None = None, page_size: int = 1000) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, str, float]] = {}
        self._gen = 0
        self.page_size = page_size
        for k, v in (objects or {}).items():
            self.put(k, v)

    def put(self, path: str, data: bytes) -> None:
        with self._lock:
            self._gen += 1
            self._objects[path] = (bytes(data), f"v{self._gen}", 1_700_000_000.0 + self._gen)

    def delete(self, path: str) -> None:
        with self._lock:
            self._objects.pop(path, None)

    def _dirs(self) -> set[str]:
        dirs = {""}
        for k in self._objects:
            parts = k.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def stat(self, path: str) -> Entry:
        with self._lock:
            if path in self._objects:
                data, ver, mtime = self._objects[path]
                return Entry(path.rsplit("/", 1)[-1], False, len(data), mtime, ver)
            if path in self._dirs():
                return Entry(path.rsplit("/", 1)[-1], True)
        raise NotFoundError("no such object", self.url(path))

    def list(self, path: str) -> Iterator[list[Entry]]:
        with self._lock:
            if path not in self._dirs():
                raise NotFoundError("no such directory", self.url(path))
            prefix = f"{path}/" if path else ""
            names: dict[str, Entry] = {}
            for k, (data, ver, mtime) in sorted(self._objects.items()):
                if not k.startswith(prefix):
                    continue
                rest = k[len(prefix) :]
                head, sep, _ = rest.partition("/")
                if sep:
                    names.setdefault(head, Entry(head, True))
                else:
                    names[head] = Entry(head, False, len(data), mtime, ver)
            entries = list(names.values())
        for i in range(0, len(entries), self.page_size):
            yield entries[i : i + self.page_size]

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        with self._lock:
            if path not in self._objects:
                raise NotFoundError("no such object", self.url(path))
            data, ver, _ = self._objects[path]
        if version and version != ver:
            raise VersionChangedError("object changed", self.url(path))
        return data[start:end]

    def url(self, path: str) -> str:
        return f"memory:///{path}"


class CountingSource(Source):
    """Wraps a source and counts calls per operation (``calls["read"]``) and bytes read."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.calls: Counter[str] = Counter()
        self.bytes_read = 0
        self.reads: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def _count(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1

    def stat(self, path: str) -> Entry:
        self._count("stat")
        return self.inner.stat(path)

    def list(self, path: str) -> Iterator[list[Entry]]:
        self._count("list")
        for page in self.inner.list(path):
            self._count("list_page")
            yield page

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        self._count("read")
        data = self.inner.read(path, start, end, version)
        with self._lock:
            self.bytes_read += len(data)
            self.reads.append((path, start, end))
        return data

    def url(self, path: str) -> str:
        return self.inner.url(path)

    def check(self) -> None:
        self._count("check")
        self.inner.check()


class FlakySource(Source):
    """Wraps a source; while ``broken`` is set every call raises UnavailableError.
    ``delay`` seconds are slept before every call (a slow source)."""

    def __init__(self, inner: Source, delay: float = 0.0) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.broken = threading.Event()
        self.delay = delay

    def _gate(self, path: str) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.broken.is_set():
            raise UnavailableError("source is down", self.inner.url(path))

    def stat(self, path: str) -> Entry:
        self._gate(path)
        return self.inner.stat(path)

    def list(self, path: str) -> Iterator[list[Entry]]:
        self._gate(path)
        yield from self.inner.list(path)

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        self._gate(path)
        return self.inner.read(path, start, end, version)

    def url(self, path: str) -> str:
        return self.inner.url(path)


class PausableSource(Source):
    """Wraps a source; while paused, every call blocks (like a server frozen with SIGSTOP) until
    ``resume()`` — or ``max_wait`` seconds, so a forgotten pause cannot hang a test run.
    ``active`` is the number of calls inside the source right now, ``peak`` its maximum."""

    def __init__(self, inner: Source, max_wait: float = 60.0) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.max_wait = max_wait
        self._running = threading.Event()
        self._running.set()
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.calls: Counter[str] = Counter()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def _gate(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self._running.wait(self.max_wait)
        finally:
            with self._lock:
                self.active -= 1

    def stat(self, path: str) -> Entry:
        self._gate("stat")
        return self.inner.stat(path)

    def list(self, path: str) -> Iterator[list[Entry]]:
        self._gate("list")
        yield from self.inner.list(path)

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        self._gate("read")
        return self.inner.read(path, start, end, version)

    def url(self, path: str) -> str:
        return self.inner.url(path)


class SlowSource(CountingSource):
    """A CountingSource whose reads take ``delay`` seconds and that records how many run at once."""

    def __init__(self, inner: Source, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay
        self.active = 0
        self.peak = 0

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            return super().read(path, start, end, version)
        finally:
            with self._lock:
                self.active -= 1
