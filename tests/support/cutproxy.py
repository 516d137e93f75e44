"""A TCP relay that breaks HTTP response bodies: it forwards each connection's first response
head and ``body_bytes`` bytes of its body, then closes the connection (``mode="close"``: a
truncated body) or forwards nothing more and holds it open (``mode="stall"``: a server that stops
sending mid-body).  Requests are forwarded untouched.  Threads on 127.0.0.1; ``close()`` closes
every socket.
"""

from __future__ import annotations

import socket
import threading


class CutProxy:
    """Relays to ``upstream`` (host, port), cutting every response body after ``body_bytes``."""

    def __init__(self, upstream: tuple[str, int], body_bytes: int, mode: str = "close") -> None:
        if mode not in ("close", "stall"):
            raise ValueError(f"mode must be close or stall (got {mode!r})")
        self.upstream = upstream
        self.body_bytes = body_bytes
        self.mode = mode
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="cutproxy", daemon=True).start()

    def _keep(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.append(s)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._keep(client)
            self._keep(server)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._cut, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass

    def _cut(self, src: socket.socket, dst: socket.socket) -> None:
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = src.recv(65536)
                if not chunk:
                    return
                head += chunk
            end = head.index(b"\r\n\r\n") + 4
            allowed = end + self.body_bytes
            while len(head) < allowed:
                chunk = src.recv(65536)
                if not chunk:
                    break
                head += chunk
            dst.sendall(head[:allowed])
            if self.mode == "close":
                dst.shutdown(socket.SHUT_RDWR)
                dst.close()
            # "stall": send nothing more; the socket stays open until close()
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._srv.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
