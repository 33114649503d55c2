"""``hpo optimize --help`` and the README's table of options, generated from :class:`hpo.config.OptimizationConfig`'s
fields and their metadata (one source of truth for the options)."""

from __future__ import annotations

import dataclasses
import typing

from . import catalog
from .option_types import range_text, type_name

__all__ = ["options_help", "options_markdown_table"]


def _default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return "required"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(default, bool):
        return "true" if default else "false"
    if default is None:
        return "none"
    return str(default)


def _rows() -> list[tuple[str, str, str, str]]:
    from .config import OptimizationConfig

    hints = typing.get_type_hints(OptimizationConfig)
    rows = []
    for f in dataclasses.fields(OptimizationConfig):
        if f.name == "pins" or f.metadata.get("internal"):
            continue
        kind = "dict or file" if f.name == "space" else type_name(hints[f.name])
        if f.metadata["low"] is not None or f.metadata["high"] is not None:
            kind += f" {range_text(f.metadata)}"
        rows.append((f.name, kind, _default_text(f), f.metadata["help"]))
    return rows


def options_help() -> str:
    """Text for ``hpo optimize --help``: every key with type, default and meaning, plus the search parameters."""
    lines = ["keys (give each as key=value):"]
    for name, kind, default, help_text in _rows():
        lines.append(f"  {name:<26} {help_text}")
        lines.append(f"  {'':<26}   type: {kind}; default: {default}")
    for modality, label in (("image", "CNN (image datasets)"), ("text", "LSTM (text datasets)"),
                            ("sequence", "GRU/LSTM/1-D conv space (real-valued sequence datasets)")):
        lines.append("")
        lines.append(f"search parameters of the {label}; give one as key=value to pin it:")
        for p in catalog.space_for(modality):
            lines.append(f"  {p.name:<26} {p.help}; {p.describe()}")
    return "\n".join(lines)


def options_markdown_table() -> str:
    """The README's table of options (a test keeps README.md in sync with this)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, kind, default, help_text in _rows():
        lines.append(f"| `{name}` | {kind} | `{default}` | {help_text} |")
    return "\n".join(lines)
