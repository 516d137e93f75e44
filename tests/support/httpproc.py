"""A RangeHTTPServer in a child process, so a test can kill it or freeze it like a real outage.

``HTTPServerProcess(root_dir)`` serves ``root_dir`` on ``127.0.0.1`` (autoindex, Range, ETag) from
``python -m tests.support.httpproc ROOT PORT``; ``kill()`` is SIGKILL (connections refused),
``pause()`` is SIGSTOP (connections are accepted by the kernel, requests hang until ``resume()``),
``restart()`` serves again on the same port.  It is a context manager and ``stop()`` always
resumes and reaps the child.

Caveats: test infrastructure only; the port is chosen by the first start and kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import TracebackType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class HTTPServerProcess:
    """One RangeHTTPServer child process (see the module docstring)."""

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root_dir)
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> HTTPServerProcess:
        if self._proc is not None:
            return self
        env = {**os.environ, "PYTHONPATH": ROOT}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.httpproc", self.root, str(self.port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            proc.wait()
            raise RuntimeError(f"HTTP server process did not start: {line!r}")
        self.port = int(line)
        self._proc = proc
        return self

    def kill(self) -> None:
        """An outage: the process is gone, connections are refused."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def pause(self) -> None:
        """A hung server: connections are accepted, nothing is answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except RuntimeError:  # the port may linger for a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.kill()

    def __enter__(self) -> HTTPServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str]) -> None:
    from tests.support.httpserver import RangeHTTPServer

    server = RangeHTTPServer(argv[0], port=int(argv[1])).start()
    print(server.port, flush=True)
    while True:  # until killed
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1:])
