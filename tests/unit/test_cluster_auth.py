"""Peer authentication (HMAC over the request, skew, replay), secret loading, rate-limited
failure logs, and the circuit breaker's states."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fluidfs.cluster.auth import MIN_SECRET_BYTES, SECRET_ENV, FailureLog, PeerAuth, load_secret
from fluidfs.cluster.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Breakers
from fluidfs.errors import ConfigError, PeerRequestError

SECRET = b"s" * 32
TARGET = "/v1/block/ds?url=file%3A%2F%2F%2Fd%2Fx&version=v1&bs=1048576&index=3&mode=fetch&hops=1"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_signed_requests_verify_once() -> None:
    clock = Clock()
    a = PeerAuth(SECRET, member_id="a", clock=clock)
    b = PeerAuth(SECRET, member_id="b", clock=clock)
    h = a.sign("GET", TARGET)
    assert b.verify("GET", TARGET, h) == "a"
    with pytest.raises(PeerRequestError, match="replayed") as err:
        b.verify("GET", TARGET, h)
    assert err.value.status == 401 and err.value.reason == "unauthorized"
    p = a.sign("PUT", TARGET, length=10, crc="0000abcd")
    assert b.verify("PUT", TARGET, p, length=10, crc="0000abcd") == "a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.pop("authorization"), "missing Authorization"),
        (lambda h: h.update(authorization="Basic abc"), "malformed Authorization"),
        (lambda h: h.update(authorization="Fluidfs-HMAC-SHA256 " + "0" * 64), "bad signature"),
        (lambda h: h.pop("x-fluidfs-nonce"), "missing or malformed"),
        (lambda h: h.update({"x-fluidfs-nonce": "n" * 65}), "missing or malformed"),
        (lambda h: h.update({"x-fluidfs-time": "soon"}), "malformed time"),
        (lambda h: h.update({"x-fluidfs-time": "nan"}), "off"),
        (lambda h: h.update({"x-fluidfs-from": "mallory"}), "bad signature"),
        (lambda h: h.update({"x-fluidfs-nonce": "0" * 24}), "bad signature"),
    ],
)
def test_tampered_headers_are_refused(change: object, message: str) -> None:
    clock = Clock()
    h = PeerAuth(SECRET, member_id="a", clock=clock).sign("GET", TARGET)
    change(h)  # type: ignore[operator]
    with pytest.raises(PeerRequestError, match=message) as err:
        PeerAuth(SECRET, clock=clock).verify("GET", TARGET, h)
    assert err.value.status == 401


def test_every_signed_field_matters() -> None:
    clock = Clock()
    a = PeerAuth(SECRET, member_id="a", clock=clock)
    v = PeerAuth(SECRET, clock=clock)
    h = a.sign("GET", TARGET)
    for method, target in (("HEAD", TARGET), ("GET", TARGET.replace("index=3", "index=4")), ("GET", TARGET + "&x")):
        with pytest.raises(PeerRequestError, match="bad signature"):
            v.verify(method, target, h)
    p = a.sign("PUT", TARGET, length=10, crc="0000abcd")
    with pytest.raises(PeerRequestError, match="bad signature"):
        v.verify("PUT", TARGET, p, length=11, crc="0000abcd")
    with pytest.raises(PeerRequestError, match="bad signature"):
        v.verify("PUT", TARGET, p, length=10, crc="0000abce")
    wrong = PeerAuth(b"t" * 32, member_id="a", clock=clock).sign("GET", TARGET)
    with pytest.raises(PeerRequestError, match="bad signature"):
        v.verify("GET", TARGET, wrong)


def test_clock_skew_is_bounded() -> None:
    sender_clock, receiver_clock = Clock(), Clock()
    a = PeerAuth(SECRET, member_id="a", clock=sender_clock)
    v = PeerAuth(SECRET, max_skew=30, clock=receiver_clock)
    for delta, ok in ((29.0, True), (-29.0, True), (31.0, False), (-31.0, False)):
        sender_clock.t = receiver_clock.t + delta
        h = a.sign("GET", TARGET)
        if ok:
            v.verify("GET", TARGET, h)
        else:
            with pytest.raises(PeerRequestError, match=r"s off \(allowed: 30 s\)"):
                v.verify("GET", TARGET, h)


def test_nonce_memory_is_pruned_and_bounded() -> None:
    clock = Clock()
    a = PeerAuth(SECRET, member_id="a", clock=clock)
    v = PeerAuth(SECRET, max_skew=10, max_nonces=5, clock=clock)
    for _ in range(20):
        v.verify("GET", TARGET, a.sign("GET", TARGET))
    assert len(v._seen) == 5
    clock.t += 100
    v.verify("GET", TARGET, a.sign("GET", TARGET))
    assert len(v._seen) == 1  # expired nonces pruned


def test_load_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "secret"
    f.write_bytes(b"k" * 20 + b"\n")
    assert load_secret(str(f)) == b"k" * 20
    monkeypatch.setenv(SECRET_ENV, "e" * 16)
    assert load_secret(None) == b"e" * 16
    assert load_secret(str(f)) == b"k" * 20  # the file wins
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ConfigError) as err:
        load_secret(None)
    assert "short" not in str(err.value) and f"at least {MIN_SECRET_BYTES} bytes" in str(err.value)
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(ConfigError, match="no peer secret"):
        load_secret(None)
    with pytest.raises(ConfigError, match=r"peer secret file .*missing: No such file"):
        load_secret(str(tmp_path / "missing"))
    short = tmp_path / "short"
    short.write_bytes(b"tiny\n")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_secret(str(short))
    with pytest.raises(ConfigError):
        PeerAuth(b"tiny")
    with pytest.raises(ConfigError, match="skew"):
        PeerAuth(SECRET, max_skew=0)


def test_failure_log_is_rate_limited_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(0.0)
    fl = FailureLog(interval=60, max_peers=2, clock=clock)
    with caplog.at_level(logging.WARNING):
        assert fl.warn("10.0.0.1", "refused %s", "x")
        assert not fl.warn("10.0.0.1", "refused %s", "x")
        assert not fl.warn("10.0.0.1", "refused %s", "x")
        assert fl.warn("10.0.0.2", "refused %s", "y")
        clock.t = 61
        assert fl.warn("10.0.0.1", "refused %s", "x")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["refused x", "refused y", "refused x (2 more since the last report)"]
    fl.warn("10.0.0.3", "z")
    assert len(fl._state) == 2  # bounded


def test_breaker_opens_backs_off_and_half_opens() -> None:
    clock = Clock(0.0)
    b = Breaker(base=1.0, cap=8.0, clock=clock)
    assert b.allow() and b.state == CLOSED
    d1 = b.failure("timeout")
    assert b.state == OPEN and 0.8 <= d1 <= 1.2 and not b.allow()
    clock.t += d1
    assert b.allow() and b.state == HALF_OPEN
    assert not b.allow()  # one trial at a time
    d2 = b.failure("refused")
    assert 1.6 <= d2 <= 2.4 and b.state == OPEN
    assert b.failure("refused") <= d2 + 1e-9 and b.failures == 2  # concurrent failures do not compound
    for _ in range(10):
        clock.t = b.retry_at
        assert b.allow()
        d = b.failure("refused")
    assert d <= 8.0 * 1.2
    clock.t += 100
    assert b.allow()
    b.abandon()  # a cancelled trial gives no verdict
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.failures == 0 and b.allow()


def test_breakers_forget_departed_members() -> None:
    bs = Breakers("ds-breakers")
    bs.get("a").failure("timeout")
    bs.get("b")
    bs.export("a")
    assert bs.states() == {"a": "open", "b": "closed"}
    bs.retain(["b"])
    assert bs.states() == {"b": "closed"}
