"""The CNN (images) and LSTM (text) search spaces, as data.

A space is a tuple of :class:`Param`. :func:`suggest` asks an Optuna trial for every parameter that is not pinned;
pinned parameters (``activation=relu`` on the command line) are fixed instead of searched, and still recorded in the
trial's params (as a one-choice categorical) so that every trial's params are complete.

Nothing here imports TensorFlow: parameter counts are computed analytically by :func:`count_params`, which
``models.py`` must agree with exactly (a test checks it), so oversized configurations are rejected before any job is
dispatched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .exceptions import ConfigError, ProtocolError

__all__ = [
    "Param",
    "CNN_SPACE",
    "LSTM_SPACE",
    "space_for",
    "all_param_names",
    "max_conv_blocks",
    "coerce_pin",
    "suggest",
    "default_params",
    "neighbour_params",
    "count_params",
    "validate_params",
]

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class Param:
    name: str
    kind: Literal["int", "float", "categorical"]
    help: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    #: the param is only used when this (name, predicate) holds for the already-suggested params
    active_if: tuple[str, str] | None = None

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(_fmt(c) for c in self.choices)
        scale = " (log scale)" if self.log else ""
        return f"{self.kind} in [{_fmt(self.low)}, {_fmt(self.high)}]{scale}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


_BOOL = (True, False)

CNN_SPACE: tuple[Param, ...] = (
    Param("conv_blocks", "int", "convolution blocks (conv + pool); capped so pooling never collapses the image", 1, 4),
    # 16..64: the first block runs at full resolution, where 128 filters cost about twice the epoch time of 64;
    # wider layers come from the doubling per block (up to 256)
    Param("filters", "categorical", "filters of the first block; doubled each block, at most 256", choices=(16, 32, 64)),
    Param("kernel_size", "categorical", "convolution kernel size", choices=(3, 5)),
    Param("activation", "categorical", "activation of conv and dense layers", choices=("relu", "elu", "gelu", "swish")),
    Param("batch_norm", "categorical", "batch normalization after each convolution", choices=_BOOL),
    Param("global_pooling", "categorical", "global average pooling (true) or flatten (false) before the head", choices=_BOOL),
    Param("dense_layers", "int", "dense layers in the head", 0, 2),
    Param("dense_units", "categorical", "units per dense layer", choices=(64, 128, 256, 512), active_if=("dense_layers", ">0")),
    Param("dropout", "float", "dropout rate before each dense layer and the output", 0.0, 0.5),
    Param("learning_rate", "float", "optimizer learning rate", 1e-4, 1e-2, log=True),
    Param("optimizer", "categorical", "optimizer", choices=("adam", "adamw", "sgd", "rmsprop")),
    Param("batch_size", "categorical", "batch size per replica", choices=(32, 64, 128, 256)),
    Param("weight_decay", "float", "L2 weight decay on conv and dense kernels", 1e-6, 1e-3, log=True),
    Param("augmentation", "categorical", "light augmentation (random shifts) while training", choices=("none", "light")),
)

LSTM_SPACE: tuple[Param, ...] = (
    Param("embedding_dim", "categorical", "embedding size", choices=(32, 64, 128)),
    Param("lstm_layers", "int", "stacked LSTM layers", 1, 2),
    Param("lstm_units", "categorical", "units per LSTM layer", choices=(32, 64, 128)),
    Param("bidirectional", "categorical", "bidirectional LSTM layers", choices=_BOOL),
    Param("dropout", "float", "dropout rate after the LSTM stack and the dense layer", 0.0, 0.5),
    Param("dense_units", "categorical", "units of the dense layer before the output (0 = none)", choices=(0, 32, 64, 128)),
    Param("learning_rate", "float", "optimizer learning rate", 1e-4, 1e-2, log=True),
    Param("optimizer", "categorical", "optimizer", choices=("adam", "adamw", "rmsprop")),
    Param("batch_size", "categorical", "batch size per replica", choices=(32, 64, 128)),
)


#: The first trial of a run (``warm_start=true``): a sound, generic configuration per space -- what a practitioner
#: would write by hand first (the usual Keras-tutorial recipes: conv/BN/ReLU blocks, Adam at 1e-3, moderate dropout;
#: the flattened features go straight to the softmax: a hidden dense layer cost ~20 % more per epoch on CPUs for no
#: better accuracy in 10-epoch Fashion-MNIST runs over three seeds). Not tuned further to any dataset; the sampler
#: searches around and beyond it from the second trial on.
DEFAULTS: dict[str, dict[str, Any]] = {
    "image": dict(conv_blocks=2, filters=32, kernel_size=3, activation="relu", batch_norm=True, global_pooling=False,
                  dense_layers=0, dense_units=128, dropout=0.25, learning_rate=1e-3, optimizer="adam",
                  batch_size=64, weight_decay=1e-5, augmentation="none"),
    "text": dict(embedding_dim=64, lstm_layers=1, lstm_units=64, bidirectional=False, dropout=0.2, dense_units=64,
                 learning_rate=1e-3, optimizer="adam", batch_size=64),
}


def space_for(modality: str) -> tuple[Param, ...]:
    if modality == "image":
        return CNN_SPACE
    if modality == "text":
        return LSTM_SPACE
    raise ConfigError(f"unknown modality {modality!r}; allowed: image, text")


def all_param_names() -> set[str]:
    return {p.name for p in CNN_SPACE} | {p.name for p in LSTM_SPACE}


def max_conv_blocks(input_shape: tuple[int, ...]) -> int:
    """Most conv blocks (each halves height and width) that keep the feature map at least 2x2 (at most 4)."""
    side = min(input_shape[0], input_shape[1])
    blocks = 0
    while blocks < 4 and side // 2 >= 2:
        side //= 2
        blocks += 1
    return max(blocks, 1)


def _bounds(p: Param, input_shape: tuple[int, ...] | None) -> tuple[float | None, float | None]:
    if p.name == "conv_blocks" and input_shape is not None:
        return p.low, min(int(p.high), max_conv_blocks(input_shape))
    return p.low, p.high


def coerce_pin(p: Param, value: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """Convert a pinned value (possibly a string from the CLI) to the param's type, or raise ConfigError."""
    if p.kind == "categorical":
        if p.choices == _BOOL and isinstance(value, str):
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
                value.strip().lower(), value)
        for choice in p.choices:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and value.strip().lower() == _fmt(choice).lower():
                return choice
        raise ConfigError(f"{p.name}={value!r} is not allowed; {p.name} is {p.describe()}")
    try:
        if isinstance(value, bool):
            raise ValueError
        if p.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number: float = int(value) if not isinstance(value, str) else int(value.strip())
        else:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{p.name}={value!r} is not a valid {p.kind}; {p.name} is {p.describe()}") from None
    low, high = _bounds(p, input_shape)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfigError(f"{p.name}={value} is out of range; allowed: {p.kind} in [{_fmt(low)}, {_fmt(high)}]")
    return number


