"""Parsing for the HTTP source: manifests (JSON / TSV), autoindex HTML pages, and response headers.

Pure functions and an immutable tree, no I/O: ``fluidfs.sources.http`` fetches the bytes.

Manifest formats (see ``docs/http-source.md``):

- JSON: ``{"version": 1, "files": [{"path": "a/b.jpg", "size": 123, "mtime": 1700000000.0,
  "etag": "..."}], "dirs": ["empty/dir"]}`` — ``path`` and ``size`` required, ``mtime``, ``etag``
  and the ``dirs`` list optional;
- TSV: one ``path<TAB>size[<TAB>mtime[<TAB>etag]]`` per line; a line that is just ``dir/`` declares
  a (possibly empty) directory; blank lines and lines starting with ``#`` are ignored.

Either may be gzip-compressed (detected by its magic bytes).  A document whose first non-blank
character is ``{`` is JSON, anything else TSV.

Caveats: the whole manifest is held in memory (about 200 bytes per file).  Autoindex parsing
takes every ``<a href>`` that names a direct child of the page's directory; it cannot tell
a hand-written HTML page from a generated listing, and sizes shown in listings are ignored
(Apache rounds them).
"""

from __future__ import annotations

import email.utils
import gzip
import json
import math
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from fluidfs.errors import SourceError
from fluidfs.sources.base import Entry
from fluidfs.util.etag import normalize_etag

#: manifest version tokens look like this when the manifest carries no ETag (size is checked on read)
MANIFEST_VERSION_PREFIX = "mf:"


# ---- headers ---------------------------------------------------------------------------------

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.I)


def content_range(value: str | None) -> tuple[int | None, int | None, int | None] | None:
    """``(first, last, total)`` of a ``Content-Range`` header (``None`` for ``*``), or None."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    first, last, total = m.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total != "*" else None,
    )


def http_mtime(last_modified: str | None) -> float:
    """Seconds since the epoch of an HTTP date (``0.0`` if missing or unparsable)."""
    if not last_modified:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(last_modified).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0


# ---- paths -------------------------------------------------------------------------------------


def bad_relpath(path: str) -> str | None:
    """Why ``path`` is not an acceptable relative path (``None`` if it is)."""
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path"
    if "\0" in path:
        return "NUL character in path"
    for comp in path.split("/"):
        if comp == "":
            return "empty path component"
        if comp in (".", ".."):
            return f"'{comp}' path component"
    return None


# ---- manifest ----------------------------------------------------------------------------------


@dataclass
class ManifestTree:
    """Directories → children, built from a manifest; immutable once ``parse_manifest`` returns."""

    url: str
    dirs: dict[str, dict[str, Entry]] = field(default_factory=lambda: {"": {}})
    files: int = 0

    def stat(self, path: str) -> Entry | None:
        if path == "":
            return Entry(name="", is_dir=True)
        parent, _, name = path.rpartition("/")
        children = self.dirs.get(parent)
        return None if children is None else children.get(name)

    def children(self, path: str) -> list[Entry] | None:
        children = self.dirs.get(path)
        return None if children is None else list(children.values())

    def _add(self, path: str, entry: Entry | None, where: str) -> None:
        """Add a file (``entry``) or a directory (``entry is None``) at ``path``."""
        reason = bad_relpath(path)
        if reason:
            raise SourceError(f"manifest {where}: {reason} in {path!r}", self.url)
        comps = path.split("/")
        cur = ""
        for comp in comps[:-1]:
            children = self.dirs[cur]
            nxt = f"{cur}/{comp}" if cur else comp
            existing = children.get(comp)
            if existing is None:
                children[comp] = Entry(name=comp, is_dir=True)
                self.dirs[nxt] = {}
            elif not existing.is_dir:
                raise SourceError(f"manifest {where}: {path!r} is below the file {nxt!r}", self.url)
            cur = nxt
        children = self.dirs[cur]
        name = comps[-1]
        existing = children.get(name)
        if entry is None:
            if existing is None:
                children[name] = Entry(name=name, is_dir=True)
                self.dirs[path] = {}
            elif not existing.is_dir:
                raise SourceError(f"manifest {where}: directory {path!r} is also a file", self.url)
            return
        if existing is not None:
            what = "directory" if existing.is_dir else "duplicate file"
            raise SourceError(f"manifest {where}: {path!r} is already a {what}", self.url)
        children[name] = entry
        self.files += 1


def _file_entry(tree: ManifestTree, where: str, path: Any, size: Any, mtime: Any, etag: Any) -> tuple[str, Entry]:
    if not isinstance(path, str):
        raise SourceError(f"manifest {where}: 'path' must be a string", tree.url)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SourceError(f"manifest {where}: 'size' must be a non-negative integer", tree.url)
    if mtime is None:
        mtime = 0.0
    if isinstance(mtime, bool) or not isinstance(mtime, (int, float)) or not math.isfinite(mtime):
        raise SourceError(f"manifest {where}: 'mtime' must be a number", tree.url)
    if etag is not None and not isinstance(etag, str):
        raise SourceError(f"manifest {where}: 'etag' must be a string", tree.url)
    version = normalize_etag(etag) or f"{MANIFEST_VERSION_PREFIX}{size}-{float(mtime)!r}"
    name = path.rpartition("/")[2]
    return path, Entry(name=name, is_dir=False, size=size, mtime=float(mtime), version=version)


def _parse_json(tree: ManifestTree, text: str) -> None:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"manifest is not valid JSON ({exc})", tree.url) from None
    if not isinstance(doc, dict):
        raise SourceError("manifest: top level must be an object", tree.url)
    if doc.get("version") != 1:
        raise SourceError(f"manifest: unsupported version {doc.get('version')!r} (expected 1)", tree.url)
    files = doc.get("files")
    if not isinstance(files, list):
        raise SourceError("manifest: 'files' must be a list", tree.url)
    for i, item in enumerate(files):
        where = f"files[{i}]"
        if not isinstance(item, dict):
            raise SourceError(f"manifest {where}: must be an object", tree.url)
        path, entry = _file_entry(tree, where, item.get("path"), item.get("size"), item.get("mtime"), item.get("etag"))
        tree._add(path, entry, where)
    dirs = doc.get("dirs", [])
    if not isinstance(dirs, list):
        raise SourceError("manifest: 'dirs' must be a list", tree.url)
    for i, d in enumerate(dirs):
        if not isinstance(d, str):
            raise SourceError(f"manifest dirs[{i}]: must be a string", tree.url)
        tree._add(d, None, f"dirs[{i}]")


def _parse_tsv(tree: ManifestTree, text: str) -> None:
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        where = f"line {lineno}"
        cols = line.split("\t")
        if len(cols) == 1 and cols[0].endswith("/"):
            tree._add(cols[0][:-1], None, where)
            continue
        if not 2 <= len(cols) <= 4:
            raise SourceError(f"manifest {where}: expected path<TAB>size[<TAB>mtime[<TAB>etag]]", tree.url)
        try:
            size: Any = int(cols[1])
            mtime: Any = float(cols[2]) if len(cols) > 2 and cols[2] else None
        except ValueError:
            raise SourceError(f"manifest {where}: size/mtime are not numbers", tree.url) from None
        etag = cols[3] if len(cols) > 3 and cols[3] else None
        path, entry = _file_entry(tree, where, cols[0], size, mtime, etag)
        tree._add(path, entry, where)


def parse_manifest(data: bytes, url: str) -> ManifestTree:
    """Parse manifest bytes (JSON or TSV, optionally gzip) into a tree.  Raises SourceError."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise SourceError(f"manifest: bad gzip data ({exc})", url) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"manifest is not UTF-8 ({exc})", url) from None
    tree = ManifestTree(url=url)
    if text.lstrip().startswith("{"):
        _parse_json(tree, text)
    else:
        _parse_tsv(tree, text)
    return tree


