"""How the command line takes options: ``key=value`` (the form), ``--key value`` / ``--key=value`` (the same,
written as other tools do), and ``config=FILE`` (a TOML or YAML file of options; the command line overrides it)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .exceptions import ConfigError
from .option_types import read_mapping_file

__all__ = ["normalize_key_values", "read_options_file", "merge_options_file"]

#: flags of `hpo optimize` itself, never option aliases
_OWN_FLAGS = {"-h", "--help"}


def normalize_key_values(args: Sequence[str]) -> list[str]:
    """``["--dataset", "mnist", "--trials=8", "mode=health"]`` -> ``["dataset=mnist", "trials=8", "mode=health"]``.

    ``--flag`` with no value (followed by another option or nothing) means ``flag=true``."""
    out: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg.startswith("--") and arg not in _OWN_FLAGS and len(arg) > 2:
            key, sep, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if sep:
                out.append(f"{key}={value}")
            elif i + 1 < len(items) and not items[i + 1].startswith("--") and "=" not in items[i + 1]:
                out.append(f"{key}={items[i + 1]}")
                i += 1
            else:
                out.append(f"{key}=true")
        else:
            out.append(arg)
        i += 1
    return out


def read_options_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Options from a ``.toml`` or ``.yaml``/``.yml`` file: a table/mapping of option names to values (search
    parameters included, which pin them). ConfigError naming the file and the problem."""
    data = read_mapping_file(path, field="config", suffixes=(".toml", ".yaml", ".yml"))
    if data is None:
        data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"config={path} must hold a table of options (name = value), not "
                          f"{type(data).__name__}", field="config")
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config={path}: option {key} must be a single value, not a "
                              f"{type(value).__name__}", field=key)
    return {k: ("none" if v is None else v) for k, v in data.items()}


def merge_options_file(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``config=FILE`` replaced by the file's options; the command line wins over the file."""
    if "config" not in options:
        return options
    rest = dict(options)
    from_file = read_options_file(rest.pop("config"))
    return {**from_file, **rest}
