"""A node, its containers and its pods, simulated with Linux namespaces (root only).

- :func:`shared_dir` makes a directory an ``rshared`` mount point, as the kubelet directory is on
  a node (and as a ``Bidirectional`` hostPath is shared with a container).
- :class:`Container` runs a command as PID 1 of a new PID namespace with its own mount namespace,
  like a container: when PID 1 exits the kernel kills everything else in it.  Its mounts keep the
  host's propagation (``--propagation unchanged``: a ``Bidirectional`` hostPath), except for the
  directories listed as ``private`` (a hostPath without mount propagation) and ``/proc``.
- :class:`PodReader` is a pod: a process in its own mount namespace (``--propagation slave``)
  that sees a volume the way a container with ``mountPropagation: HostToContainer`` does (the
  target ``rbind``-mounted and made ``rslave``) and reads the whole dataset in a loop, logging
  one JSON line per round: ``{"t": ..., "ok": true}`` or ``{"t": ..., "ok": false, "error": ...}``.

Every helper stops what it started; :func:`release_dir` undoes :func:`shared_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluidfs.util.mounts import MountEntry, mount_table

ROOT = Path(__file__).resolve().parents[2]
NAMESPACES_MISSING = ""
if os.geteuid() != 0:
    NAMESPACES_MISSING = "mount and PID namespaces need root"
elif not shutil.which("unshare"):
    NAMESPACES_MISSING = "unshare (util-linux) is not installed"

needs_namespaces = pytest.mark.skipif(bool(NAMESPACES_MISSING), reason=NAMESPACES_MISSING or "namespaces available")


def shared_dir(path: Path) -> Path:
    """Make ``path`` an rshared mount point (a bind of itself); returns it."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "--make-rshared", str(path)], check=True)
    return path


def release_dir(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _ns(pid: int, kind: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


class Container:
    """``argv`` as PID 1 of a new PID + mount namespace (see the module docstring)."""

    def __init__(self, argv: list[str], log_path: Path, *, private: list[str] | None = None, env: dict[str, str]):
        self.argv = argv
        self.log_path = log_path
        self.private = private or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0  # PID 1 of the container, as the host sees it

    def start(self) -> Container:
        setup = " && ".join(
            ["mount --make-private /proc", "mount -t proc proc /proc"]
            + [f"mount --make-rprivate '{d}'" for d in self.private]
        )
        cmd = [
            "unshare",
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "unchanged",
            "--",
            "sh",
            "-c",
            f'{setup} && exec "$@"',
            "container",
            *self.argv,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + 10
        while not self.pid1:
            kids = _children(self.proc.pid)
            if kids:
                self.pid1 = kids[0]
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"container did not start: {self.log_tail()}")
            else:
                time.sleep(0.02)
        return self

    def processes(self) -> list[int]:
        """Host pids of every process in the container (PID 1 first)."""
        ns = _ns(self.pid1, "pid")
        if not ns:
            return []
        out = [self.pid1]
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.pid1 and _ns(int(entry), "pid") == ns:
                out.append(int(entry))
        return out

    def host_pid(self, ns_pid: int) -> int | None:
        """The host pid of the container's process ``ns_pid``."""
        for pid in self.processes():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                    return pid
        return None

    def find(self, needle: str) -> list[int]:
        """Host pids of the container's processes whose command line contains ``needle``."""
        out = []
        for pid in self.processes():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                out.append(pid)
        return out

    def mounts(self) -> list[MountEntry]:
        """The container's own mount table."""
        return mount_table(f"/proc/{self.pid1}/mountinfo")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal PID 1 and wait for the container to end (SIGKILL if it takes too long)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.pid1, sig)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid1, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def digests(tree: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in tree.items()}


class PodReader:
    """A pod reading ``target`` through its own copy, as ``python -m tests.support.namespaces``.

    ``propagation`` is that of the container's volumeMount: ``rslave`` for ``HostToContainer``,
    ``rprivate`` for the default (``None``)."""

    def __init__(
        self, target: str, want: dict[str, bytes], workdir: Path, name: str, propagation: str = "rslave"
    ) -> None:
        self.target = target
        self.propagation = propagation
        self.dir = workdir / "pods-ns" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rootfs_data = self.dir / "data"
        self.rootfs_data.mkdir(exist_ok=True)
        self.want_file = self.dir / "want.json"
        self.want_file.write_text(json.dumps(digests(want)))
        self.log = self.dir / "reads.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PodReader:
        script = (
            f"mount --rbind '{self.target}' '{self.rootfs_data}'"
            f" && mount --make-{self.propagation} '{self.rootfs_data}'"
            ' && exec "$@"'
        )
        cmd = [
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "--",
            "sh",
            "-c",
            script,
            "pod",
            sys.executable,
            "-m",
            "tests.support.namespaces",
            str(self.rootfs_data),
            str(self.want_file),
            str(self.log),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(self.dir / "pod.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
        self.wait_ok_after(0.0, timeout=30)
        return self

    def rounds(self) -> list[dict[str, object]]:
        try:
            lines = self.log.read_text().splitlines()
        except OSError:
            return []
        out = []
        for ln in lines:
            try:
                out.append(json.loads(ln))
            except ValueError:
                pass  # a line being written
        return out

    def errors(self, since: float = 0.0) -> list[dict[str, object]]:
        return [r for r in self.rounds() if not r["ok"] and float(r["t"]) >= since]  # type: ignore[arg-type]

    def wait_ok_after(self, t: float, timeout: float, rounds: int = 3) -> None:
        """Wait (bounded) until ``rounds`` consecutive good rounds started after ``t``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"pod reader exited: {(self.dir / 'pod.log').read_text(errors='replace')}")
            tail = [r for r in self.rounds() if float(r["t"]) >= t][-rounds:]  # type: ignore[arg-type]
            if len(tail) == rounds and all(r["ok"] for r in tail):
                return
            time.sleep(0.1)
        last = self.rounds()[-3:]
        raise AssertionError(f"pod at {self.target} did not read the dataset correctly again: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _read_loop(root: str, want_file: str, log_file: str) -> None:
    """The pod's program: read every file of ``root`` and compare with the digests, forever."""
    want = json.loads(Path(want_file).read_text())
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with open(log_file, "a", buffering=1) as log:
        while not stop:
            t = time.time()
            try:
                os.statvfs(root)  # always reaches the FUSE daemon
                got = {}
                for rel in want:
                    with open(os.path.join(root, rel), "rb") as f:
                        got[rel] = hashlib.sha256(f.read()).hexdigest()
                ok, err = got == want, "" if got == want else "wrong bytes"
            except OSError as e:
                ok, err = False, f"{e.strerror} ({e.errno})"
            log.write(json.dumps({"t": t, "ok": ok, **({} if ok else {"error": err})}) + "\n")
            time.sleep(0.05)


if __name__ == "__main__":
    _read_loop(*sys.argv[1:4])
