"""Asking an Optuna trial for one configuration of a search space, the warm start and its neighbours, and the exact
parameter count of the model a configuration builds.

The spaces themselves (:class:`Param`, :data:`CNN_SPACE`, :data:`LSTM_SPACE`, :data:`SEQUENCE_SPACE`,
:data:`DEFAULTS`), the checks of a pinned value and of a job's params live in the light core, :mod:`hpo.catalog`, and
are re-exported here. Pinned parameters (``activation=relu`` on the command line) are fixed instead of searched, and
still recorded in the trial's params (as a one-choice categorical) so that every trial's params are complete.

Nothing here imports TensorFlow: parameter counts are computed analytically by :func:`count_params`, which
``models.py`` must agree with exactly (a test checks it), so oversized configurations are rejected before any job is
dispatched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import portfolio
from .catalog import (CNN_SPACE, DEFAULTS, LSTM_SPACE, SEQUENCE_SPACE, Modality, Param, all_param_names, coerce_pin,
                      conv1d_pools, is_active, max_conv_blocks, param_bounds, space_for, validate_params)
from .catalog import SearchSpace, defaults_for, missing_defaults
from .exceptions import ConfigError

__all__ = [
    "Param",
    "CNN_SPACE",
    "LSTM_SPACE",
    "SEQUENCE_SPACE",
    "DEFAULTS",
    "Modality",
    "space_for",
    "all_param_names",
    "max_conv_blocks",
    "coerce_pin",
    "suggest",
    "default_params",
    "start_queue",
    "start_params",
    "neighbour_params",
    "count_params",
    "validate_params",
]

_bounds = param_bounds  # the old private names (tests use _bounds)


def _shape(modality: str | SearchSpace, input_shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The input shape that caps a param's range: none for a user's own space (its names mean what the user says)."""
    return None if isinstance(modality, SearchSpace) else input_shape


def _label(modality: str | SearchSpace) -> str:
    return f"the search space {modality.name!r}" if isinstance(modality, SearchSpace) else f"{modality} space"


