"""The RunPod client's HTTP layer: every request goes to the configured endpoint, and every wait has an end.

- URLs are built from the configured base URL only: path parts (job ids from the endpoint's answers) are quoted, and a
  URL whose scheme, host or port differs from the base URL's is refused before anything is sent.
- Redirects are never followed (a 3xx is a non-transient failure naming where it pointed), so the Authorization header
  cannot be carried to another host. Environment proxies are used only for ``https`` endpoints (a proxy of a plain
  ``http`` URL would read the key).
- 5xx and connection errors (refused, reset, closed mid-answer) back off with jitter from a private RNG (never the
  global ``random`` state, which Keras seeds weight initializers from) and spend one of ``attempts``.
- 429, and 503 with ``Retry-After``, are rate limiting and spend no attempt: ``Retry-After`` (seconds or an HTTP
  date) is honoured up to ``retry_after_max_s`` per wait (a 429 without it backs off); all such waits of one request
  together stop at ``rate_limit_budget_s`` (default 5 x ``retry_after_max_s``, at least 60 s), then a failure with
  ``rate_limited=True``.
- A 2xx whose body is not JSON fails at once with ``malformed=True`` (the caller decides how often to tolerate it).
- Every wait (backoff, Retry-After) wakes at once on the trial's CancelToken or on :meth:`EndpointClient.close`, and
  then raises :class:`Cancelled`.
No message carries the key: texts from the endpoint pass through :func:`hpo.redact.mask_text`.
"""

from __future__ import annotations

import collections
import email.utils
import json
import logging
import math
import random
import threading
import time
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from ..exceptions import ConfigError
from ..redact import mask_text, mask_url, register_secret
from ._base import CancelToken

__all__ = ["EndpointClient", "HTTPFailure", "Cancelled", "parse_retry_after", "RATES"]

log = logging.getLogger("hpo.backends.runpod")

# Retry jitter draws from a private generator: a library must not advance the global ``random`` state.
_JITTER = random.Random()

#: Requests per second each route may use: under RunPod's limits (/run 1000, /status 2000, /cancel 100 per 10 s).
RATES = {"run": (80.0, 20), "status": (150.0, 30), "stream": (150.0, 30), "cancel": (8.0, 8), "health": (5.0, 5)}


