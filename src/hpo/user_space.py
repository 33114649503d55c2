"""A user's own search space as plain data (a dict, or a JSON/TOML/YAML file of the same shape), checked before any
trial and turned into a :class:`hpo.catalog.SearchSpace` (core: standard library only).

Format: one entry per parameter, in order (a condition refers to parameters defined before it)::

    {"units":    {"type": "int", "low": 16, "high": 256, "log": true, "default": 64},
     "lr":       {"type": "float", "low": 1e-4, "high": 1e-2, "log": true, "default": 1e-3},
     "act":      {"type": "choice", "choices": ["relu", "gelu"], "default": "relu"},
     "act2":     ["relu", "gelu"],                                  # a plain list: the choices, no default
     "layers":   {"type": "int", "low": 0, "high": 3, "default": 1},
     "width2":   {"type": "choice", "choices": [32, 64], "when": {"layers": ">0"}},
     "optimizer": {"type": "choice", "choices": ["adam", "sgd"], "default": "adam"},
     "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["sgd"]}}}

- ``type``: ``"int"`` (``low``, ``high`` integers, both included), ``"float"`` (``low`` < ``high``, numbers) or
  ``"choice"`` (``choices``: a non-empty list of distinct strings, of numbers or of booleans; ints mixed with floats
  become floats). ``"categorical"`` is read as ``"choice"``, and ``type`` may be left out when ``choices`` is given.
- ``log``: search int/float on a log scale (``low`` must then be > 0). ``help``: a description shown in reports.
- ``default``: the value of the warm start (the run's first trial). The run has a warm start when every parameter
  that is active under the others' defaults has one (a conditional parameter whose condition fails under them needs
  none); otherwise it has none (``hpo.catalog.missing_defaults`` names the parameters without one) and the given
  defaults are only checked. A pin that activates a conditional parameter without a default gives it the middle of
  its range (geometric on a log scale) or its first choice in the warm start.
- ``when``: ``{"name": condition}`` -- the parameter is searched (and passed to ``build``) only when the earlier
  parameter ``name`` satisfies the condition: a comparison of a numeric parameter (``">0"``, ``">=2"``, ``"<0.5"``,
  ``"==1"``, ``"!=0"``) or a list of values it must be one of (``["sgd", "rmsprop"]``; a single string or boolean is
  read as a one-item list). A condition that can never hold is refused.

Names are Python identifiers of at most 64 characters; at most 64 parameters. Names the trainer reads itself:

- ``batch_size`` (an int >= 1, or int choices): the batch size per replica (without it: 64);
- ``optimizer`` (choices among adam, adamw, sgd, rmsprop), ``learning_rate`` (> 0; without it: 1e-3) and
  ``weight_decay`` (>= 0; AdamW's decay): used to compile the model when ``build`` returns it uncompiled; a
  ``build`` that compiles the model itself uses them (or not) as it likes, and hpo keeps its compilation;
- ``epochs`` is refused: a trial's epochs are the run's (``max_epochs_per_trial``, ``epoch_budget``, early stopping
  and pruning).

Every error is a :class:`~hpo.exceptions.ConfigError` with ``field="space"`` naming the parameter and what is
allowed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from .spaces import (Param, SearchSpace, _fmt, coerce_pin, condition_holds, describe_condition, parse_comparison,
                      same_value)
from .exceptions import ConfigError

__all__ = ["parse_space", "check_pins", "MAX_PARAMS", "MAX_NAME", "MAX_CHOICES", "MAX_CHOICE_CHARS", "OPTIMIZERS",
           "TYPES", "KEYS", "describe"]

MAX_PARAMS = 64
MAX_NAME = 64
MAX_CHOICES = 100
MAX_CHOICE_CHARS = 64
#: the optimizers hpo compiles an uncompiled model with (hpo.models.OPTIMIZERS; a test keeps them equal)
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
TYPES = ("int", "float", "choice")
KEYS = ("type", "low", "high", "log", "choices", "default", "when", "help")
_KINDS = {"int": "int", "float": "float", "choice": "categorical", "categorical": "categorical"}
_MISSING = object()  # no default given


def _err(name: str, message: str) -> ConfigError:
    return ConfigError(f"space: parameter {_show(name)} {message}", field="space")


def _show(value: Any) -> str:
    """``repr(value)``, cut short (a value from a user's file may be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(name: str, key: str, value: Any, *, integer: bool) -> float | int:
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        hint = " (in YAML write floats with a dot, e.g. 1.0e-4)" if isinstance(value, str) and not integer else ""
        raise _err(name, f"has {key}={_show(value)}; allowed: {what}{hint}")
    if not math.isfinite(value):
        raise _err(name, f"has {key}={_show(value)}; allowed: a finite number")
    return int(value) if integer else float(value)


def _choices(name: str, raw: Any) -> tuple[Any, ...]:
    allowed = "a non-empty list of distinct strings, numbers or booleans (all of one kind)"
    if not isinstance(raw, (list, tuple)) or not raw:
        raise _err(name, f"has choices={_show(raw)}; allowed: {allowed}")
    if len(raw) > MAX_CHOICES:
        raise _err(name, f"has {len(raw)} choices; allowed: at most {MAX_CHOICES}")
    kinds = set()
    for c in raw:
        if isinstance(c, bool):
            kinds.add("boolean")
        elif isinstance(c, (int, float)):
            if not math.isfinite(c):
                raise _err(name, f"has the choice {_show(c)}; allowed: finite numbers")
            kinds.add("number")
        elif isinstance(c, str):
            if len(c) > MAX_CHOICE_CHARS:
                raise _err(name, f"has a choice of {len(c)} characters; allowed: at most {MAX_CHOICE_CHARS}")
            kinds.add("string")
        else:
            raise _err(name, f"has the choice {_show(c)} ({type(c).__name__}); allowed: {allowed}")
    if len(kinds) > 1:
        raise _err(name, f"mixes {' and '.join(sorted(kinds))} choices; allowed: {allowed}")
    choices = tuple(raw)
    if kinds == {"number"} and any(isinstance(c, float) for c in choices):
        choices = tuple(float(c) for c in choices)
    for i, c in enumerate(choices):
        if any(same_value(c, d) for d in choices[:i]):
            raise _err(name, f"repeats the choice {_fmt(c)}; allowed: {allowed}")
    return choices


def _param(name: str, spec: Mapping) -> tuple[Param, Any]:
    """The Param of one entry (without its condition) and its default (``_MISSING`` when none)."""
    unknown = [str(k) for k in spec if k not in KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _err(name, f"has the unknown key {_show(unknown[0])}{hint}; allowed: {', '.join(KEYS)}")
    kind = spec.get("type", "choice" if "choices" in spec else None)
    if kind is None:
        raise _err(name, f"has no type; allowed: {', '.join(TYPES)} (or a plain list of choices)")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise _err(name, f"has the unknown type {_show(kind)}; allowed: {', '.join(TYPES)}")
    help_text = spec.get("help", "")
    if not isinstance(help_text, str):
        raise _err(name, f"has help={_show(help_text)}; allowed: a string")
    help_text = help_text[:200] or "your parameter"
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _err(name, f"has log={_show(log)}; allowed: true or false")
    default = spec.get("default", _MISSING)
    if _KINDS[kind] == "categorical":
        for key in ("low", "high", "log"):
            if key in spec:
                raise _err(name, f"is a choice and has {_show(key)}; a choice takes choices (and default, when, help)")
        choices = _choices(name, spec.get("choices"))
        p = Param(name, "categorical", help_text, choices=choices)
        if default is not _MISSING:
            found = [c for c in choices if same_value(default, c)]
            if not found:
                raise _err(name, f"has default={_show(default)}, which is not among its choices; allowed: {p.describe()}")
            default = found[0]
        return p, default
    if "choices" in spec:
        raise _err(name, f"is of type {kind} and has choices; give low and high (or make it a choice)")
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in spec:
            raise _err(name, f"has no {key}; an {kind} parameter needs low and high")
    low = _number(name, "low", spec["low"], integer=integer)
    high = _number(name, "high", spec["high"], integer=integer)
    if low >= high:
        raise _err(name, f"has an empty range: low={_fmt(low)} >= high={_fmt(high)}; allowed: low < high "
                   "(for a fixed value, pin it or leave the parameter out)")
    if log and low <= 0:
        raise _err(name, f"is on a log scale with low={_fmt(low)}; allowed: low > 0 on a log scale")
    p = Param(name, kind, help_text, low, high, log)
    if default is not _MISSING:
        default = _number(name, "default", default, integer=integer)
        if not low <= default <= high:
            raise _err(name, f"has default={_fmt(default)} outside its range; allowed: {p.describe()}")
    return p, default


def _condition(name: str, when: Any, earlier: dict[str, Param], order: list[str]) -> tuple[tuple[str, str], tuple]:
    """``(active_if, active_values)`` of ``when``; ConfigError when it names no earlier parameter or never holds."""
    if not isinstance(when, Mapping) or len(when) != 1:
        raise _err(name, f"has when={_show(when)}; allowed: one condition, {{\"name\": \">0\"}} or "
                   "{\"name\": [values]}, on a parameter defined before it")
    (control, cond), = when.items()
    if control not in earlier:
        if control == name:
            raise _err(name, "has a condition on itself; a condition refers to a parameter defined before it")
        if control in order:
            raise _err(name, f"has a condition on {control!r}, which is defined after it; conditions refer to "
                       f"earlier parameters: define {control!r} before {name!r}")
        known = ", ".join(earlier) or "none"
        raise _err(name, f"has a condition on the unknown parameter {_show(control)}; parameters before it: {known}")
    c = earlier[control]
    if not isinstance(cond, (str, int, float, list, tuple)):
        raise _err(name, f"has the condition {control}: {_show(cond)}; allowed: a comparison such as \">0\" or a "
                   f"list of {control}'s values")
    if isinstance(cond, (list, tuple)):
        values: tuple | None = tuple(cond)
    elif not isinstance(cond, str) or any(isinstance(x, str) for x in c.choices):
        values = (cond,)  # one value: a number, a boolean, or a string of a choice among strings
    else:
        values = None  # a comparison
    if values is not None:
        if c.kind == "float":
            raise _err(name, f"has the condition {control} in {_show(list(values))}; {control} is a float: compare "
                       "it instead, e.g. \">0.5\"")
        if not values:
            raise _err(name, f"has an empty list of values for {control}; the condition can never hold")
        for v in values:
            ok = (any(same_value(v, x) for x in c.choices) if c.kind == "categorical" else
                  isinstance(v, int) and not isinstance(v, bool) and c.low <= v <= c.high)
            if not ok:
                raise _err(name, f"has a condition that can never hold: {control}={_show(v)} is not a value "
                           f"{control} takes; {control} is {c.describe()}")
        if c.kind == "categorical":  # the choices' own values (1 -> 1.0 for float choices)
            values = tuple(next(x for x in c.choices if same_value(v, x)) for v in values)
        return (control, "in"), values
    parsed = parse_comparison(cond)
    numeric = c.kind != "categorical" or all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                             for x in c.choices)
    if parsed is None or not numeric:
        allowed = ("a comparison with a number (\">0\", \">=2\", \"<0.5\", \"==1\", \"!=0\") or a list of values"
                   if numeric else f"a list of {control}'s values ({c.describe()})")
        raise _err(name, f"has the condition {control}: {_show(cond)}; allowed: {allowed}")
    if c.kind == "categorical":
        holds = any(condition_holds(cond, (), x) for x in c.choices)
    else:
        holds = _range_meets(parsed[0], parsed[1], c)
    if not holds:
        raise _err(name, f"has a condition that can never hold: {control} {parsed[0]} {_fmt(parsed[1])}, but "
                   f"{control} is {c.describe()}")
    return (control, cond.strip()), ()


def _range_meets(op: str, x: float, c: Param) -> bool:
    """Whether some value of int/float ``c`` satisfies ``value op x``."""
    low, high = c.low, c.high
    if c.kind == "int" and op in ("==", "!="):
        if op == "==":
            return x.is_integer() and low <= x <= high
        return True  # a range of at least two integers always has one that differs
    return {">": high > x, ">=": high >= x, "<": low < x, "<=": low <= x, "==": low <= x <= high,
            "!=": True}[op]


def parse_space(data: Any, name: str = "own") -> SearchSpace:
    """``data`` (the format in this module's docstring) as a :class:`~hpo.catalog.SearchSpace`; ConfigError
    (``field="space"``) naming the parameter and what is allowed for anything that is not."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"space must be an object of parameter names to their definitions, got "
                          f"{type(data).__name__}", field="space")
    if not data:
        raise ConfigError("space is empty; give at least one parameter, e.g. {\"units\": {\"type\": \"int\", "
                          "\"low\": 16, \"high\": 256}}", field="space")
    if len(data) > MAX_PARAMS:
        raise ConfigError(f"space has {len(data)} parameters; allowed: at most {MAX_PARAMS}", field="space")
    order = [str(k) for k in data]
    params: dict[str, Param] = {}
    defaults: dict[str, Any] = {}
    for key, spec in data.items():
        if not isinstance(key, str) or not key.isidentifier() or len(key) > MAX_NAME:
            raise ConfigError(f"space: parameter name {_show(key)} is not allowed; allowed: a Python identifier "
                              f"(letters, digits, _; not starting with a digit) of at most {MAX_NAME} characters",
                              field="space")
        if isinstance(spec, (list, tuple)):
            spec = {"type": "choice", "choices": list(spec)}
        if not isinstance(spec, Mapping):
            raise _err(key, f"is {_show(spec)}; allowed: an object with type (int, float, choice) and its range or "
                       "choices, or a plain list of choices")
        p, default = _param(key, spec)
        if "when" in spec:
            active_if, values = _condition(key, spec["when"], params, order)
            p = Param(p.name, p.kind, p.help, p.low, p.high, p.log, p.choices, active_if, values)
        _check_reserved(p)
        params[key] = p
        if default is not _MISSING:
            defaults[key] = default
    return SearchSpace(name, tuple(params.values()), defaults)


def _check_reserved(p: Param) -> None:
    """The names the trainer reads itself hold values it can use."""
    if p.name == "epochs":
        raise _err("epochs", "is set by the run, not searched: a trial trains up to max_epochs_per_trial (or "
                   "within epoch_budget), stopped early or pruned; rename it if build uses it otherwise")
    values = p.choices if p.kind == "categorical" else (p.low, p.high)
    if p.name == "optimizer" and (p.kind != "categorical" or any(v not in OPTIMIZERS for v in p.choices)):
        raise _err("optimizer", f"is {p.describe()}; allowed: choices among {', '.join(OPTIMIZERS)} (hpo compiles "
                   "an uncompiled model with it); rename it if build compiles the model with optimizers of its own")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if p.name == "batch_size" and (not integers or min(values) < 1):
        raise _err("batch_size", f"is {p.describe()}; allowed: integers >= 1 (an int range or int choices)")
    if p.name == "learning_rate" and (not numeric or min(values) <= 0):
        raise _err("learning_rate", f"is {p.describe()}; allowed: numbers > 0")
    if p.name == "weight_decay" and (not numeric or min(values) < 0):
        raise _err("weight_decay", f"is {p.describe()}; allowed: numbers >= 0")


def check_pins(space: SearchSpace, pins: Mapping[str, Any]) -> dict[str, Any]:
    """``pins`` (e.g. ``units=128`` from the command line, strings allowed) checked against the user's space with
    :func:`hpo.catalog.coerce_pin`; ConfigError (``field`` = the pin's name) for an unknown name or a bad value."""
    by_name = {p.name: p for p in space.params}
    checked = {}
    for key, value in pins.items():
        if key not in by_name:
            close = difflib.get_close_matches(str(key), list(by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown parameter {_show(key)}{hint}; the search space {space.name!r} has: "
                              f"{', '.join(by_name)}", field=str(key))
        checked[key] = coerce_pin(by_name[key], value, None)
    return checked


def describe(space: SearchSpace) -> list[str]:
    """One line per parameter (for help texts and reports): name, range or choices, condition."""
    lines = []
    for p in space.params:
        cond = f"; only when {describe_condition(p)}" if p.active_if else ""
        default = f"; default {_fmt(space.defaults[p.name])}" if p.name in space.defaults else ""
        lines.append(f"{p.name}: {p.describe()}{default}{cond}")
    return lines
