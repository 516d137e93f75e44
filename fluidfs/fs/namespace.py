"""Namespace: the Dataset's mounts unioned into one tree, with stable inodes and a metadata
cache (attributes, complete listings and negative lookups, each with a TTL).

The tree is made of *synthetic* directories (the root and the parents of mount paths, which
exist only in the Dataset) and *source* nodes (everything at or below a mount's path, backed
by that mount's Source).  Mount paths never overlap (the spec parser guarantees it), so a
synthetic directory only ever contains synthetic directories and mount roots.

Inode numbers are assigned on first sight of a path and never reused or forgotten for the life
of the mount, so they are stable (``ls -i`` twice gives the same numbers).

Directories whose source gives them no time (S3 prefixes, HTTP directories, synthetic
directories) show the newest modification time among the children seen in their last listing,
or the mount's start time before they are listed (never 1970).

Caveats: the inode table grows with the number of distinct paths looked up (a few hundred
bytes each; 1M paths ≈ a few hundred MiB).  A path whose type changes at the source (file ↔
directory) gets a new inode.
"""

from __future__ import annotations

import errno as E
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import trio
from cachetools import TTLCache

from fluidfs import metrics
from fluidfs.errors import FsOpError, NotFoundError, SourceError, UnavailableError
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Entry
from fluidfs.spec.model import MountSpec

log = logging.getLogger(__name__)

ROOT_INODE = 1

#: below this metadata TTL a listing would expire before it is used: stat per name instead
_LIST_ON_MISS_MIN_TTL = 1.0
#: subdirectories listed in the background after each demand listing
_SUBDIR_PREFETCH = 64


@dataclass(slots=True)
class MountRef:
    """A mount of the Dataset with its (async) source."""

    spec: MountSpec
    source: AsyncSource


@dataclass(slots=True, eq=False)
class Node:
    inode: int
    parent: int
    path: str  # absolute path in the tree: "/" or "/a/b"
    mount: MountRef | None  # None: synthetic directory
    rel: str  # path relative to the mount's source root ("" = the mount root)
    entry: Entry
    checked: float  # monotonic time the entry was taken (inf: never expires)
    listing: dict[str, Entry] | None = None  # the complete listing, when cached
    listed: float = 0.0
    children: list[str] = field(default_factory=list)  # synthetic dirs: their fixed children
    lookup_misses: int = 0  # lookups answered by a stat; the second one lists the directory
    listing_names: list[str] = field(default_factory=list)  # the listing's names, in order
    newest: float = 0.0  # newest mtime among the children of the last listing (0: none seen)

    @property
    def is_dir(self) -> bool:
        return self.entry.is_dir

    @property
    def url(self) -> str:
        return self.mount.source.url(self.rel) if self.mount else ""


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