# ---- autoindex ---------------------------------------------------------------------------------


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for key, value in attrs:
                if key == "href" and value is not None:
                    self.hrefs.append(value)
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


_INDEX_TITLES = ("index of ", "directory listing for ")


def looks_like_autoindex(text: str) -> bool:
    """True for pages titled like nginx/Apache/lighttpd ("Index of /x") or Python ("Directory listing for")."""
    parser = _LinkParser()
    parser.feed(text)
    parser.close()
    return parser.title.strip().lower().startswith(_INDEX_TITLES)


def parse_autoindex(text: str, dir_url: str) -> list[tuple[str, bool]]:
    """``(name, is_dir)`` for every link in an autoindex page that names a direct child of
    ``dir_url`` (which ends with ``/``), in page order, each name once.

    Skipped: parent links, sort links (``?C=N;O=D``), fragments, links to other hosts or
    outside the directory, deeper links, and names that cannot be file names.
    """
    parser = _LinkParser()
    parser.feed(text)
    parser.close()
    base = urllib.parse.urlsplit(dir_url)
    base_path = urllib.parse.unquote(base.path)
    out: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for href in parser.hrefs:
        href = href.strip()
        if not href or href.startswith(("?", "#")):
            continue
        target = urllib.parse.urlsplit(urllib.parse.urljoin(dir_url, href))
        if target.query or target.fragment:
            continue
        if (target.scheme, target.netloc.lower()) != (base.scheme, base.netloc.lower()):
            continue
        path = urllib.parse.unquote(target.path)
        if not path.startswith(base_path):
            continue
        rest = path[len(base_path) :]
        is_dir = rest.endswith("/")
        name = rest[:-1] if is_dir else rest
        if not name or "/" in name or name in (".", "..") or "\0" in name or name in seen:
            continue
        seen.add(name)
        out.append((name, is_dir))
    return out


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