def _is_active(p: Param, params: dict[str, Any]) -> bool:
    if p.active_if is None:
        return True
    name, cond = p.active_if
    assert cond == ">0"
    return params.get(name, 0) > 0


def suggest(trial: Any, modality: str, pins: dict[str, Any] | None = None,
            input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Ask ``trial`` (an ``optuna.Trial``) for one configuration of the modality's space; pins are fixed."""
    pins = pins or {}
    params: dict[str, Any] = {}
    for p in space_for(modality):
        if not _is_active(p, params):
            continue
        if p.name in pins:
            params[p.name] = trial.suggest_categorical(p.name, [pins[p.name]])
            continue
        low, high = _bounds(p, input_shape)
        if p.kind == "int":
            params[p.name] = trial.suggest_int(p.name, int(low), int(high))
        elif p.kind == "float":
            params[p.name] = trial.suggest_float(p.name, float(low), float(high), log=p.log)
        else:
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return params


def default_params(modality: str, pins: dict[str, Any] | None = None,
                   input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The space's default configuration with ``pins`` applied, fitted to ``input_shape`` (conv blocks capped so
    pooling never collapses the image); inactive parameters (dense_units without dense layers) are left out."""
    space = space_for(modality)
    values = dict(DEFAULTS[modality], **(pins or {}))
    params: dict[str, Any] = {}
    for p in space:
        if not _is_active(p, params):
            continue
        value = values[p.name]
        if p.name == "conv_blocks" and input_shape is not None and p.name not in (pins or {}):
            value = min(int(value), max_conv_blocks(input_shape))
        params[p.name] = coerce_pin(p, value, input_shape)
    return params


def neighbour_params(modality: str, rng: Any, pins: dict[str, Any] | None = None,
                     input_shape: tuple[int, ...] | None = None, *, redraw: int = 2) -> dict[str, Any]:
    """The default configuration with ``redraw`` of its unpinned parameters drawn afresh, uniformly from their
    ranges (log-uniform where the space is on a log scale) with ``rng`` (a ``random.Random``): a configuration near a
    known-sound one, so early exploration is not spent on random configurations far from anything that works."""
    pins = pins or {}
    base = default_params(modality, pins, input_shape)
    names = sorted(n for n in base if n not in pins)
    values = dict(DEFAULTS[modality], **base)
    for name in rng.sample(names, min(redraw, len(names))):
        p = next(q for q in space_for(modality) if q.name == name)
        low, high = _bounds(p, input_shape)
        if p.kind == "int":
            values[name] = rng.randint(int(low), int(high))
        elif p.kind == "float":
            drawn = (math.exp(rng.uniform(math.log(low), math.log(high))) if p.log
                     else rng.uniform(float(low), float(high)))
            values[name] = min(max(drawn, float(low)), float(high))  # exp(log(high)) can overshoot by an ulp
        else:
            values[name] = rng.choice(list(p.choices))
    params: dict[str, Any] = {}
    for p in space_for(modality):
        if _is_active(p, params):
            params[p.name] = values[p.name]
    return params


# -- validation of a job's params (the worker side) -----------------------------------------------------------------

def _preview(value: Any) -> str:
    """A short, safe rendering of a value from outside (never recursive, never huge)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, bool) or value is None:
        return _fmt(value) if value is not None else "null"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    return f"a {type(value).__name__}"


