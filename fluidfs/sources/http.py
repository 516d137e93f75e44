"""The HTTP(S) source: a tree served by a web server, discovered by manifest, autoindex or as one file.

Discovery (once, on first use; see ``docs/http-source.md``):

1. ``manifest`` option set (a URL relative to the base directory, or absolute): the tree is the
   manifest's content (``fluidfs.sources.http_listing``).  ``manifest: none`` disables step 2.
2. base URL is a directory (ends with ``/``, or redirects to ``.../`` or serves an autoindex page):
   if ``<base>/fluidfs-manifest.json`` answers 200 it is used as in 1; otherwise (404/410/403)
   directories are listed by parsing their autoindex HTML, and the size/mtime/version of each
   file on a listing page comes from a HEAD per file, run in parallel (at most 16 at a time).
3. otherwise the base URL is a single file: the root is a directory holding exactly that file,
   named by the URL's last path component.

Versions: a strong ``ETag`` (quotes stripped) → reads send ``If-Match``; else ``lm:<Last-Modified>-
<size>`` → reads send ``If-Range`` and check ``Last-Modified``/size of the answer; else
``sz:<size>`` (no validators: only the size is checked); manifest files without ``etag`` get
``mf:<size>-<mtime>`` (only the size is checked).  A changed object raises VersionChangedError.

Requests go through one :class:`~fluidfs.sources.http_client.HTTPClient` per source (a urllib3
pool, ``Accept-Encoding: identity``; ``max_attempts`` tries per request on connection errors,
timeouts and 502/503/504, each within the operation's deadline: a stat, a listing page with its
HEADs, a read).  Every request sent is counted (``counts_requests``), and the bytes a
``Range``-less server sends before the wanted range are counted as received.

URLs shown (``url()``, errors, logs) are redacted (:mod:`fluidfs.util.redact`): the signature of
a presigned single-file URL never appears; requests use the URL as given.

Caveats: autoindex listing costs one HEAD per file — use a manifest for large datasets.  In
autoindex mode ``stat`` does not check that a file is linked from its parent's listing.  A server
that ignores ``Range`` is handled (the answer is read only up to ``end`` and the connection
dropped), but every read then restarts from byte 0; a warning is logged once per source.  The
parallel HEADs use a short-lived ``ThreadPoolExecutor`` per listing page (this source is itself
called from worker threads, never from trio).  An ETag that happens to start with ``lm:``,
``sz:`` or ``mf:`` would be misread as the fallback token of that kind.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import urllib3
from urllib3.exceptions import HTTPError, ReadTimeoutError

from fluidfs.errors import (
    NotFoundError,
    SourceError,
    SourceTimeoutError,
    SpecError,
    UnavailableError,
    VersionChangedError,
)
from fluidfs.sources import call
from fluidfs.sources.base import Entry, Source
from fluidfs.sources.http_client import HTTPClient, discard, fail
from fluidfs.sources.http_listing import (
    MANIFEST_VERSION_PREFIX,
    ManifestTree,
    chunks,
    content_range,
    http_mtime,
    looks_like_autoindex,
    parse_autoindex,
    parse_manifest,
)
from fluidfs.spec.model import MountSpec
from fluidfs.util.etag import normalize_etag
from fluidfs.util.redact import redact_text, redact_url

log = logging.getLogger(__name__)

MANIFEST_NAME = "fluidfs-manifest.json"
PAGE_SIZE = 1000
HEAD_CONCURRENCY = 16
_Links = list[tuple[str, bool]]  # (name, is_dir) from an autoindex page
_CHUNK = 1 << 20


def _parse_bool(value: str) -> bool | None:
    v = value.strip().lower()
    return True if v in ("1", "true", "yes", "on") else False if v in ("0", "false", "no", "off") else None


class HTTPSource(Source):
    """A read-only tree behind an ``http(s)://`` base URL.  See the module docstring."""

    kind = "http"
    counts_requests = True
    #: the mount options ``from_mount`` accepts
    OPTIONS = frozenset({"manifest", "verify_ssl", "connect_timeout", "read_timeout", "max_attempts"})
    #: the credential names ``from_mount`` accepts
    CREDENTIALS = frozenset({"username", "password", "bearer_token"})

    def __init__(
        self,
        base_url: str,
        *,
        manifest: str | None = None,
        credentials: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        verify_ssl: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        pool_size: int = 32,
        timeout: float | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if max_attempts < 1 or connect_timeout <= 0 or read_timeout <= 0 or pool_size < 1:
            raise ValueError("max_attempts, pool_size and timeouts must be positive")
        self.base_url = base_url
        self.manifest = manifest
        creds = dict(credentials or {})
        unknown = set(creds) - self.CREDENTIALS
        if unknown:
            raise ValueError(f"unknown HTTP credentials: {', '.join(sorted(unknown))}")
        hdrs = {"User-Agent": "fluidfs", "Accept-Encoding": "identity"}
        hdrs.update(headers or {})
        if creds.get("bearer_token"):
            if creds.get("username"):
                raise ValueError("give either username/password or bearer_token, not both")
            hdrs["Authorization"] = f"Bearer {creds['bearer_token']}"
        elif creds.get("username"):
            pair = f"{creds['username']}:{creds.get('password', '')}".encode()
            hdrs["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif creds.get("password"):
            raise ValueError("password given without username")
        self._http = HTTPClient(
            hdrs,
            verify_ssl=verify_ssl,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
            pool_size=pool_size,
            timeout=timeout,
        )
        self._lock = threading.Lock()
        self._mode = ""  # "" until discovered, then "manifest" | "autoindex" | "file"
        self._root = base_url if base_url.endswith("/") else base_url + "/"
        self._file_name = ""
        self._tree: ManifestTree | None = None
        self._warned_no_range = False

    @classmethod
    def from_mount(cls, mount: MountSpec, credentials: Mapping[str, str], timeout: float | None = None) -> HTTPSource:
        """Build from a Dataset mount; ``credentials`` are resolved values (never logged).

        A bad option value or contradictory credentials raise ``SpecError`` naming
        ``options.<key>`` / ``credentials``; unknown option keys and credential names are logged
        as warnings and ignored (as for S3 mounts).  Empty credential values count as absent.
        """
        doc = f"mount {mount.name!r}"
        opts = dict(mount.options)
        for key in opts:
            if key not in cls.OPTIONS:  # like the S3 options: Fluid Datasets carry other runtimes' keys
                log.warning("mount %r: ignoring unknown http option %r", mount.name, key)
        for key in credentials:
            if key not in cls.CREDENTIALS:
                log.warning(
                    "mount %r: ignoring credential %r (http takes username, password, bearer_token)", mount.name, key
                )
        credentials = {k: v for k, v in credentials.items() if k in cls.CREDENTIALS and v}
        if credentials.get("bearer_token") and credentials.get("username"):
            raise SpecError(doc, "credentials", "give either username/password or bearer_token, not both")
        if credentials.get("password") and not credentials.get("username"):
            raise SpecError(doc, "credentials", "password given without username")
        kw: dict[str, object] = {}
        if "manifest" in opts:
            kw["manifest"] = opts["manifest"].strip() or "none"
        if "verify_ssl" in opts:
            flag = _parse_bool(opts["verify_ssl"])
            if flag is None:
                raise SpecError(doc, "options.verify_ssl", f"expected true or false, got {opts['verify_ssl']!r}")
            kw["verify_ssl"] = flag
        for key in ("connect_timeout", "read_timeout"):
            if key in opts:
                try:
                    kw[key] = value = float(opts[key])
                except ValueError:
                    value = -1.0
                if not 0 < value < 1e6:
                    raise SpecError(doc, f"options.{key}", f"expected a positive number of seconds, got {opts[key]!r}")
        if "max_attempts" in opts:
            try:
                attempts = int(opts["max_attempts"])
            except ValueError:
                attempts = 0
            if not 1 <= attempts <= 100:
                raise SpecError(
                    doc, "options.max_attempts", f"expected an integer 1..100, got {opts['max_attempts']!r}"
                )
            kw["max_attempts"] = attempts
        if mount.scheme.lower() not in ("http", "https"):
            raise SpecError(doc, "mountPoint", f"not an http(s) URL: {redact_url(mount.url)}")
        return cls(mount.url, credentials=credentials, timeout=timeout, **kw)  # type: ignore[arg-type]

    # ---- HTTP helpers ---------------------------------------------------------------------------

    @staticmethod
    def _redirected_to_dir(resp: urllib3.BaseHTTPResponse, url: str) -> bool:
        final = (resp.geturl() or "").split("?")[0]
        return final.endswith("/") and not urllib.parse.urlsplit(url).path.endswith("/")

    def _file_entry(self, url: str, name: str) -> Entry:
        """HEAD ``url`` (falling back to a 1-byte GET) and build its entry; a redirect to
        ``url/`` makes it a directory.  Raises the matching SourceError on failure."""
        resp = self._http.request("HEAD", url)
        headers = resp.headers
        size: int | None = None
        if resp.status == 200 and self._redirected_to_dir(resp, url):
            return Entry(name=name, is_dir=True)
        if resp.status == 200 and headers.get("Content-Length", "").isdigit():
            size = int(headers["Content-Length"])
        elif resp.status in (200, 405, 501):  # no length, or HEAD not allowed: ask for one byte
            got = self._http.request("GET", url, {"Range": "bytes=0-0"}, preload=False)
            try:
                cr = content_range(got.headers.get("Content-Range"))
                if got.status in (206, 416) and cr is not None:
                    size = cr[2]
                elif got.status == 200 and got.headers.get("Content-Length", "").isdigit():
                    size = int(got.headers["Content-Length"])
                elif got.status >= 300:
                    raise fail(got, url, "GET")
                headers = got.headers
            finally:
                discard(got)
        else:
            raise fail(resp, url, "HEAD")
        if size is None:
            raise SourceError("server does not tell the object's size", redact_url(url))
        etag = normalize_etag(headers.get("ETag"))
        last_mod = headers.get("Last-Modified")
        version = etag or (f"lm:{last_mod}-{size}" if last_mod else f"sz:{size}")
        return Entry(name=name, is_dir=False, size=size, mtime=http_mtime(last_mod), version=version)

    # ---- discovery ----------------------------------------------------------------------------

    def _ensure(self) -> None:
        if self._mode:
            return
        with self._lock:
            if not self._mode:
                self._discover()

    def _discover(self) -> None:
        if self.manifest is not None and self.manifest.lower() != "none":
            murl = urllib.parse.urljoin(self._root, self.manifest)
            self._tree = self._load_manifest(murl, required=True)
            self._mode = "manifest"
            return
        if not self.base_url.endswith("/"):
            if not self._base_is_directory():
                self._root = self.base_url.rsplit("/", 1)[0] + "/"
                self._file_name = urllib.parse.unquote(urllib.parse.urlsplit(self.base_url).path.rsplit("/", 1)[1])
                if not self._file_name:
                    raise SourceError("cannot name the single file", redact_url(self.base_url))
                self._mode = "file"
                log.debug("http source %s: single file %r", redact_url(self.base_url), self._file_name)
                return
        if self.manifest is None:
            self._tree = self._load_manifest(self._root + MANIFEST_NAME, required=False)
            if self._tree is not None:
                self._mode = "manifest"
                return
        self._mode = "autoindex"
        log.debug("http source %s: autoindex listing", redact_url(self._root))

    def _base_is_directory(self) -> bool:
        """For a base URL without a trailing slash: does it name a directory?"""
        resp = self._http.request("HEAD", self.base_url)
        if resp.status in (405, 501):
            return False  # HEAD not allowed: a file server for single objects
        if resp.status != 200:
            raise fail(resp, self.base_url, "HEAD")
        if (resp.geturl() or "").split("?")[0].endswith("/"):
            return True  # redirected to the directory
        if "html" not in resp.headers.get("Content-Type", "").lower():
            return False
        page = self._http.request("GET", self.base_url)
        if page.status != 200:
            raise fail(page, self.base_url, "GET")
        return looks_like_autoindex(page.data.decode("utf-8", "replace"))

    def _load_manifest(self, url: str, required: bool) -> ManifestTree | None:
        resp = self._http.request("GET", url)
        if resp.status != 200:
            if not required and resp.status in (403, 404, 410):
                return None
            raise fail(resp, url, "manifest")
        tree = parse_manifest(resp.data, redact_url(url))
        log.info("http source %s: manifest %s with %d files", redact_url(self._root), redact_url(url), tree.files)
        return tree

    # ---- Source interface ---------------------------------------------------------------------

    def url(self, path: str) -> str:
        return redact_url(self._target(path))

    def _target(self, path: str) -> str:
        """The URL requests for ``path`` go to (not redacted: never show it)."""
        if self._mode == "file" and path == self._file_name:
            return self.base_url
        return self._root + urllib.parse.quote(path)

    def stat(self, path: str) -> Entry:
        self._ensure()
        if path == "":
            return Entry(name="", is_dir=True)
        if self._tree is not None:
            entry = self._tree.stat(path)
            if entry is None:
                raise NotFoundError("not in manifest", self.url(path))
            return entry
        if self._mode == "file":
            if path != self._file_name:
                raise NotFoundError("no such file", self.url(path))
            return self._file_entry(self.base_url, path)
        return self._stat_remote(path)

    def _stat_remote(self, path: str) -> Entry:
        name = path.rpartition("/")[2]
        url = self._target(path)
        try:
            return self._file_entry(url, name)
        except NotFoundError:
            pass  # some servers want the slash for directories
        resp = self._http.request("HEAD", url + "/")
        if resp.status == 200:
            return Entry(name=name, is_dir=True)
        raise fail(resp, url, "HEAD")

    def list(self, path: str) -> Iterator[list[Entry]]:
        self._ensure()
        if self._tree is not None:
            children = self._tree.children(path)
            if children is None:
                raise NotFoundError("not a directory in manifest", self.url(path))
            yield from chunks(children, PAGE_SIZE)
            return
        if self._mode == "file":
            if path != "":
                raise NotFoundError("not a directory", self.url(path))
            yield [self._file_entry(self.base_url, self._file_name)]
            return
        links = self._fetch_listing(path)
        prefix = f"{path}/" if path else ""
        for page in chunks(links, PAGE_SIZE):
            files = [name for name, is_dir in page if not is_dir]
            found: dict[str, Entry | None] = {}
            if files:
                # each HEAD runs in this operation's context (its deadline and request count)
                jobs = [(contextvars.copy_context(), prefix + n) for n in files]
                with ThreadPoolExecutor(max_workers=min(HEAD_CONCURRENCY, len(files))) as pool:
                    for name, entry in zip(
                        files, pool.map(lambda j: j[0].run(self._stat_child, j[1]), jobs), strict=True
                    ):
                        found[name] = entry
            out: list[Entry] = []
            for name, is_dir in page:
                entry = Entry(name=name, is_dir=True) if is_dir else found.get(name)
                if entry is not None:
                    out.append(entry)
            if out:
                yield out

    def _stat_child(self, path: str) -> Entry | None:
        try:
            return self._stat_remote(path)
        except NotFoundError:
            log.debug("http source %s: listed %r vanished", redact_url(self._root), path)
            return None

    def _fetch_listing(self, path: str) -> _Links:
        dir_url = self._root + (urllib.parse.quote(path) + "/" if path else "")
        resp = self._http.request("GET", dir_url)
        if resp.status != 200:
            raise fail(resp, dir_url, "listing")
        ctype = resp.headers.get("Content-Type", "")
        if "html" not in ctype.lower():
            raise NotFoundError("not a directory (no autoindex page)", redact_url(dir_url))
        m = re.search(r"charset=([\w-]+)", ctype, re.I)
        try:
            text = resp.data.decode(m.group(1) if m else "utf-8", "replace")
        except LookupError:
            text = resp.data.decode("utf-8", "replace")
        return parse_autoindex(text, dir_url)

    def check(self) -> None:
        self._ensure()
        if self._mode == "autoindex":
            self._fetch_listing("")

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        if end <= start:
            return b""
        self._ensure()
        if self._mode == "file":
            if path != self._file_name:
                raise NotFoundError("no such file", self.url(path))
        elif self._tree is not None:
            entry = self._tree.stat(path)
            if entry is None or entry.is_dir:
                raise NotFoundError("no such file in manifest", self.url(path))
        url = self._target(path)
        etag, last_mod, size = "", "", None
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if version.startswith("lm:"):
            last_mod, _, size_s = version[3:].rpartition("-")
            size = int(size_s) if size_s.isdigit() else None
            headers["If-Range"] = last_mod
        elif version.startswith(("sz:", MANIFEST_VERSION_PREFIX)):
            size_s = version[3:].partition("-")[0]
            size = int(size_s) if size_s.isdigit() else None
        elif version:
            etag = version
            headers["If-Match"] = f'"{version}"'
        resp = self._http.request("GET", url, headers, preload=False)
        try:
            return self._read_response(resp, redact_url(url), start, end, etag, last_mod, size)
        except (ReadTimeoutError, TimeoutError) as exc:
            resp.close()
            raise SourceTimeoutError(f"reading [{start}, {end}): no answer ({exc})", redact_url(url)) from None
        except (HTTPError, OSError) as exc:
            resp.close()
            raise UnavailableError(
                f"reading [{start}, {end}) failed ({redact_text(str(exc))})", redact_url(url)
            ) from None
        finally:
            discard(resp)

    def _read_response(
        self, resp: urllib3.BaseHTTPResponse, url: str, start: int, end: int, etag: str, last_mod: str, size: int | None
    ) -> bytes:
        status = resp.status
        if status == 412:
            raise VersionChangedError("object changed (If-Match failed)", url)
        if status == 416:
            cr = content_range(resp.headers.get("Content-Range"))
            if size is not None and start < size and cr is not None and cr[2] != size:
                raise VersionChangedError("object changed (it is shorter now)", url)
            return b""
        if status not in (200, 206):
            raise fail(resp, url, f"GET [{start}, {end})")
        if status == 206:
            cr = content_range(resp.headers.get("Content-Range"))
            if cr is None or cr[0] != start or cr[1] is None:
                raise SourceError(f"bad Content-Range {resp.headers.get('Content-Range')!r}", url)
            total = cr[2]
        else:
            length = resp.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
        got_etag = normalize_etag(resp.headers.get("ETag"))
        got_lm = resp.headers.get("Last-Modified")
        if etag and got_etag and got_etag != etag:
            raise VersionChangedError("object changed (ETag differs)", url)
        if last_mod and got_lm != last_mod and (got_lm or status == 200):
            raise VersionChangedError("object changed (Last-Modified differs)", url)
        if size is not None and total is not None and total != size:
            raise VersionChangedError(f"object changed (size {total}, expected {size})", url)
        if status == 206:
            data = resp.read()
            call.count_bytes(len(data) - (end - start))
            return data[: end - start]
        # 200 for a range request: the server ignores Range.  Skip to start, stop at end.
        if not self._warned_no_range:
            self._warned_no_range = True
            log.warning("http source %s ignores Range requests: reads fetch from byte 0 (slow)", redact_url(self._root))
        pos = 0
        while pos < start:
            skipped = len(resp.read(min(_CHUNK, start - pos)))
            if not skipped:
                return b""
            pos += skipped
            call.count_bytes(skipped)
        out = bytearray()
        while len(out) < end - start:
            chunk = resp.read(min(_CHUNK, end - start - len(out)))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def close(self) -> None:
        self._http.close()
