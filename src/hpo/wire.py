"""Strict JSON messages: typed dict/JSON conversion for dataclasses, and short renderings of untrusted values.

:class:`Message` is the base of the wire format's dataclasses (:mod:`hpo.protocol`): ``to_dict``/``to_json`` write
standard JSON (non-finite floats as ``null``, numpy scalars as Python ones), ``from_dict``/``from_json`` read it
strictly -- a missing, unknown or mistyped field, or another ``schema_version``, is a
:class:`~hpo.exceptions.ProtocolError` that names the field and says what is allowed. The field types it knows:
``int``, ``float``, ``str``, ``bool``, ``None``, ``Any``, ``Literal`` of strings, unions, ``list[...]`` and
``dict[str, ...]``. Error messages show untrusted values through :func:`preview` (never recursive, never huge).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

from .exceptions import ProtocolError

__all__ = ["Message", "describe", "conforms", "preview", "first_bad_entry", "clean"]


def describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if origin is dict:
        return f"object of {describe(get_args(tp)[1])}"
    if origin is list:
        return f"list of {describe(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any JSON value"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def conforms(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in get_args(tp) and isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in get_args(tp))
    if origin is dict:
        vt = get_args(tp)[1]
        return isinstance(value, dict) and all(isinstance(k, str) and conforms(v, vt) for k, v in value.items())
    if origin is list:
        et = get_args(tp)[0]
        return isinstance(value, list) and all(conforms(v, et) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported protocol type {tp}")


def preview(value: Any) -> str:
    """A short rendering of an untrusted value for an error message: never recursive, never huge."""
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:60] + "...")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    return f"a {type(value).__name__}"


def first_bad_entry(fname: str, value: Any, tp: Any) -> str:
    """For an object field: which entry is wrong (``; params['dropout'] is a list of 1 item(s)``), else ""."""
    if get_origin(tp) is not dict or not isinstance(value, dict):
        return ""
    vt = get_args(tp)[1]
    for key, item in value.items():
        if not isinstance(key, str):
            return f"; {fname} has a key that is not a string ({preview(key)})"
        if not conforms(item, vt):
            shown = key if len(key) <= 60 else key[:60] + "..."
            return f"; {fname}[{shown!r}] is {preview(item)}"
    return ""


def clean(value: Any) -> Any:
    """Deep-copy into JSON-safe values: non-finite floats -> None, numpy scalars -> Python scalars, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if hasattr(value, "item"):  # numpy scalar
        return clean(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


class Message:
    """Strict dict/JSON conversion for a dataclass: every field typed with the types :func:`conforms` knows; a field
    ``schema_version`` (when there is one) must carry its default."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: clean(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        name = cls.__name__
        if not isinstance(data, dict):
            raise ProtocolError(f"{name} must be a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        odd = [k for k in data if not isinstance(k, str)]
        if odd:
            raise ProtocolError(f"{name}: field names must be strings, got {preview(odd[0])}")
        unknown = [u if len(u) <= 60 else u[:60] + "..." for u in sorted(set(data) - set(fields))]
        if len(unknown) > 5:
            unknown = [*unknown[:5], f"... ({len(unknown)} in all)"]
        if unknown:
            raise ProtocolError(f"{name}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
        spoken = fields["schema_version"].default if "schema_version" in fields else None
        version = data.get("schema_version", spoken)
        if version != spoken:
            raise ProtocolError(f"{name}: schema_version {preview(version)} is not supported; this hpo speaks "
                                f"version {spoken}")
        kwargs = {}
        for fname, f in fields.items():
            if fname not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ProtocolError(f"{name}: missing required field {fname!r} ({describe(hints[fname])})")
                continue
            if not conforms(data[fname], hints[fname]):
                raise ProtocolError(f"{name}: field {fname!r} must be {describe(hints[fname])}, "
                                    f"got {preview(data[fname])}{first_bad_entry(fname, data[fname], hints[fname])}")
            kwargs[fname] = data[fname]
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{name}: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Any:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{cls.__name__}: not valid JSON ({exc})") from None
        return cls.from_dict(data)