class HTTPFailure(Exception):
    """A request that failed for good: ``status`` is the HTTP status (None: no answer). No secrets in the text."""

    def __init__(self, message: str, status: int | None = None, *, transient: bool = True, malformed: bool = False,
                 rate_limited: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.malformed = malformed
        self.rate_limited = rate_limited


class Cancelled(Exception):
    """A wait was cut short by the trial's cancel token or by closing the client."""


class _TokenBucket:
    """Thread-safe: ``take()`` blocks until a request may go out."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.capacity = rate, float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                wait = (1.0 - self.tokens) / self.rate
            time.sleep(wait)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta seconds or an HTTP date); None if absent or unusable."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _origin_of(base: str, location: str | None) -> str:
    """scheme://host:port of a redirect target (never its path or query, which could hold anything)."""
    try:
        target = urlsplit(urljoin(base, location or ""))
        port = f":{target.port}" if target.port else ""
        return f"{target.scheme}://{target.hostname}{port}"
    except ValueError:
        return "an unusable location"


def short(text: Any, limit: int = 300) -> str:
    """One masked line of at most ``limit`` characters."""
    text = str(mask_text(str(text))).strip().replace("\n", " | ")
    return text if len(text) <= limit else text[:limit] + "…"


class EndpointClient:
    """Requests to one RunPod endpoint, with retries as described in the module doc. Thread-safe."""

    def __init__(self, base_url: str, api_key: str | None = None, *, request_timeout_s: float = 20.0,
                 attempts: int = 6, backoff_s: float = 0.25, backoff_max_s: float = 8.0,
                 retry_after_max_s: float = 120.0, rate_limit_budget_s: float | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"runpod_endpoint_url must be an http(s) URL with a host (e.g. "
                              f"https://api.runpod.ai/v2/<endpoint id>), got {mask_url(base_url)!r}")
        self._origin = (parts.scheme, parts.hostname.lower(), parts.port)
        self.where = mask_url(self.base_url) or ""  # for messages: no userinfo password, no secret query value
        self.key = api_key or None
        register_secret(self.key)
        self.request_timeout_s = request_timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = max(0.0, retry_after_max_s)
        self.rate_limit_budget_s = (rate_limit_budget_s if rate_limit_budget_s is not None
                                    else max(60.0, 5 * self.retry_after_max_s))
        self.retried_requests: collections.Counter[str] = collections.Counter()
        #: the latest retry waits: (route, seconds, "rate limited" | "attempt")
        self.retry_waits: collections.deque[tuple[str, float, str]] = collections.deque(maxlen=1000)
        self._buckets = {route: _TokenBucket(rate, burst) for route, (rate, burst) in RATES.items()}
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def url(self, *parts: str) -> str:
        """``base_url/part/...`` with each part quoted; refuses (ValueError) anything that would leave the endpoint."""
        url = "/".join([self.base_url, *(quote(str(p), safe="") for p in parts)])
        target = urlsplit(url)
        if (target.scheme, (target.hostname or "").lower(), target.port) != self._origin:
            raise ValueError(f"refusing a request outside the configured endpoint {self.where}")
        return url

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            from ..version import __version__

            session = requests.Session()
            # Proxies from the environment only where TLS hides the header from them.
            session.trust_env = self._origin[0] == "https"
            session.headers.update({"Content-Type": "application/json", "Accept": "application/json",
                                    "User-Agent": f"hpo/{__version__}"})
            if self.key:
                session.headers["Authorization"] = f"Bearer {self.key}"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def pause(self, seconds: float, cancel: CancelToken | None = None) -> None:
        """Sleep up to ``seconds``; raise Cancelled at once if ``cancel`` fires or the client closes."""
        seconds = max(0.0, seconds)
        if cancel is None:
            if self._closing.wait(seconds):
                raise Cancelled("the RunPod backend is closing")
            return
        deadline = time.monotonic() + seconds
        while True:
            if cancel.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                raise Cancelled(cancel.reason or "cancelled")
            if self._closing.is_set():
                raise Cancelled("the RunPod backend is closing")
            if time.monotonic() >= deadline:
                return

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            try:
                session.close()
            except Exception:  # noqa: BLE001
                pass

    def _backoff(self, n: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** max(0, n - 1)) * _JITTER.uniform(0.5, 1.5)

    # -- requests ---------------------------------------------------------------------------------------------
    def request(self, method: str, route: str, *parts: str, body: Any = None, attempts: int | None = None,
                timeout: float | None = None, cancel: CancelToken | None = None,
                rate_limit_budget_s: float | None = None) -> Any:
        """One API call (``route`` names the token bucket; the path is ``route/parts...``); returns the decoded JSON.

        Raises HTTPFailure (see the module doc) or Cancelled."""
        import requests

        url = self.url(route, *parts)
        name = "/".join((route, *parts))
        data = None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False)
        tries = attempts or self.attempts
        budget = self.rate_limit_budget_s if rate_limit_budget_s is None else rate_limit_budget_s
        spent, retries, limited_for = 0, 0, 0.0
        while True:
            self._buckets[route].take()
            status: int | None = None
            retry_after: float | None = None
            try:
                response = self._session().request(method, url, data=data, allow_redirects=False,
                                                   timeout=(5.0, timeout or self.request_timeout_s))
            except requests.RequestException as exc:  # refused, reset, closed mid-answer, timeout: no headers in it
                last = f"{type(exc).__name__}: {short(exc, 200)}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return response.json()
                    except ValueError:
                        raise HTTPFailure(f"{method} {name}: HTTP {status} with a body that is not JSON: "
                                          f"{short(response.text, 120)}", status, transient=False,
                                          malformed=True) from None
                if 300 <= status < 400:
                    raise HTTPFailure(f"{method} {name}: HTTP {status} redirect to "
                                      f"{_origin_of(url, response.headers.get('Location'))} not followed (the key "
                                      f"is only sent to {self.where})", status, transient=False)
                if status != 429 and status < 500:
                    hint = " (check RUNPOD_API_KEY)" if status in (401, 403) else ""
                    raise HTTPFailure(f"{method} {name}: HTTP {status}{hint}: {short(response.text, 300)}", status,
                                      transient=False)
                last = f"HTTP {status}: {short(response.text, 200)}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            retries += 1
            if status == 429 or (status == 503 and retry_after is not None):
                # as asked (at least a short floor: "Retry-After: 0" must not become a busy loop), else backoff
                asked = max(retry_after, self.backoff_s) if retry_after is not None else self._backoff(retries)
                delay = max(0.01, min(self.retry_after_max_s, asked))
                if limited_for + delay > budget:
                    raise HTTPFailure(f"{method} {name}: still rate limited after waiting {limited_for:.3g} s; this "
                                      f"client waits at most {budget:g} s ({last})", status, rate_limited=True)
                limited_for += delay
                kind, what = "rate limited", "rate limited: no attempt spent"
            else:
                spent += 1
                if spent >= tries:
                    raise HTTPFailure(f"{method} {name}: {last} (after {spent} attempts)", status)
                delay = self._backoff(spent)
                kind, what = "attempt", f"attempt {spent} of {tries}"
            with self._lock:
                self.retried_requests[route] += 1
                self.retry_waits.append((route, delay, kind))
            log.debug("%s %s failed (%s; %s); retrying in %.2f s", method, name, last, what, delay)
            self.pause(delay, cancel)