def suggest(trial: Any, modality: str | SearchSpace, pins: dict[str, Any] | None = None,
            input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Ask ``trial`` (an ``optuna.Trial``) for one configuration of a built-in modality's space or of a user's
    :class:`~hpo.catalog.SearchSpace`: ints and floats on their (log) scale, choices as categoricals; a conditional
    param is asked only when its condition holds; pins are fixed (a one-choice categorical)."""
    pins = pins or {}
    input_shape = _shape(modality, input_shape)
    params: dict[str, Any] = {}
    for p in space_for(modality):
        if not is_active(p, params):
            continue
        if p.name in pins:
            params[p.name] = trial.suggest_categorical(p.name, [pins[p.name]])
            continue
        low, high = param_bounds(p, input_shape)
        if p.kind == "int":
            params[p.name] = trial.suggest_int(p.name, int(low), int(high), log=p.log)
        elif p.kind == "float":
            params[p.name] = trial.suggest_float(p.name, float(low), float(high), log=p.log)
        else:
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return params


def _middle(p: Param) -> Any:
    """A deterministic value of ``p`` for a user's conditional param without a default that a pin made active: the
    middle of its range (geometric on a log scale) or its first choice."""
    if p.kind == "categorical":
        return p.choices[0]
    low, high = float(p.low), float(p.high)
    mid = math.sqrt(low * high) if p.log else (low + high) / 2
    return min(max(round(mid), int(low)), int(high)) if p.kind == "int" else mid


def default_params(modality: str | SearchSpace, pins: dict[str, Any] | None = None,
                   input_shape: tuple[int, ...] | None = None, *, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The space's default configuration (the warm start) with ``base``'s values over it (a portfolio member, a
    user's initial configuration) and ``pins`` over both, fitted to ``input_shape`` (conv blocks capped so pooling
    never collapses the image); inactive parameters (dense_units without dense layers) are left out. ConfigError for
    a user's space without defaults and no ``base`` (:func:`hpo.catalog.defaults_for` is empty: no warm start)."""
    defaults = defaults_for(modality)
    if not defaults and base is None and isinstance(modality, SearchSpace):
        missing = ", ".join(missing_defaults(modality))
        raise ConfigError(f"{_label(modality)} has no warm start: {missing} have no default", field="space")
    input_shape = _shape(modality, input_shape)
    values = {**defaults, **(base or {}), **(pins or {})}
    params: dict[str, Any] = {}
    for p in space_for(modality):
        if not is_active(p, params):
            continue
        value = values[p.name] if p.name in values else _middle(p)
        if p.name == "conv_blocks" and input_shape is not None and p.name not in (pins or {}):
            value = min(int(value), max_conv_blocks(input_shape))
        params[p.name] = coerce_pin(p, value, input_shape)
    return params


#: the user attribute that marks each trial of a new study's start queue (:func:`start_queue`): the default, a user's
#: initial configuration, a portfolio member, configurations known to be strong before the search
START_ATTRS = ("warm_start", "initial_config", "portfolio")


def start_params(trials: Any) -> list[dict[str, Any]]:
    """The parameters of the start queue's trials among ``trials`` (Optuna trials: those with a :data:`START_ATTRS`
    user attribute); a search trial with the same parameters counts as that configuration where callers compare."""
    return [t.params for t in trials if any(k in t.user_attrs for k in START_ATTRS)]


def start_queue(modality: str | SearchSpace, pins: dict[str, Any] | None = None,
                input_shape: tuple[int, ...] | None = None, *, warm_start: bool = True, portfolio_size: int = 1,
                initial: str | Sequence[dict[str, Any]] | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """A new study's first trials as (params, user attributes), in order: the default (``warm_start``), the user's
    ``initial`` configurations (a list, or the ``initial_configs`` JSON file holding one), then the built-in portfolio's members after the default (``portfolio_size`` counts
    the default), each with ``pins`` applied and fitted to the input; a configuration equal to an earlier one is
    dropped. The portfolio follows ``warm_start``; a user's own space has none, and its default only when every
    parameter has one."""
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def add(base: dict[str, Any] | None, attrs: dict[str, Any]) -> None:
        params = default_params(modality, pins, input_shape, base=base)
        if all(params != queued for queued, _ in out):
            out.append((params, attrs))

    if warm_start and defaults_for(modality):
        add(None, {"warm_start": True})
    if isinstance(initial, str):
        initial = portfolio.load_configs(initial, modality, _shape(modality, input_shape))
    for i, config in enumerate(initial or (), 1):
        add(config, {"initial_config": i})
    if warm_start:
        for i, member in enumerate(portfolio.builtin(modality)[:max(portfolio_size - 1, 0)], 2):
            add(member, {"portfolio": i})
    return out


def _draw(p: Param, rng: Any, input_shape: tuple[int, ...] | None) -> Any:
    """A value of ``p`` drawn uniformly from its range (log-uniformly on a log scale) or its choices."""
    low, high = param_bounds(p, input_shape)
    if p.kind == "int":
        if p.log:
            drawn = round(math.exp(rng.uniform(math.log(low), math.log(high))))
            return min(max(int(drawn), int(low)), int(high))
        return rng.randint(int(low), int(high))
    if p.kind == "float":
        drawn = (math.exp(rng.uniform(math.log(low), math.log(high))) if p.log
                 else rng.uniform(float(low), float(high)))
        return min(max(drawn, float(low)), float(high))  # exp(log(high)) can overshoot by an ulp
    return rng.choice(list(p.choices))


def neighbour_params(modality: str | SearchSpace, rng: Any, pins: dict[str, Any] | None = None,
                     input_shape: tuple[int, ...] | None = None, *, redraw: int = 2) -> dict[str, Any]:
    """The default configuration with ``redraw`` of its unpinned parameters drawn afresh, uniformly from their
    ranges (log-uniform where the space is on a log scale) with ``rng`` (a ``random.Random``): a configuration near a
    known-sound one, so early exploration is not spent on random configurations far from anything that works.
    A user's conditional param that a redraw makes active and that has no default is drawn too."""
    pins = pins or {}
    base = default_params(modality, pins, input_shape)
    input_shape = _shape(modality, input_shape)
    space = space_for(modality)
    names = sorted(n for n in base if n not in pins)
    values = dict(defaults_for(modality), **base)
    for name in rng.sample(names, min(redraw, len(names))):
        values[name] = _draw(next(q for q in space if q.name == name), rng, input_shape)
    params: dict[str, Any] = {}
    for p in space:
        if is_active(p, params):
            if p.name not in values:
                values[p.name] = pins[p.name] if p.name in pins else _draw(p, rng, input_shape)
            params[p.name] = values[p.name]
    return params


def _conv_filters(params: dict[str, Any]) -> list[int]:
    return [min(int(params["filters"]) * 2**i, 256) for i in range(int(params["conv_blocks"]))]


def count_params(params: dict[str, Any], modality: str, input_shape: tuple[int, ...], num_classes: int,
                 vocab_size: int | None = None) -> int:
    """Exact trainable + non-trainable parameter count of the model ``models.py`` builds from ``params``."""
    if modality == "image":
        h, w, c = input_shape
        k = int(params["kernel_size"])
        total = 0
        channels = c
        for f in _conv_filters(params):
            total += k * k * channels * f + f  # conv kernel + bias
            if params["batch_norm"]:
                total += 4 * f  # gamma, beta, moving mean, moving variance
            channels = f
            h, w = h // 2, w // 2
        features = channels if params["global_pooling"] else h * w * channels
        for _ in range(int(params["dense_layers"])):
            units = int(params["dense_units"])
            total += features * units + units
            features = units
        return total + features * num_classes + num_classes
    if modality == "text":
        if vocab_size is None:
            raise ValueError("vocab_size is needed to count a text model's parameters")
        emb = int(params["embedding_dim"])
        units = int(params["lstm_units"])
        directions = 2 if params["bidirectional"] else 1
        total = vocab_size * emb
        features = emb
        for _ in range(int(params["lstm_layers"])):
            total += directions * 4 * (features * units + units * units + units)
            features = units * directions
        dense = int(params["dense_units"])
        if dense:
            total += features * dense + dense
            features = dense
        return total + features * num_classes + num_classes
    if modality == "sequence":
        return _count_sequence(params, input_shape, num_classes)
    raise ConfigError(f"unknown modality {modality!r}; allowed: image, text, sequence")


def _count_sequence(params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> int:
    """Parameters of :func:`hpo.models.build_sequence`: GRU (Keras' reset_after: two bias vectors per gate),
    LSTM, or Conv1D blocks (kernel + bias), then the softmax layer on the read-out features."""
    steps, features = int(input_shape[0]), int(input_shape[1])
    layers, units = int(params["layers"]), int(params["units"])
    total = 0
    if params["cell"] == "conv1d":
        k = int(params["kernel_size"])
        for pool in conv1d_pools(steps, layers):
            total += k * features * units + units
            features = units
            steps = steps // 2 if pool else steps
        if params["readout"] == "final":
            features *= steps  # flattened
    else:
        gates, biases = (3, 2) if params["cell"] == "gru" else (4, 1)
        directions = 2 if params.get("bidirectional") else 1
        for _ in range(layers):
            total += directions * gates * (features * units + units * units + biases * units)
            features = units * directions
    return total + features * num_classes + num_classes
