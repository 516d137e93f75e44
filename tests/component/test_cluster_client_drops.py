"""The peer client against a peer that drops the connection in the middle of its answer (a member that is
leaving): every request ends in a ``PeerError`` — never an ``http.client`` or socket exception that would
escape into the caller's nursery (a handoff's pushes run in one)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import trio

from fluidfs.cache.base import BlockKey
from fluidfs.cluster.auth import PeerAuth
from fluidfs.cluster.client import PeerClient
from fluidfs.cluster.membership import Member
from fluidfs.errors import PeerError
from tests.support.cluster_harness import SECRET

KEY = BlockKey("s3://bucket/a.bin", "v1", 1 << 20, 0)
ANSWERS = {
    "truncated chunked body": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    "truncated body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
    "truncated error body": b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\nab",
}


class DroppingPeer:
    """Reads one request (headers and a Content-Length body), sends ``answer``, closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=sorted(ANSWERS))
def peer(request: pytest.FixtureRequest) -> Iterator[DroppingPeer]:
    p = DroppingPeer(ANSWERS[request.param])
    yield p
    p.close()


def test_every_request_to_a_peer_that_drops_mid_answer_is_a_peer_error(peer: DroppingPeer) -> None:
    async def main() -> None:
        client = PeerClient(PeerAuth(SECRET, member_id="me"), read_timeout=2.0, connect_timeout=1.0)
        member = Member.make("gone", f"127.0.0.1:{peer.port}")
        try:
            with pytest.raises(PeerError):
                await client.push(member, "ds", KEY, b"x" * 1000)
            with pytest.raises(PeerError):
                await client.info(member)
            try:  # a HEAD answer has no body: a complete head is an answer, anything else a PeerError
                await client.has(member, "ds", KEY)
            except PeerError:
                pass
        finally:
            client.close()

    trio.run(main)
