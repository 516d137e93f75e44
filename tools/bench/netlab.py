"""The cluster benchmark's network: one bridge, one shaped network namespace per member, a capped source.

Layout (``N`` = a /24 out of 10.198.0.0/16 picked from our pid)::

    root namespace: bridge fcb<pid> 10.198.N.1 ── tc tbf (SOURCE cap) on the bridge device
        │  (the latency proxy in front of SeaweedFS listens on 10.198.N.1: every byte a member
        │   gets from the object store leaves through the bridge device's qdisc)
        ├── veth fc<pid>h<i> ── tbf (member i's download cap)
        │       └── netns fcl<pid>-<i>: fc<pid>n<i> 10.198.N.(10+i) ── tbf (member i's upload cap)
        └── ...

Members reach each other through the bridge (frames between two members are forwarded by the
bridge and pass the sender's upload and the receiver's download qdiscs, not the bridge device's),
and reach the store at the bridge address, so the source cap is shared by all members while each
member has its own full-duplex "NIC" of ``member_mbit``.  Processes are put into a member's
network namespace with ``nsenter --net=/run/netns/NAME`` — not ``ip netns exec``, which also
unshares the mount namespace, so a FUSE mount made inside it would be invisible to the host.

:meth:`ClusterNet.close` deletes every namespace (which removes its veth pair) and the bridge;
it is idempotent and safe on a half-built network.

Caveats: needs root and iproute2 (:func:`tools.bench.store.netns_available`).  The byte counters
of :meth:`ClusterNet.source_wire_bytes` count Ethernet frames (headers and retransmissions
included), so they run a few percent above payload bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass

BURST = "256kb"
LATENCY = "400ms"


def _run(cmd: list[str]) -> str:
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    out = p.stdout.decode(errors="replace").strip()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out}")
    return out


def _quiet(cmd: list[str]) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)


def _tbf(dev: str, mbit: float, ns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    _run([*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit:g}mbit",
          "burst", BURST, "latency", LATENCY])  # fmt: skip


def _sent_bytes(dev: str, ns: str | None = None) -> int:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    out = _run([*prefix, "tc", "-s", "qdisc", "show", "dev", dev])
    m = re.search(r"Sent (\d+) bytes", out)
    return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class Slot:
    """One member's place in the network."""

    index: int
    netns: str
    host_if: str
    ns_if: str
    ip: str

    def prefix(self) -> list[str]:
        """Command prefix that runs a program in this namespace (network only; mounts are shared)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}"]


class ClusterNet:
    """The bridge, the source cap and ``slots`` shaped member namespaces (see the module docstring)."""

    def __init__(self, slots: int, member_mbit: float, source_mbit: float, tag: int | None = None) -> None:
        self.tag = tag if tag is not None else os.getpid()
        self.subnet = f"10.198.{self.tag % 250 + 1}"
        self.bridge = f"fcb{self.tag}"
        self.host_ip = f"{self.subnet}.1"
        self.member_mbit = member_mbit
        self.source_mbit = source_mbit
        self.slots = [
            Slot(i, f"fcl{self.tag}-{i}", f"fc{self.tag}h{i}", f"fc{self.tag}n{i}", f"{self.subnet}.{10 + i}")
            for i in range(1, slots + 1)
        ]
        self._made_bridge = False
        self._made: list[Slot] = []

    def open(self) -> ClusterNet:
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self._made_bridge = True
            _run(["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            _tbf(self.bridge, self.source_mbit)
            for s in self.slots:
                _run(["ip", "netns", "add", s.netns])
                self._made.append(s)
                _run(["ip", "link", "add", s.host_if, "type", "veth", "peer", "name", s.ns_if])
                _run(["ip", "link", "set", s.ns_if, "netns", s.netns])
                _run(["ip", "link", "set", s.host_if, "master", self.bridge])
                _run(["ip", "link", "set", s.host_if, "up"])
                _run(["ip", "-n", s.netns, "addr", "add", f"{s.ip}/24", "dev", s.ns_if])
                _run(["ip", "-n", s.netns, "link", "set", s.ns_if, "up"])
                _run(["ip", "-n", s.netns, "link", "set", "lo", "up"])
                _tbf(s.host_if, self.member_mbit)  # what the member downloads
                _tbf(s.ns_if, self.member_mbit, ns=s.netns)  # what the member uploads
        except BaseException:
            self.close()
            raise
        return self

    def source_wire_bytes(self) -> int:
        """Bytes sent by the host to the members through the bridge (the source link), frames included."""
        return _sent_bytes(self.bridge)

    def member_wire_bytes(self, slot: Slot) -> tuple[int, int]:
        """(downloaded, uploaded) frame bytes of one member since the network was built."""
        return _sent_bytes(slot.host_if), _sent_bytes(slot.ns_if, ns=slot.netns)

    def close(self) -> None:
        for s in reversed(self._made):
            _quiet(["ip", "netns", "del", s.netns])
            _quiet(["ip", "link", "del", s.host_if])
        self._made.clear()
        if self._made_bridge:
            _quiet(["ip", "link", "del", self.bridge])
            self._made_bridge = False

    def __enter__(self) -> ClusterNet:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers(tag: int) -> list[str]:
    """Namespaces and links of the network ``tag`` that still exist (empty after a clean close)."""
    out: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
        out += [ln.split()[0] for ln in _run(["ip", "netns", "list"]).splitlines() if ln.startswith(f"fcl{tag}-")]
        out += [n for n in re.findall(r"^\d+: ([^:@]+)", _run(["ip", "-o", "link", "show"]), re.M)
                if n == f"fcb{tag}" or n.startswith(f"fc{tag}h")]  # fmt: skip
    return out
