"""The redaction of secrets in URLs (fluidfs/util/redact) and rate-limited logging (fluidfs/util/ratelog)."""

from __future__ import annotations

import logging

import pytest

from fluidfs.util.ratelog import RateLimitedLog
from fluidfs.util.redact import RedactingFilter, redact_text, redact_url

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/data/shard-0.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef"
)


def test_presigned_signatures_and_userinfo_are_redacted() -> None:
    red = redact_url(PRESIGNED)
    assert "0123456789abcdef" not in red and "AKIAEXAMPLE" not in red
    assert red.startswith("https://bucket.s3.amazonaws.com/data/shard-0.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert "X-Amz-Expires=3600" in red and "X-Amz-Signature=REDACTED" in red
    assert redact_url("http://user:s3cret@minio:9000/x") == "http://REDACTED@minio:9000/x"
    assert redact_url("https://token@host/x") == "https://REDACTED@host/x"
    for other in (
        "https://storage.googleapis.com/b/o?X-Goog-Signature=abc",
        "https://a.blob.core.windows.net/c/b?sv=1&sig=abc",
    ):
        assert "abc" not in redact_url(other)
    for plain in (
        "s3://bucket/prefix/key=value",
        "file:///data/a b",
        "https://host/dir/?C=N;O=D",
        "https://h/x?page=2",
    ):
        assert redact_url(plain) == plain


def test_redact_text_finds_every_url() -> None:
    text = f"cannot reach endpoint http://ak:sk@h:1 (timeout); GET {PRESIGNED}: HTTP 403"
    red = redact_text(text)
    assert "sk@" not in red and "0123456789abcdef" not in red
    assert red.endswith(": HTTP 403") and "http://REDACTED@h:1 (timeout)" in red
    assert redact_text("no urls here") == "no urls here"


def test_redacting_filter_scrubs_log_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.redact")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="tests.redact"):
        logger.info("fetching %s failed", PRESIGNED)
        logger.info("plain %d", 1)
    assert "0123456789abcdef" not in caplog.text
    assert [r.getMessage() for r in caplog.records][1] == "plain 1"


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    rl = RateLimitedLog(logging.getLogger("tests.ratelog"), interval=10.0, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="tests.ratelog"):
        assert rl.warning(("read", "EIO"), "read of %s failed", "a")
        for _ in range(5):
            assert not rl.warning(("read", "EIO"), "read of %s failed", "b")
        assert rl.warning(("stat", "EIO"), "stat failed")  # another key is not held back
        clock[0] += 10.5
        assert rl.warning(("read", "EIO"), "read of %s failed", "c")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "read of a failed",
        "stat failed",
        "read of c failed (5 similar suppressed in the last 10s)",
    ]
