"""Unreachable endpoints for tests: a TCP listener that accepts and never answers, and a proxy
that forwards to a real server until it is switched into that state.

An endpoint that refuses connections fails fast; one that accepts them and then says nothing is
the case that hangs clients (a firewall dropping replies, a stuck server), so that is what both
simulate.  Both run threads on 127.0.0.1 and close every socket on ``close()``.
"""

from __future__ import annotations

import socket
import threading


class BlackHole:
    """Accepts TCP connections on 127.0.0.1 and never reads or writes a byte."""

    def __init__(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        self._srv.close()
        for c in self._held:
            c.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SwitchableProxy:
    """Forwards TCP connections to ``upstream`` (host, port) until ``black_hole`` is set; from
    then on it forwards nothing, on new and existing connections alike."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.black_hole = threading.Event()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            with self._lock:
                self._socks.append(client)
            if self.black_hole.is_set():
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=10)
                up.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.append(up)
            for src, dst in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if self.black_hole.is_set():
                self._closed.wait()  # swallow it and never answer
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self._srv.close()
        with self._lock:
            for s in self._socks:
                s.close()

    def __enter__(self) -> SwitchableProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
