"""Option values converted to their annotated types, and range checks: the one reading of an option's annotation.

Used by :class:`hpo.config.OptimizationConfig` for every ``key=value`` option (the CLI, ``hpo.optimize`` keyword
arguments and POST /runs bodies alike). A value is native (``8``) or a string (``"8"``); a bad one is a
:class:`ConfigError` whose ``field`` is the option and whose message says what is allowed. Standard library only.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .exceptions import ConfigError

#: storage URL schemes (SQLAlchemy dialects, optionally +driver) Optuna's RDBStorage can open
STORAGE_DIALECTS = ("sqlite", "postgresql", "mysql")

__all__ = ["unwrap_optional", "type_name", "check_type", "range_text", "check_range", "closest", "read_mapping_file"]

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    base, optional = unwrap_optional(tp)
    if get_origin(base) is Literal:
        name = "one of " + ", ".join(str(a) for a in get_args(base))
    else:
        name = {bool: "bool", int: "int", float: "float", str: "str"}.get(base, str(base))
    return f"{name} or none" if optional else name


def check_type(name: str, value: Any, tp: Any, meta: dict[str, Any] | None = None) -> Any:
    """Convert ``value`` (native or string) to the annotated type or raise a ConfigError that names what is allowed
    (the type and, given the field's metadata, its range)."""
    base, optional = unwrap_optional(tp)
    if meta and (meta.get("low") is not None or meta.get("high") is not None):
        allowed = f"{type_name(tp)} {range_text(meta)}"
    else:
        allowed = type_name(tp)
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("none", "null", ""):
            return None
    else:
        text = None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty; allowed: {type_name(tp)}", field=name)
    if get_origin(base) is Literal:
        allowed = get_args(base)
        candidate = text if text is not None else value
        if candidate in allowed:
            return candidate
        hint = closest(str(candidate), [str(a) for a in allowed])
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}{hint}",
                          field=name)
    if base is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE:
            return True
        if text is not None and text.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={value!r} is not a boolean; allowed: true, false, 1, 0, yes, no", field=name)
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?\d+", text.replace("_", "")):
            return int(text.replace("_", ""))
        raise ConfigError(f"{name}={value!r} is not a whole number; allowed: {allowed}", field=name)
    if base is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(text if text is not None else value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} is not a number; allowed: {allowed}", field=name) from None
        if not math.isfinite(number):
            raise ConfigError(f"{name}={value!r} is not a finite number", field=name)
        return number
    if base is str:
        if text is not None:
            return text
        raise ConfigError(f"{name}={value!r} is not text; allowed: {type_name(tp)}", field=name)
    raise TypeError(f"unsupported option type for {name}: {tp}")  # a programming error, not a user's


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def range_text(meta: dict[str, Any]) -> str:
    low, high = meta["low"], meta["high"]
    if low is not None and high is not None:
        return f"{'(' if meta['low_open'] else '['}{_num(low)}, {_num(high)}]"
    if low is not None:
        return f"> {_num(low)}" if meta["low_open"] else f">= {_num(low)}"
    return f"<= {_num(high)}"


def check_range(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None or isinstance(value, (bool, str)) or (meta["low"] is None and meta["high"] is None):
        return
    low, high = meta["low"], meta["high"]
    too_low = low is not None and (value <= low if meta["low_open"] else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        raise ConfigError(f"{f.name}={value} is out of range; allowed: {range_text(meta)}", field=f.name)


def closest(word: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


# -- values checked beyond their type: URLs, and options that need an extra package -----------------------------

def installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: set to None in sys.modules (how a missing package is played)
        return False


def check_extras(config: Any) -> None:
    """Options that need an extra package: a clear error naming the pip command, before anything is written."""
    wanted = [(config.sampler == "cmaes", "cmaes", "samplers", "sampler", "sampler=cmaes"),
              (config.sampler == "qmc", "scipy", "samplers", "sampler", "sampler=qmc"),
              (config.tracking == "mlflow", "mlflow", "mlflow", "tracking", "tracking=mlflow"),
              (config.tensorboard, "tensorboardX", "tensorboard", "tensorboard", "tensorboard=true")]
    for on, module, extra, field_name, what in wanted:
        if on and not installed(module):
            raise ConfigError(f'{what} needs {module}, which is not installed: pip install "hpo[{extra}]"',
                              field=field_name)


def check_endpoint_url(url: str) -> None:
    """An http(s) URL with a host (the RunPod key is sent there, so nothing else will do)."""
    from urllib.parse import urlsplit

    from .redact import mask_url

    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError for a port that is no number
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"runpod_endpoint_url={mask_url(url)!r} is not an http(s) URL with a host; allowed: e.g. "
                          "https://api.runpod.ai/v2/ENDPOINT_ID", field="runpod_endpoint_url")


def check_storage_url(url: str) -> None:
    """A storage URL Optuna can open: ``dialect[+driver]://...`` of a known dialect (checked without connecting)."""
    from .redact import mask_url

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.split("+", 1)[0] not in STORAGE_DIALECTS:
        raise ConfigError(f"storage={mask_url(url)!r} is not a database URL; allowed: "
                          f"{', '.join(d + '://...' for d in STORAGE_DIALECTS)} (e.g. "
                          "postgresql://user@host/db or sqlite:///path/study.db)", field="storage")
    try:
        from sqlalchemy.engine import make_url
    except ImportError:  # Optuna brings SQLAlchemy; without it the scheme check above is all we can do
        return
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's URL
        raise ConfigError(f"storage={mask_url(url)!r} is not a valid database URL "
                          f"({type(exc).__name__}); e.g. postgresql://user@host/db", field="storage") from None
    if parsed.get_backend_name() == "sqlite" and (parsed.database or ":memory:") == ":memory:":
        raise ConfigError(f"storage={mask_url(url)!r} is an in-memory SQLite database: the study would vanish with "
                          "the process and no other process could join it; give a file (sqlite:///path/study.db) "
                          "or leave storage out (the run folder's study.db)", field="storage")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): a server there is reachable from here only."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def read_mapping_file(path: str | os.PathLike[str], *, field: str,
                      suffixes: tuple[str, ...] = (".json", ".toml", ".yaml", ".yml")) -> Any:
    """The data of a JSON / TOML / YAML file chosen by its suffix (one of ``suffixes``); ConfigError (``field``)
    naming the file and the problem: missing, another suffix, or a parse error (its first line)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{field}={str(path)!r}: no such file", field=field)
    suffix = file.suffix.lower()
    if suffix not in suffixes:
        raise ConfigError(f"{field}={str(path)!r}: unknown file type {suffix or '(none)'}; allowed: "
                          f"{', '.join(suffixes)}", field=field)
    try:
        text = file.read_text(encoding="utf-8")
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        from .redact import first_line

        raise ConfigError(f"{field}={str(path)!r} cannot be read: {first_line(exc)}", field=field) from None
