"""A misbehaving cluster member for tests: a raw trio TCP server that answers block requests badly.

Modes: ``truncate`` (valid headers, half the body, then close), ``corrupt`` (valid headers, one
body byte flipped), ``wrongkey`` (a valid block under another key's digest), ``silent`` (accepts
the connection and never answers), ``notfound`` (404).  The real bytes come from the files under
``data_root`` (block URLs are ``file://`` URLs of a LocalSource there), so headers are otherwise
exactly right.  ``requests`` counts the request heads received.
"""

from __future__ import annotations

import zlib

import trio

from fluidfs.cluster.protocol import INFO_PATH, parse_block_target, response_headers

MODES = ("truncate", "corrupt", "wrongkey", "silent", "notfound")


class BadPeer:
    def __init__(self, mode: str) -> None:
        assert mode in MODES
        self.mode = mode
        self.requests = 0
        self.address = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.address)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                if target == INFO_PATH and self.mode != "silent":  # members ask for its weight: none
                    await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                self.requests += target != INFO_PATH  # block requests only
                if self.mode == "silent":
                    await trio.sleep_forever()
                if self.mode == "notfound":
                    await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                key = parse_block_target(target).key
                path = key.url[len("file://") :]
                with open(path, "rb") as f:
                    f.seek(key.start)
                    body = f.read(key.block_size)
                headers = dict(response_headers(key, len(body), zlib.crc32(body), "bad"))
                if self.mode == "corrupt":
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                if self.mode == "wrongkey":
                    headers["x-fluidfs-key"] = "0" * 64
                raw = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                await stream.send_all(raw.encode())
                if self.mode == "truncate":
                    await stream.send_all(body[: len(body) // 2])
                    return
                await stream.send_all(body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()
