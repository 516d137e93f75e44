"""A small threaded static-file HTTP server with Range, validators and autoindex, for tests and demos.

``RangeHTTPServer(root_dir)`` serves ``root_dir`` on ``127.0.0.1`` from a background thread:

- ``GET``/``HEAD`` of files with ``ETag`` (``"<mtime_ns hex>-<size hex>"``) and ``Last-Modified``;
- one byte range per request: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n`` → ``206`` with
  ``Content-Range``; unsatisfiable → ``416`` with ``Content-Range: bytes */size``; syntactically
  invalid or multi-range headers are ignored (full ``200``), as RFC 9110 allows;
- ``If-Match`` (``412`` on mismatch) and ``If-Range`` (entity tag or HTTP date; on mismatch the
  whole object is sent with ``200``);
- nginx-style autoindex pages for directories (``<a href="name/">name/</a>``, URL-quoted hrefs),
  ``301`` from ``/dir`` to ``/dir/``, ``404`` for anything missing or outside ``root_dir``.

It is a context manager; ``.url`` is ``http://127.0.0.1:PORT/``.  ``stop()`` closes the listening
socket *and* every open keep-alive connection (so clients really see an outage), and ``start()``
again binds the same port.  ``pause()`` makes it behave like a server frozen with SIGSTOP:
connections are still accepted, but no request gets an answer until ``resume()``; ``requests``
counts the requests received (answered or not).  Behaviour can be changed by subclassing ``RangeRequestHandler``
(``authorize`` hook, ``parse_range``) and passing ``handler_class=``.

Caveats: this is test/demo infrastructure, not a production web server.  It runs its own threads
(one accept loop plus one per connection) — acceptable here, never in the filesystem itself.
Multi-range requests, ``If-None-Match``/``If-Modified-Since`` (304) and content encodings are not
implemented.  Symlinks are followed only while they stay inside ``root_dir``.
"""

from __future__ import annotations