def _check_value(p: Param, value: Any, input_shape: tuple[int, ...] | None) -> Any:
    """``value`` as the trainer will use it, or ProtocolError naming the param, the value and what is allowed.

    Strict JSON typing (no string coercion, unlike :func:`coerce_pin`): ints are JSON integers, floats are finite
    numbers, categorical values are one of the choices with the choice's type (``true`` is not ``1``)."""
    where = f"params.{p.name}={_preview(value)}"
    if p.kind == "categorical":
        for choice in p.choices:
            if type(value) is type(choice) and value == choice:
                return choice
        raise ProtocolError(f"{where} is not allowed; allowed: {p.describe()}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (p.kind == "int" and isinstance(value, float)):
        raise ProtocolError(f"{where} is not a{'n' if p.kind == 'int' else ''} {p.kind}; allowed: {p.describe()}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{where} is not a finite number; allowed: {p.describe()}")
    low, high = _bounds(p, input_shape)
    if (low is not None and value < low) or (high is not None and value > high):
        scale = " (log scale)" if p.log else ""
        shape = (f" for input shape {'x'.join(str(d) for d in input_shape)}"
                 if p.name == "conv_blocks" and input_shape is not None else "")
        raise ProtocolError(f"{where} is out of range{shape}; allowed: {p.kind} in [{_fmt(low)}, {_fmt(high)}]{scale}")
    return int(value) if p.kind == "int" else float(value)


def validate_params(modality: str, params: Any, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Check a trial's ``params`` against the space the orchestrator samples from; return them as the trainer uses
    them (in the space's order, floats as floats).

    Every active parameter must be present, with the right type, inside its range (for ``conv_blocks``: capped by
    ``input_shape`` like :func:`suggest` caps it) or one of its choices; conditional parameters (``dense_units`` of
    the CNN) must be absent when inactive; unknown names are refused. Raises :class:`ProtocolError` listing every
    problem, each naming the parameter, the bad value and what is allowed."""
    try:
        space = space_for(modality)
    except ConfigError as exc:
        raise ProtocolError(str(exc)) from None
    if not isinstance(params, dict):
        raise ProtocolError(f"params must be an object of parameter names to values, got {_preview(params)}")
    label = "CNN (image)" if modality == "image" else "LSTM (text)"
    names = [p.name for p in space]
    problems: list[str] = []
    odd_keys = [k for k in params if not isinstance(k, str)]
    if odd_keys:
        problems.append(f"parameter names must be strings, got {_preview(odd_keys[0])}")
    unknown = sorted(k for k in params if isinstance(k, str) and k not in names)
    for name in unknown[:5]:
        other = " (a parameter of the other search space)" if name in all_param_names() else ""
        problems.append(f"unknown parameter {_preview(name)}{other}")
    if len(unknown) > 5:
        problems.append(f"... and {len(unknown) - 5} more unknown parameter(s)")
    checked: dict[str, Any] = {}
    for p in space:
        if p.active_if is not None:
            control, _cond = p.active_if
            if control not in checked:  # the controlling parameter is itself wrong: judge this one on its own
                if p.name in params:
                    try:
                        _check_value(p, params[p.name], input_shape)
                    except ProtocolError as exc:
                        problems.append(str(exc))
                continue
            if not _is_active(p, checked):
                if p.name in params:
                    problems.append(f"params.{p.name} is given but applies only when {control} > 0 "
                                    f"({control}={checked[control]}); leave it out")
                continue
        if p.name not in params:
            problems.append(f"missing parameter {p.name} ({p.describe()})")
            continue
        try:
            checked[p.name] = _check_value(p, params[p.name], input_shape)
        except ProtocolError as exc:
            problems.append(str(exc))
    if problems:
        hint = f" (the {label} search space has: {', '.join(names)})" if unknown or odd_keys else ""
        raise ProtocolError("invalid params: " + "; ".join(problems) + hint)
    return checked


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
    raise ConfigError(f"unknown modality {modality!r}; allowed: image, text")
