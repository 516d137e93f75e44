"""Redaction of secrets carried inside URLs: ``user:password@`` userinfo and the signature
parameters of presigned URLs (S3 SigV2/SigV4, GCS, Azure SAS, generic tokens).

Every URL fluidfs shows — in error messages, the runtime record, ``status`` and the
``user.fluidfs.source`` xattr — goes through :func:`redact_url` (one URL) or
:func:`redact_text` (any text that may contain URLs); the command line installs
:class:`RedactingFilter` on its log handlers, so library log lines are redacted too.  A redacted
URL keeps its scheme, host, path and harmless query parameters, so it still says which object
is meant.

Caveats: only what fluidfs prints is redacted; a secret given on the command line is visible in
``ps`` to other users of the machine (put presigned URLs in a Dataset file and credentials in
the environment or files instead).  Parameter names are matched case-insensitively against a
fixed list; an unusual scheme of signing that uses other names is not recognised.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "REDACTED"

#: query parameters whose values are secrets (lower-case)
SECRET_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-goog-credential",
        "googleaccessid",
        "sig",  # Azure SAS
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
    }
)

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PARAM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def _mask_param(m: re.Match[str]) -> str:
    sep, name, value = m.group(1), m.group(2), m.group(3)
    if name.lower() in SECRET_PARAMS and value:
        return f"{sep}{name}={MASK}"
    return m.group(0)


def redact_url(url: str) -> str:
    """``url`` with userinfo and secret query values replaced by ``REDACTED``."""
    if "@" not in url and "=" not in url:
        return url  # the common case: nothing to hide, no parsing
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL.sub(lambda m: MASK, url) if _URL.search(url) else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = _PARAM.sub(_mask_param, "?" + parts.query)[1:] if parts.query else ""
    fragment = _PARAM.sub(_mask_param, "?" + parts.fragment)[1:] if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (see :func:`redact_url`)."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, text)


def _redact_match(m: re.Match[str]) -> str:
    url = m.group(0)
    core = url.rstrip(".,;:)]}")  # punctuation after a URL in a sentence is not part of it
    return redact_url(core) + url[len(core) :]


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URLs in every record it sees (install it on the handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = redact_text(msg)
        if red != msg:
            record.msg, record.args = red, None
        return True