class Namespace:
    """Maps paths/inodes to nodes and answers lookups and listings through the metadata cache."""

    def __init__(self, mounts: list[MountRef], dataset: str, ttl: float, negative_ttl: float) -> None:
        self.dataset = dataset
        self.ttl = ttl
        self.mounts = mounts
        self._nodes: dict[int, Node] = {}
        self._by_path: dict[str, int] = {}
        self._next_inode = ROOT_INODE
        neg_ttl = negative_ttl if math.isfinite(negative_ttl) else 10.0 * 365 * 86400
        self._negative: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=neg_ttl)
        self._negative_enabled = negative_ttl > 0
        self._created = time.time()
        self._listing_flights: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._list_limiter = trio.CapacityLimiter(16)
        self._build_skeleton()
        self._m_hit = {op: metrics.META_HITS.labels(dataset, op) for op in ("lookup", "getattr", "list")}
        self._m_miss = {op: metrics.META_MISSES.labels(dataset, op) for op in ("lookup", "getattr", "list")}

    # --- construction ---------------------------------------------------------------------
    def _synthetic_entry(self, name: str) -> Entry:
        return Entry(name=name, is_dir=True, mtime=self._created, version="synthetic")

    def _dated(self, node: Node | None, entry: Entry) -> Entry:
        """``entry`` with a time if it is a directory the source gives none (see the module docstring)."""
        if not entry.is_dir or entry.mtime or entry.mtime_ns:
            return entry
        return replace(entry, mtime=(node.newest if node is not None else 0.0) or self._created)

    def _add(self, path: str, parent: int, mount: MountRef | None, rel: str, entry: Entry, checked: float) -> Node:
        inode = self._next_inode
        self._next_inode += 1
        node = Node(inode, parent, path, mount, rel, self._dated(None, entry), checked)
        self._nodes[inode] = node
        self._by_path[path] = inode
        return node

    def _build_skeleton(self) -> None:
        root_mount = next((m for m in self.mounts if m.spec.path == "/"), None)
        self._add("/", ROOT_INODE, root_mount, "", self._synthetic_entry(""), -math.inf if root_mount else math.inf)
        if root_mount:
            return
        for m in self.mounts:
            parts = m.spec.path.strip("/").split("/")
            path = "/"
            for i, part in enumerate(parts):
                child = _join(path, part)
                parent = self._nodes[self._by_path[path]]
                if part not in parent.children:
                    parent.children.append(part)
                if child not in self._by_path:
                    is_root = i == len(parts) - 1
                    self._add(
                        child,
                        parent.inode,
                        m if is_root else None,
                        "",
                        self._synthetic_entry(part),
                        -math.inf if is_root else math.inf,
                    )
                path = child

    # --- queries --------------------------------------------------------------------------
    def node(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise FsOpError(E.ENOENT, f"unknown inode {inode}") from None

    def all_nodes(self) -> list[Node]:
        """Every node known so far (a snapshot)."""
        return list(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def node_by_path(self, path: str) -> Node | None:
        inode = self._by_path.get(path)
        return self._nodes[inode] if inode is not None else None

    def _fresh(self, stamp: float) -> bool:
        return time.monotonic() - stamp < self.ttl

    def _upsert(self, parent: Node, name: str, entry: Entry) -> Node:
        """Record ``entry`` as the child ``name`` of ``parent`` (a source directory)."""
        path = _join(parent.path, name)
        now = time.monotonic()
        inode = self._by_path.get(path)
        if inode is not None:
            node = self._nodes[inode]
            if node.entry.is_dir == entry.is_dir:
                if node.mount is not None and node.rel:
                    node.entry = self._dated(node, entry)
                    node.checked = now
                return node
            log.info("dataset %s: %s changed type at the source; new inode", self.dataset, path)
        assert parent.mount is not None
        rel = f"{parent.rel}/{name}" if parent.rel else name
        return self._add(path, parent.inode, parent.mount, rel, entry, now)

    async def lookup(self, parent_inode: int, name: str) -> Node:
        parent = self.node(parent_inode)
        if not parent.is_dir:
            raise FsOpError(E.ENOTDIR)
        if name == ".":
            return parent
        if name == "..":
            return self.node(parent.parent)
        path = _join(parent.path, name)
        if parent.mount is None or (parent.rel == "" and parent.checked == math.inf):
            # synthetic directory: fixed children only
            inode = self._by_path.get(path)
            if inode is None or name not in parent.children:
                raise NotFoundError("no such entry", path)
            return self._nodes[inode]
        existing = self.node_by_path(path)
        if existing is not None and self._fresh(existing.checked):
            self._m_hit["lookup"].inc()
            return existing
        if parent.listing is not None and self._fresh(parent.listed):
            self._m_hit["lookup"].inc()
            entry = parent.listing.get(name)
            if entry is None:
                raise NotFoundError("no such entry", path)
            return self._upsert(parent, name, entry)
        if self._negative_enabled and path in self._negative:
            self._m_hit["lookup"].inc()
            raise NotFoundError("no such entry (cached)", path)
        if self.ttl >= _LIST_ON_MISS_MIN_TTL:
            parent.lookup_misses += 1
            if parent.lookup_misses >= 2 and await self._ensure_listing(parent):
                # the second lookup miss in a directory lists it whole (one paginated LIST)
                # instead of a stat (HEAD + LIST on S3) per name
                assert parent.listing is not None
                entry_or_none = parent.listing.get(name)
                if entry_or_none is None:
                    raise NotFoundError("no such entry", path)
                return self._upsert(parent, name, entry_or_none)
        self._m_miss["lookup"].inc()
        assert parent.mount is not None
        rel = f"{parent.rel}/{name}" if parent.rel else name
        try:
            entry = await parent.mount.source.stat(rel)
        except NotFoundError:
            if self._negative_enabled:
                self._negative[path] = True
            raise
        except UnavailableError as exc:
            stale = existing or self._stale_child(parent, name)
            if stale is None:
                raise
            log.info("dataset %s: source unavailable, serving cached metadata of %s: %s", self.dataset, path, exc)
            return stale
        return self._upsert(parent, name, entry)

    async def _ensure_listing(self, node: Node, prefetch_children: bool = True) -> bool:
        """Make ``node``'s complete listing cached and fresh (single-flight per directory).

        Returns False when it could not be listed (source unavailable)."""
        flight = self._listing_flights.get(node.inode)
        if flight is not None:
            await flight.wait()
        else:
            flight = self._listing_flights[node.inode] = trio.Event()
            try:
                async for _page in self.list_dir(node.inode, prefetch_children, _in_flight=True):
                    pass
            except UnavailableError:
                return False
            finally:
                del self._listing_flights[node.inode]
                flight.set()
        return node.listing is not None and self._fresh(node.listed)

    def _stale_child(self, parent: Node, name: str) -> Node | None:
        if parent.listing is not None and name in parent.listing:
            return self._upsert(parent, name, parent.listing[name])
        return None

    async def getattr(self, inode: int) -> Node:
        node = self.node(inode)
        if node.mount is None or node.rel == "" or self._fresh(node.checked):
            self._m_hit["getattr"].inc()
            return node
        return await self.refresh(node)

    async def refresh(self, node: Node) -> Node:
        """Re-stat a source node now (used on expiry and on open)."""
        if node.mount is None or node.rel == "":
            return node
        self._m_miss["getattr"].inc()
        try:
            entry = await node.mount.source.stat(node.rel)
        except UnavailableError as exc:
            # stale-if-error: the mount keeps serving what it knows while the source is down
            log.info(
                "dataset %s: source unavailable, serving cached attributes of %s: %s", self.dataset, node.path, exc
            )
            return node
        if entry.is_dir != node.entry.is_dir:
            raise NotFoundError("entry changed type", node.path)
        node.entry = self._dated(node, entry)
        node.checked = time.monotonic()
        return node

    def expire(self, node: Node) -> None:
        """Forget the cached attributes of ``node`` (e.g. after its version changed)."""
        node.checked = -math.inf

    def invalidate_all(self) -> None:
        """Drop every cached attribute, listing and negative entry (``fluidfs refresh``)."""
        for node in self._nodes.values():
            if node.mount is not None and node.rel:
                node.checked = -math.inf
            node.listing = None
        self._negative.clear()

    def start(self, nursery: trio.Nursery, parallel: int = 16) -> None:
        """Give the namespace a nursery for background listing prefetches."""
        self._nursery = nursery
        self._list_limiter = trio.CapacityLimiter(parallel)

    def _prefetch_subdirs(self, node: Node) -> None:
        """After a demand listing, list its first subdirectories in the background (bounded),
        so a tree walk (``ls -R``, ``find``, ``os.walk``) finds them cached."""
        if self._nursery is None or node.listing is None:
            return
        queued = 0
        for name, entry in node.listing.items():
            if queued >= _SUBDIR_PREFETCH or not entry.is_dir:
                continue
            child = self.node_by_path(_join(node.path, name))
            if child is None or child.inode in self._listing_flights:
                continue
            if child.listing is not None and self._fresh(child.listed):
                continue
            queued += 1
            self._nursery.start_soon(self._prefetch_listing, child)

    async def _prefetch_listing(self, node: Node) -> None:
        async with self._list_limiter:
            try:
                await self._ensure_listing(node, prefetch_children=False)
            except SourceError as exc:
                log.debug("dataset %s: listing prefetch of %s failed: %s", self.dataset, node.path, exc)
            except Exception:
                log.exception("dataset %s: listing prefetch of %s failed", self.dataset, node.path)

    async def list_dir(
        self, inode: int, prefetch_children: bool = True, _in_flight: bool = False
    ) -> AsyncIterator[list[Node]]:
        """Yield the directory's children page by page (from the cache when fresh)."""
        node = self.node(inode)
        if not node.is_dir:
            raise FsOpError(E.ENOTDIR)
        flight = None if _in_flight else self._listing_flights.get(node.inode)
        if flight is not None:
            await flight.wait()  # a background listing of this directory is under way: reuse it
        if node.mount is None or (node.rel == "" and node.checked == math.inf):
            yield [self._nodes[self._by_path[_join(node.path, c)]] for c in node.children]
            return
        if node.listing is not None and self._fresh(node.listed):
            self._m_hit["list"].inc()
            names = list(node.listing.items())
            for i in range(0, len(names), 1000):
                yield [self._upsert(node, n, e) for n, e in names[i : i + 1000]]
            return
        self._m_miss["list"].inc()
        listing: dict[str, Entry] = {}
        pages = node.mount.source.pages(node.rel)
        try:
            first = await pages.__anext__()
        except StopAsyncIteration:
            first = []
        except UnavailableError as exc:
            if node.listing is None:
                raise
            log.info("dataset %s: source unavailable, serving cached listing of %s: %s", self.dataset, node.path, exc)
            names = list(node.listing.items())
            for i in range(0, len(names), 1000):
                yield [self._upsert(node, n, e) for n, e in names[i : i + 1000]]
            return

        async def all_pages() -> AsyncIterator[list[Entry]]:
            yield first
            async for more in pages:
                yield more

        async for page in all_pages():
            out = []
            for entry in page:
                if not entry.name or "/" in entry.name or entry.name in (".", "..") or entry.name in listing:
                    continue
                listing[entry.name] = entry
                out.append(self._upsert(node, entry.name, entry))
            if out:
                yield out
        node.listing = listing
        node.listing_names = list(listing)
        node.listed = time.monotonic()
        node.newest = max((e.mtime for e in listing.values()), default=0.0)
        if node.newest and node.entry.version in ("", "synthetic") and not node.entry.mtime_ns:
            node.entry = replace(node.entry, mtime=node.newest)  # a directory without a time of its own
        if prefetch_children:
            self._prefetch_subdirs(node)
        for name in listing:
            self._negative.pop(_join(node.path, name), None)
