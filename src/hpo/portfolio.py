"""Strong configurations to try first, as plain data: the built-in portfolio per modality and a user's own list.

Part of the light core (standard library only). A run's first trials are, in this order (each once, pins applied,
duplicates dropped): the space's default (``warm_start``), the user's ``initial_configs`` (a JSON file: a list of
objects, each a configuration, missing parameters taking the default's values), then the built-in portfolio's
members after the default (``portfolio_size`` counts the default as the first). The queue itself is built by
:func:`hpo.search_space.start_queue`.

The built-in portfolio (``portfolios.json`` beside this module) is made by ``bench/build_portfolio.py``: candidate
configurations (the default, neighbours of it, draws from the whole space) trained on short schedules on several
datasets and seeds, validation accuracy only, then chosen greedily (:func:`select`) so that each member covers the
tasks where the members before it were weak. Its ``built`` entry says on what it was built.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .spaces import SearchSpace, coerce_pin, space_for

__all__ = ["PORTFOLIO_FILE", "MAX_PORTFOLIO", "builtin", "built_on", "load_configs", "select"]

PORTFOLIO_FILE = Path(__file__).with_name("portfolios.json")
#: most members of a built-in portfolio, the default included (the most ``portfolio_size`` allows)
MAX_PORTFOLIO = 3


@functools.lru_cache(maxsize=4)
def _read(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def builtin(modality: str | SearchSpace, path: Path | None = None) -> list[dict[str, Any]]:
    """The built-in portfolio's members after the default for a modality, best first (copies); none for a user's own
    space or a modality without one."""
    if isinstance(modality, SearchSpace):
        return []
    entry = _read(str(path or PORTFOLIO_FILE)).get(modality) or {}
    return [dict(m) for m in entry.get("members", [])]


def built_on(modality: str, path: Path | None = None) -> dict[str, Any]:
    """How a modality's built-in portfolio was made (datasets, seeds, candidates, validation accuracies)."""
    return dict((_read(str(path or PORTFOLIO_FILE)).get(modality) or {}).get("built") or {})


def load_configs(path: str | Path, space: str | SearchSpace,
                 input_shape: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """The configurations in a JSON file (``initial_configs``): a list of objects naming parameters of ``space``,
    each value checked as a pin is. ConfigError (field ``initial_configs``) saying which entry is wrong and why."""
    field = "initial_configs"
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"initial_configs: no such file {str(path)!r}; give a JSON file holding a list of "
                          "configurations, e.g. [{\"learning_rate\": 0.003}]", field=field) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"initial_configs: cannot read {str(path)!r} ({type(exc).__name__})", field=field) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"initial_configs: {str(path)!r} is not readable JSON (line {exc.lineno}: {exc.msg})",
                          field=field) from None
    if not isinstance(data, list) or not all(isinstance(c, Mapping) for c in data):
        raise ConfigError(f"initial_configs: {str(path)!r} must hold a JSON list of objects (configurations), e.g. "
                          "[{\"learning_rate\": 0.003}]", field=field)
    params = {p.name: p for p in space_for(space)}
    shape = None if isinstance(space, SearchSpace) else input_shape
    out = []
    for i, config in enumerate(data, 1):
        unknown = sorted(str(k) for k in config if k not in params)
        if unknown:
            raise ConfigError(f"initial_configs: configuration {i} has unknown parameter(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(params)}", field=field)
        checked = {}
        for key, value in config.items():
            try:
                checked[key] = coerce_pin(params[key], value, shape)
            except ConfigError as exc:
                raise ConfigError(f"initial_configs: configuration {i}: {exc}", field=field) from None
        out.append(checked)
    return out


def select(scores: Sequence[Sequence[float | None]], size: int, first: int | None = 0) -> list[int]:
    """Greedy portfolio choice: ``scores[c][t]`` is candidate c's validation accuracy on task t (None: failed, counted
    as -1). Start with ``first`` (the default), then repeatedly add the candidate that most lowers the mean regret
    (best of the task minus the best member's score on it); ties go to the higher mean score, then the lower index.
    Returns the chosen indices in order (at most ``size``; fewer when no candidate lowers the regret)."""
    table = [[-1.0 if s is None or (isinstance(s, float) and math.isnan(s)) else float(s) for s in row]
             for row in scores]
    if not table or size < 1:
        return []
    tasks = range(len(table[0]))
    best = [max(row[t] for row in table) for t in tasks]
    means = [sum(row) / len(row) for row in table]

    def regret(members: list[int]) -> float:
        return sum(best[t] - max(table[m][t] for m in members) for t in tasks) / len(table[0])

    chosen = [first] if first is not None else []
    if not chosen:
        chosen.append(min(range(len(table)), key=lambda c: (regret([c]), -means[c], c)))
    while len(chosen) < size:
        now = regret(chosen)
        options = [c for c in range(len(table)) if c not in chosen]
        if not options:
            break
        pick = min(options, key=lambda c: (regret(chosen + [c]), -means[c], c))
        if regret(chosen + [pick]) >= now - 1e-12:
            break
        chosen.append(pick)
    return chosen