import email.utils
import html
import logging
import os
import socket
import stat as stat_mod
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its options and its open connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: RangeHTTPServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
            self.connections.clear()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RangeRequestHandler(BaseHTTPRequestHandler):
    """Serves files and autoindex pages of ``server.owner.root``.  Subclass to change behaviour."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
    server_version = "fluidfs-testserver/1"
    server: _Server

    # ---- hooks for subclasses -------------------------------------------------------------------

    def authorize(self) -> bool:
        """Return False after sending an error response to refuse the request.  Default: allow."""
        return True

    def parse_range(self, header: str | None, size: int) -> tuple[int, int] | None | str:
        """Parse a ``Range`` header: ``(first, last)`` inclusive, ``None`` to serve the whole
        object, or ``"unsatisfiable"``."""
        if not header:
            return None
        unit, _, spec = header.strip().partition("=")
        if unit.strip().lower() != "bytes" or "," in spec:
            return None
        first_s, dash, last_s = spec.strip().partition("-")
        first_s, last_s = first_s.strip(), last_s.strip()
        if not dash or not (first_s.isdigit() or last_s.isdigit()):
            return None
        if (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
            return None
        if not first_s:  # suffix: the last n bytes
            n = int(last_s)
            if n == 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        first = int(first_s)
        if last_s and int(last_s) < first:
            return None
        if first >= size:
            return "unsatisfiable"
        return first, min(int(last_s) if last_s else size - 1, size - 1)

    # ---- request handling -----------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.requests += 1
        owner.answering.wait()  # paused: hold the request (the client sees no answer)
        if not self.authorize():
            return
        url_path = urllib.parse.urlsplit(self.path).path
        fs_path = self._translate(url_path)
        if fs_path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            st = os.stat(fs_path)
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        if stat_mod.S_ISDIR(st.st_mode):
            if not url_path.endswith("/"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", url_path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if not self.server.owner.autoindex:
                self.send_error(HTTPStatus.FORBIDDEN)
                return
            self._send_index(fs_path, urllib.parse.unquote(url_path), head)
            return
        if not stat_mod.S_ISREG(st.st_mode):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self._send_file(fs_path, st, head)

    def _translate(self, url_path: str) -> str | None:
        """Map a URL path to a file system path inside the root, or None if it would escape."""
        root = self.server.owner.root
        parts = []
        for comp in urllib.parse.unquote(url_path, errors="surrogateescape").split("/"):
            if comp in ("", "."):
                continue
            if comp == ".." or "\0" in comp:
                return None
            parts.append(comp)
        candidate = os.path.join(root, *parts)
        real = os.path.realpath(candidate)
        if real != root and not real.startswith(root + os.sep):
            return None
        return candidate

    def _validators(self, st: os.stat_result) -> tuple[str | None, str | None]:
        owner = self.server.owner
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"' if owner.etag else None
        last_mod = email.utils.formatdate(st.st_mtime, usegmt=True) if owner.last_modified else None
        return etag, last_mod

    def _send_file(self, fs_path: str, st: os.stat_result, head: bool) -> None:
        size = st.st_size
        etag, last_mod = self._validators(st)
        if_match = self.headers.get("If-Match")
        if if_match is not None and not _etag_matches(if_match, etag):
            self.send_error(HTTPStatus.PRECONDITION_FAILED)
            return
        rng = self.parse_range(self.headers.get("Range"), size)
        if_range = self.headers.get("If-Range")
        if rng is not None and if_range is not None and not _if_range_holds(if_range, etag, last_mod, st):
            rng = None
        if rng == "unsatisfiable":
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(rng, tuple):
            first, last = rng
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            first, last = 0, size - 1
            self.send_response(HTTPStatus.OK)
        length = last - first + 1
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if etag:
            self.send_header("ETag", etag)
        if last_mod:
            self.send_header("Last-Modified", last_mod)
        self.end_headers()
        if head or length <= 0:
            return
        try:
            with open(fs_path, "rb") as f:
                self.connection.sendfile(f, first, length)
        except OSError as exc:  # client went away, or the file changed under us
            log.debug("send %s failed: %s", fs_path, exc)
            self.close_connection = True

    def _send_index(self, fs_path: str, url_path: str, head: bool) -> None:
        try:
            names = sorted(os.listdir(fs_path))
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        title = html.escape(f"Index of {url_path}")
        lines = [f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<h1>{title}</h1><hr><pre>"]
        lines.append('<a href="../">../</a>')
        for name in names:
            full = os.path.join(fs_path, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            shown = name + ("/" if is_dir else "")
            href = urllib.parse.quote(name, errors="surrogateescape") + ("/" if is_dir else "")
            date = email.utils.formatdate(st.st_mtime, usegmt=True)
            size = "-" if is_dir else str(st.st_size)
            text = html.escape(shown.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            lines.append(f'<a href="{href}">{text}</a> {date} {size:>20}')
        lines.append("</pre><hr></body>\r\n</html>\r\n")
        body = "\r\n".join(lines).encode("utf-8")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _split_etags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _etag_matches(if_match: str, etag: str | None) -> bool:
    """``If-Match`` uses strong comparison: weak tags never match."""
    if etag is None:
        return False
    tags = _split_etags(if_match)
    return "*" in tags or etag in tags


def _if_range_holds(if_range: str, etag: str | None, last_mod: str | None, st: os.stat_result) -> bool:
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return etag is not None and value == etag
    if last_mod is None:
        return False
    if value == last_mod:
        return True
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return False
    return int(when) == int(st.st_mtime)


class RangeHTTPServer:
    """Serve ``root_dir`` on 127.0.0.1 from a background thread.  See the module docstring."""

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        autoindex: bool = True,
        etag: bool = True,
        last_modified: bool = True,
        port: int = 0,
        handler_class: type[RangeRequestHandler] = RangeRequestHandler,
    ) -> None:
        self.root = os.path.realpath(os.fspath(root_dir))
        self.autoindex = autoindex
        self.etag = etag
        self.last_modified = last_modified
        self.port = port
        self.handler_class = handler_class
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.requests = 0
        self.answering = threading.Event()
        self.answering.set()

    def pause(self) -> None:
        """Stop answering (requests are received and held) until ``resume()``."""
        self.answering.clear()

    def resume(self) -> None:
        self.answering.set()

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> RangeHTTPServer:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self.port), self.handler_class, self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"RangeHTTPServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.debug("serving %s on %s", self.root, self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self.answering.set()  # let held requests finish
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> RangeHTTPServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
