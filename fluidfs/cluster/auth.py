"""Peer request authentication: HMAC-SHA256 with a cluster secret, bounded clock skew, nonces.

Every peer request carries::

    X-Fluidfs-From:  <member id of the sender>   (informational; logged)
    X-Fluidfs-Time:  <unix time, seconds with milliseconds>
    X-Fluidfs-Nonce: <24 hex digits, random>
    Authorization:   Fluidfs-HMAC-SHA256 <hex HMAC-SHA256 of the canonical string>

The canonical string is ``FLUIDFS1``, the method, the request target exactly as sent (path and
query: dataset, url, version, block size, index, mode, hops), the sender id, the time, the nonce,
the body length and the body's checksum header (pushes), one per line.  So no field of a request
can be changed without the secret.  The receiver checks, in this order: the headers are present
and well formed, ``|now - time| <= max_skew``, the HMAC (``hmac.compare_digest``: constant time),
and that the nonce was not seen within the skew window (replay).  Any failure is a
:class:`~fluidfs.errors.PeerRequestError` with status 401; the server logs the first failure of
each peer address and then at most one line per ``log_interval`` with the count suppressed.

The secret comes from a file (a Kubernetes Secret mounted as a volume is a file), else from the
``FLUIDFS_PEER_SECRET`` environment variable; it must be at least 16 bytes.  It is never logged.

Caveats: requests are authenticated, responses are not, and nothing is encrypted: a peer network
that an attacker can write to needs a network policy or a mesh with mTLS.  Replay protection
remembers at most ``max_nonces`` nonces (the oldest are forgotten first, which only matters above
``max_nonces / (2 * max_skew)`` requests per second); a replayed *push* could at worst re-offer a
block that the receiver verifies anyway.  Clocks of members must agree within ``max_skew``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from fluidfs.errors import ConfigError, PeerRequestError

log = logging.getLogger(__name__)

__all__ = ["PeerAuth", "FailureLog", "load_secret", "SECRET_ENV", "MIN_SECRET_BYTES"]

SECRET_ENV = "FLUIDFS_PEER_SECRET"
MIN_SECRET_BYTES = 16
SCHEME = "Fluidfs-HMAC-SHA256"
H_FROM = "x-fluidfs-from"
H_TIME = "x-fluidfs-time"
H_NONCE = "x-fluidfs-nonce"
H_AUTH = "authorization"


def load_secret(file: str | None = None, env: str = SECRET_ENV) -> bytes:
    """The cluster secret: the content of ``file`` (trailing newline stripped), else ``$env``.

    Raises ConfigError (never quoting the secret).
    """
    if file:
        try:
            with open(file, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"peer secret file {file}: {exc.strerror or exc}") from None
        secret = raw.rstrip(b"\r\n")
        where = f"peer secret file {file}"
    else:
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(f"no peer secret: give a secret file or set {env}")
        secret = value.encode("utf-8", "surrogateescape")
        where = f"${env}"
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{where}: the peer secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def _canonical(method: str, target: str, sender: str, ts: str, nonce: str, length: int, crc: str) -> bytes:
    text = "\n".join(("FLUIDFS1", method.upper(), target, sender, ts, nonce, str(length), crc))
    return text.encode("utf-8", "surrogateescape")


class PeerAuth:
    """Signs outgoing and verifies incoming peer requests with one cluster secret.

    Used from the trio thread (server) and from worker threads (client ``sign`` only);
    ``verify`` keeps the nonce memory and must be called from one thread.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        member_id: str = "",
        max_skew: float = 30.0,
        max_nonces: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the peer secret must be at least {MIN_SECRET_BYTES} bytes")
        if not (max_skew > 0 and math.isfinite(max_skew)):
            raise ConfigError(f"peer clock skew bound must be a positive number of seconds, got {max_skew}")
        self._key = secret
        self.member_id = member_id or "-"
        self.max_skew = max_skew
        self._max_nonces = max_nonces
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> expiry (wall clock)

    def _mac(self, msg: bytes) -> str:
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str, *, length: int = 0, crc: str = "") -> dict[str, str]:
        """Headers that authenticate a request (``length``/``crc``: the body's, for pushes)."""
        ts = f"{self._clock():.3f}"
        nonce = secrets.token_hex(12)
        mac = self._mac(_canonical(method, target, self.member_id, ts, nonce, length, crc))
        return {H_FROM: self.member_id, H_TIME: ts, H_NONCE: nonce, H_AUTH: f"{SCHEME} {mac}"}

    def verify(self, method: str, target: str, headers: Mapping[str, str], *, length: int = 0, crc: str = "") -> str:
        """Check a request's authentication headers (lower-case names); return the sender id.

        Raises PeerRequestError(401, reason="unauthorized") naming what failed.
        """
        auth = headers.get(H_AUTH, "")
        ts = headers.get(H_TIME, "")
        nonce = headers.get(H_NONCE, "")
        sender = headers.get(H_FROM, "")
        if not auth:
            raise PeerRequestError(401, "missing Authorization header", "unauthorized")
        scheme, _, mac = auth.partition(" ")
        if scheme != SCHEME or len(mac) != 64:
            raise PeerRequestError(401, "malformed Authorization header", "unauthorized")
        if not ts or not nonce or len(nonce) > 64 or len(sender) > 63:
            raise PeerRequestError(401, "missing or malformed time/nonce/sender headers", "unauthorized")
        try:
            t = float(ts)
        except ValueError:
            raise PeerRequestError(401, "malformed time header", "unauthorized") from None
        now = self._clock()
        if not math.isfinite(t) or abs(now - t) > self.max_skew:
            raise PeerRequestError(
                401, f"request time is {now - t:+.1f} s off (allowed: {self.max_skew:.0f} s)", "unauthorized"
            )
        expected = self._mac(_canonical(method, target, sender, ts, nonce, length, crc))
        if not hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii", "replace")):
            raise PeerRequestError(401, "bad signature (wrong secret or altered request)", "unauthorized")
        self._prune(now)
        if nonce in self._seen:
            raise PeerRequestError(401, "replayed request (nonce already seen)", "unauthorized")
        self._seen[nonce] = t + self.max_skew
        while len(self._seen) > self._max_nonces:
            self._seen.popitem(last=False)
        return sender

    def _prune(self, now: float) -> None:
        while self._seen:
            nonce, expiry = next(iter(self._seen.items()))
            if expiry >= now - 1.0:
                break
            del self._seen[nonce]


class FailureLog:
    """Log a peer's failures once, then at most once per ``interval`` with a suppressed count.

    Keyed by a bounded label (the peer's IP address); remembers at most ``max_peers`` keys.
    """

    def __init__(self, interval: float = 60.0, max_peers: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.max_peers = max_peers
        self._clock = clock
        self._state: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (last logged, suppressed)

    def should_log(self, key: str) -> tuple[bool, int]:
        """(log now?, failures suppressed since the last line)."""
        now = self._clock()
        last = self._state.get(key)
        if last is not None and now - last[0] < self.interval:
            self._state[key] = (last[0], last[1] + 1)
            return False, 0
        suppressed = last[1] if last is not None else 0
        self._state[key] = (now, 0)
        self._state.move_to_end(key)
        while len(self._state) > self.max_peers:
            self._state.popitem(last=False)
        return True, suppressed

    def warn(self, key: str, msg: str, *args: object) -> bool:
        ok, suppressed = self.should_log(key)
        if ok:
            if suppressed:
                log.warning(msg + " (%d more since the last report)", *args, suppressed)
            else:
                log.warning(msg, *args)
        return ok
