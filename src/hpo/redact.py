"""One place that hides secrets: every text hpo writes, logs, answers or raises passes through :func:`mask_text`.

What counts as a secret:
- the password in a URL's userinfo (``postgresql://user:PW@host/db``, ``postgresql://:PW@host/db``);
- the value of a query key that names a secret (``?password=PW``, ``sslpassword``, ``token``, ``api_key``, ...);
- ``Authorization: Bearer ...`` values;
- the values of secret environment variables (RUNPOD_API_KEY, HPO_API_TOKEN, AWS/bucket secrets, PGPASSWORD, and any
  ``*_KEY``, ``*_SECRET``, ``*_TOKEN``, ``*_PASSWORD`` variable of the RUNPOD_/HPO_/BUCKET_/AWS_ families), read when
  a text is masked, and values registered with :func:`register_secret` (e.g. a key read from ``.env``).

Masked values become ``***``. The module imports nothing heavy and never raises.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

__all__ = ["MASK", "mask_url", "mask_text", "mask_obj", "first_line", "register_secret", "install_log_masking",
           "SECRET_QUERY_KEYS"]

MASK = "***"

#: query keys whose values are secrets (compared lower-case, '-' read as '_')
SECRET_QUERY_KEYS = frozenset({
    "password", "pass", "passwd", "pwd", "secret", "token", "access_token", "auth_token", "api_key", "apikey",
    "key", "sslpassword", "secret_key", "aws_secret_access_key", "client_secret", "credentials", "auth",
})

_ENV_NAMES = ("RUNPOD_API_KEY", "HPO_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "BUCKET_SECRET_ACCESS_KEY",
              "PGPASSWORD", "RUNPOD_AI_API_KEY", "RUNPOD_WEBHOOK_GET_JOB")
_ENV_FAMILIES = ("RUNPOD_", "HPO_", "BUCKET_", "AWS_", "PG")
_ENV_SUFFIXES = ("_KEY", "_SECRET", "_TOKEN", "_PASSWORD", "_API_KEY", "_ACCESS_KEY")
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words

_registered: set[str] = set()
_registered_lock = threading.Lock()

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+")
_KV = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api_key|apikey|sslpassword|secret_key)(\s*[=:]\s*)"
                 r"(['\"]?)([^\s'\"&,;}]+)")


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears from now on (a key read from a file, a token given on the command line)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _registered_lock:
            _registered.add(value)


def _env_secrets() -> list[str]:
    values = []
    for name, value in os.environ.items():
        if not value or len(value) < _MIN_SECRET_LEN:
            continue
        upper = name.upper()
        if upper in _ENV_NAMES or (upper.startswith(_ENV_FAMILIES) and upper.endswith(_ENV_SUFFIXES)):
            values.append(value)
    return values


def _secret_key(key: str) -> bool:
    return key.lower().replace("-", "_") in SECRET_QUERY_KEYS


def mask_url(url: str | None) -> str | None:
    """``scheme://user:PW@host/db?password=PW&x=1`` -> ``scheme://user:***@host/db?password=***&x=1``.

    Works on anything URL-shaped; text that does not parse is masked with the text rules instead."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        out = url
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                out = out.replace(netloc, f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}", 1)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            if any(_secret_key(k) for k, _ in pairs):
                query = "&".join(f"{quote(k, safe='')}={MASK if _secret_key(k) else quote(v, safe='')}"
                                 for k, v in pairs)
                head, sep, _tail = out.partition("?")
                out = head + sep + query + (f"#{parts.fragment}" if parts.fragment else "")
        return out
    except ValueError:
        return _mask_plain(url)


def _mask_plain(text: str) -> str:
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _KV.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{MASK}", text)


def mask_text(text: Any) -> Any:
    """``text`` with every secret hidden (non-strings are returned as they are)."""
    if not isinstance(text, str) or not text:
        return text
    try:
        out = _URL.sub(lambda m: mask_url(m.group(0)) or "", text)
        out = _mask_plain(out)
        with _registered_lock:
            known = list(_registered)
        for value in sorted(set(known + _env_secrets()), key=len, reverse=True):
            if value in out:
                out = out.replace(value, MASK)
        return out
    except Exception:  # noqa: BLE001 - masking never fails the caller; hide the whole text instead
        return MASK


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, every secret hidden (its type's name when it has no message): what a
    driver or parser error says, for a user's message, without its details."""
    text = str(exc).strip()
    return mask_text(text.splitlines()[0]) if text else type(exc).__name__


def mask_obj(value: Any) -> Any:
    """A JSON-like structure with every string masked (dict keys are kept)."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_obj(v) for v in value]
    return value


class _MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is left to logging's own error handling
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        masked = mask_text(message)
        if masked == message:
            return True  # msg and args kept: formatters such as uvicorn's access log need them
        if isinstance(record.args, tuple) and record.args:
            # mask piece by piece and keep the record's shape where that hides everything
            record.msg = mask_text(record.msg) if isinstance(record.msg, str) else record.msg
            record.args = tuple(mask_text(a) if isinstance(a, str) else a for a in record.args)
            try:
                if mask_text(record.getMessage()) == record.getMessage():
                    return True
            except Exception:  # noqa: BLE001 - fall through to the flat, fully masked message
                pass
        record.msg, record.args = masked, ()
        return True


_installed = False
_FILTER = _MaskingFilter()


def install_log_masking() -> None:
    """Mask every log record of this process, whatever logger it comes from and whatever handler writes it.

    A record factory is process-wide and sees records before any handler formats them; idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _FILTER.filter(record)
        return record

    logging.setLogRecordFactory(factory)
