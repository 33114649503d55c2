"""What the REST API accepts before it looks at a request body, checked from the headers first.

- ``Content-Type`` of a POST body: ``application/json``, optionally with ``charset=utf-8``. Anything else, or none,
  is answered 415 before the body is read. (A web page can send ``text/plain``, form or multipart bodies to any
  address without asking; it cannot send ``application/json`` to another origin without a CORS preflight, which this
  server never grants.)
- Size of a POST body: at most ``max_body_bytes`` (:data:`DEFAULT_MAX_BODY_BYTES` = 64 KiB; ``hpo serve
  max_body_bytes=N``). A ``Content-Length`` above the limit is answered 413 without reading the body; a body without
  one (``Transfer-Encoding: chunked``) is read piece by piece and answered 413 as soon as it passes the limit.
- ``Origin``: a POST whose ``Origin`` header names another origin than the ``Host`` it was sent to (a web page of
  another site; ``Origin: null``) is answered 403.

All three raise :class:`RequestRejected` (status and message); the app turns it into a JSON ``{"detail"}`` answer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["DEFAULT_MAX_BODY_BYTES", "RequestRejected", "check_content_type", "check_origin", "read_body"]

DEFAULT_MAX_BODY_BYTES = 64 * 1024
_CHARSETS = ("utf-8", "utf8")


class RequestRejected(Exception):
    """A request refused from its headers or size: ``status`` (400, 403, 413, 415) and a message for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def check_content_type(value: str | None) -> None:
    """415 unless ``value`` is ``application/json`` (parameters: at most ``charset=utf-8``)."""
    allowed = "allowed: application/json (optionally ; charset=utf-8)"
    if not value or not value.strip():
        raise RequestRejected(415, f"the request has no Content-Type; the body must be JSON, sent with Content-Type: "
                                   f"application/json ({allowed})", {"Accept": "application/json"})
    media, *params = [part.strip() for part in value.split(";")]
    bad = media.lower() != "application/json"
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() != "charset" or val.strip().strip('"').lower() not in _CHARSETS:
            bad = True
    if bad:
        shown = value.strip()[:100].encode("ascii", "replace").decode("ascii")
        raise RequestRejected(415, f"Content-Type {shown!r} is not accepted; the body must be JSON ({allowed})",
                              {"Accept": "application/json"})


def check_origin(origin: str | None, host: str | None) -> None:
    """403 when a browser says the request comes from a page of another origin than the server it was sent to."""
    if origin is None:
        return  # not from a browser's cross-site request (browsers send Origin on every cross-origin POST)
    try:
        same = origin.strip().lower() != "null" and bool(host) and (
            urlsplit(origin.strip()).netloc.lower() == (host or "").strip().lower())
    except ValueError:
        same = False
    if not same:
        raise RequestRejected(403, "requests from web pages of another origin are refused (the Origin header does "
                                   "not match the Host); call the API from a program, or from a page this server "
                                   "serves")


async def read_body(request: Any, limit: int) -> bytes:
    """The body of ``request`` (a Starlette Request), at most ``limit`` bytes: 413 from ``Content-Length`` alone
    when it says more, else while reading the stream, as soon as more has arrived; nothing beyond that is read."""
    too_big = f"the body is larger than this server's limit of {limit} bytes (hpo serve max_body_bytes=...)"
    length = request.headers.get("content-length")
    if length is not None:
        text = length.strip()
        if not text.isdigit():
            raise RequestRejected(400, f"Content-Length {text[:40]!r} is not a number of bytes")
        if int(text) > limit:
            raise RequestRejected(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)
