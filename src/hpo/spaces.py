"""The search spaces as plain data (part of the light core: standard library only).

:data:`CNN_SPACE` (images), :data:`LSTM_SPACE` (text) and :data:`SEQUENCE_SPACE` (real-valued sequences:
GRU/LSTM/1-D convolution), tuples of :class:`Param` (ranges, choices, conditionals), their first-trial
:data:`DEFAULTS`, :func:`space_for`, :func:`all_param_names`, the checks of a pinned value (:func:`coerce_pin`, strings
from the command line) and of a job's params (:func:`validate_params`, strict JSON types, the worker side). A user's own
space is a :class:`SearchSpace` (made from plain data by :func:`hpo.user_space.parse_space`); :func:`space_for`,
:func:`defaults_for` and :func:`validate_params` take one wherever they take a modality. Re-exported by
:mod:`hpo.catalog`; asking an Optuna trial for values is :mod:`hpo.search_space`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .exceptions import ConfigError, ProtocolError

__all__ = [
    "Modality", "LrSchedule", "Param", "SearchSpace", "defaults_for", "missing_defaults", "condition_holds",
    "describe_condition", "parse_comparison", "same_value", "CNN_SPACE", "LSTM_SPACE", "SEQUENCE_SPACE", "DEFAULTS",
    "SPACE_LABELS",
    "space_for", "all_param_names", "max_conv_blocks", "conv1d_pools", "param_bounds", "is_active", "coerce_pin",
    "validate_params",
]

#: image = (H, W, C) pixels; text = (sequence_length,) int32 token ids; sequence = (T, F) float32 real-valued steps
Modality = Literal["image", "text", "sequence"]
#: learning rate within a trial: constant, or cosine decay from the trial's learning_rate to 0 over its max_epochs
LrSchedule = Literal["constant", "cosine"]

@dataclass(frozen=True)
class Param:
    name: str
    kind: Literal["int", "float", "categorical"]
    help: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    #: the param is only used when this (name, condition) holds for the already-suggested params: a comparison of
    #: that (numeric) param with a number (">0", ">=2", "<0.5", "==1", "!=0"), or "in" (see active_values). A param
    #: whose controlling param is itself inactive is inactive. Conditions refer to params earlier in the space.
    active_if: tuple[str, str] | None = None
    #: with ``active_if=(name, "in")``: the param is used when ``params[name]`` is one of these values
    active_values: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(_fmt(c) for c in self.choices)
        scale = " (log scale)" if self.log else ""
        return f"{self.kind} in [{_fmt(self.low)}, {_fmt(self.high)}]{scale}"


@dataclass(frozen=True)
class SearchSpace:
    """A search space given as data (a user's own model: :func:`hpo.user_space.parse_space`): its ``params`` in
    order (conditions refer to earlier params) and the ``defaults`` given for some or all of them. They are the warm
    start (the first trial) when every param active under them has one (:func:`defaults_for`, :func:`missing_defaults`);
    otherwise the run has no warm-start trial."""

    name: str
    params: tuple[Param, ...]
    defaults: dict[str, Any] = field(default_factory=dict, hash=False)


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

#: Real-valued sequences (T steps x F features): a stack of GRU or LSTM layers, or of 1-D convolution blocks;
#: ``bidirectional`` applies to the recurrent cells only, ``kernel_size`` to conv1d only.
SEQUENCE_SPACE: tuple[Param, ...] = (
    Param("cell", "categorical", "gru / lstm: stacked recurrent layers; conv1d: 1-D convolution blocks (conv + relu, "
          "max-pooled by 2 while at least 4 steps remain)", choices=("gru", "lstm", "conv1d")),
    Param("layers", "int", "stacked recurrent layers or convolution blocks", 1, 3),
    Param("units", "categorical", "units per recurrent layer (per direction) or filters per convolution block",
          choices=(32, 64, 128)),
    Param("bidirectional", "categorical", "bidirectional recurrent layers", choices=_BOOL,
          active_if=("cell", "in"), active_values=("gru", "lstm")),
    Param("kernel_size", "categorical", "convolution kernel size", choices=(3, 5, 7), active_if=("cell", "in"),
          active_values=("conv1d",)),
    Param("readout", "categorical", "how the steps become one vector: final = the last recurrent state (conv1d: "
          "every step's features flattened), average / max = pooled over the steps",
          choices=("final", "average", "max")),
    Param("dropout", "float", "dropout rate between layers and before the output", 0.0, 0.5),
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
    # chosen on validation accuracy (10 epochs, cosine, seeds 42 and 7): on mnist1d conv1d 0.77-0.81 at lr 1e-3,
    # 0.90-0.92 at 3e-3, GRU/LSTM (1-2 layers) 0.33-0.45 and 3x slower on CPUs; synthetic_sequence agrees.
    # bidirectional is the value a switch to gru/lstm starts from (inactive for conv1d)
    "sequence": dict(cell="conv1d", layers=3, units=64, bidirectional=False, kernel_size=5, readout="final",
                     dropout=0.2, learning_rate=3e-3, optimizer="adam", batch_size=64),
}


_SPACES: dict[str, tuple[Param, ...]] = {"image": CNN_SPACE, "text": LSTM_SPACE, "sequence": SEQUENCE_SPACE}
#: how messages name each modality's search space
SPACE_LABELS: dict[str, str] = {"image": "CNN (image)", "text": "LSTM (text)",
                                "sequence": "sequence (GRU/LSTM/1-D conv)"}


def space_for(modality: str | SearchSpace) -> tuple[Param, ...]:
    """The params of a built-in modality's space, or of a :class:`SearchSpace` (a user's own)."""
    if isinstance(modality, SearchSpace):
        return modality.params
    if modality in _SPACES:
        return _SPACES[modality]
    raise ConfigError(f"unknown modality {modality!r}; allowed: {', '.join(_SPACES)}")


def defaults_for(modality: str | SearchSpace) -> dict[str, Any]:
    """The warm start (first trial) of a built-in modality's space (:data:`DEFAULTS`) or of a :class:`SearchSpace`
    (``{}`` when it has none: then there is no warm-start trial). A fresh dict."""
    if isinstance(modality, SearchSpace):
        return {} if missing_defaults(modality) else dict(modality.defaults)
    space_for(modality)  # ConfigError for an unknown modality
    return dict(DEFAULTS[modality])


def missing_defaults(space: SearchSpace) -> list[str]:
    """The params of ``space`` without a default that are active under the others' defaults (all of them when
    none has a default): empty when the space has a warm start."""
    values: dict[str, Any] = {}
    missing = []
    for p in space.params:
        if is_active(p, values):
            if p.name in space.defaults:
                values[p.name] = space.defaults[p.name]
            else:
                missing.append(p.name)
    return missing


def all_param_names() -> set[str]:
    return {p.name for space in _SPACES.values() for p in space}


def max_conv_blocks(input_shape: tuple[int, ...]) -> int:
    """Most conv blocks (each halves height and width) that keep the feature map at least 2x2 (at most 4)."""
    side = min(input_shape[0], input_shape[1])
    blocks = 0
    while blocks < 4 and side // 2 >= 2:
        side //= 2
        blocks += 1
    return max(blocks, 1)


def conv1d_pools(steps: int, blocks: int) -> list[bool]:
    """For each 1-D convolution block of the sequence space: whether a max-pooling by 2 follows it. A block pools
    while its input still has at least 4 steps, so the sequence never shrinks below 2 steps."""
    pools = []
    for _ in range(int(blocks)):
        pools.append(steps >= 4)
        if pools[-1]:
            steps //= 2
    return pools


def param_bounds(p: Param, input_shape: tuple[int, ...] | None) -> tuple[float | None, float | None]:
    """``p``'s (low, high); ``conv_blocks`` is capped by :func:`max_conv_blocks` of ``input_shape``."""
    if p.name == "conv_blocks" and input_shape is not None:
        return p.low, min(int(p.high), max_conv_blocks(input_shape))
    return p.low, p.high


def is_active(p: Param, params: Mapping[str, Any]) -> bool:
    """Whether conditional ``p`` applies given the already-chosen ``params`` (its controlling param absent, i.e.
    itself inactive: no)."""
    if p.active_if is None:
        return True
    name, cond = p.active_if
    if name not in params:
        return False
    return condition_holds(cond, p.active_values, params[name])


_COMPARISONS: dict[str, Any] = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
                                "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}


def parse_comparison(cond: Any) -> tuple[str, float] | None:
    """``">=2"`` -> ``(">=", 2.0)``; None when ``cond`` is not an operator (>, >=, <, <=, ==, !=) and a finite
    number."""
    text = cond.strip() if isinstance(cond, str) else ""
    for op in _COMPARISONS:
        if text.startswith(op):
            try:
                number = float(text[len(op):])
            except ValueError:
                return None
            return (op, number) if math.isfinite(number) else None
    return None


def same_value(a: Any, b: Any) -> bool:
    """Equal, with booleans never equal to numbers (``True`` is not ``1``)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def condition_holds(cond: str, values: tuple[Any, ...], value: Any) -> bool:
    """Whether a controlling param's ``value`` satisfies ``cond`` ("in": one of ``values``; else a comparison)."""
    if cond == "in":
        return any(same_value(value, v) for v in values)
    parsed = parse_comparison(cond)
    if parsed is None:
        raise ValueError(f"unknown condition {cond!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return bool(_COMPARISONS[parsed[0]](value, parsed[1]))


def describe_condition(p: Param) -> str:
    """``p``'s condition in words: "dense_layers > 0", "optimizer is sgd", "optimizer is one of sgd, adam"."""
    if p.active_if is None:
        return "always"
    name, cond = p.active_if
    if cond == "in":
        if len(p.active_values) == 1:
            return f"{name} is {_fmt(p.active_values[0])}"
        return f"{name} is one of {', '.join(_fmt(v) for v in p.active_values)}"
    parsed = parse_comparison(cond)
    if parsed is None:
        return f"{name} {cond}"
    return f"{name} {parsed[0]} {cond.strip()[len(parsed[0]):].strip()}"


def coerce_pin(p: Param, value: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """Convert a pinned value (possibly a string from the CLI) to the param's type, or raise ConfigError (its
    ``field`` is the param's name)."""
    if p.kind == "categorical":
        if p.choices == _BOOL and isinstance(value, str):
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
                value.strip().lower(), value)
        for choice in p.choices:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and value.strip().lower() == _fmt(choice).lower():
                return choice
        raise ConfigError(f"{p.name}={value!r} is not allowed; {p.name} is {p.describe()}", field=p.name)
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
        low, high = param_bounds(p, input_shape)  # this data's range (conv_blocks: what its images allow)
        raise ConfigError(f"{p.name}={value!r} is not a valid {p.kind}; allowed: {p.kind} in [{_fmt(low)}, "
                          f"{_fmt(high)}]{' (log scale)' if p.log else ''}", field=p.name) from None
    low, high = param_bounds(p, input_shape)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfigError(f"{p.name}={value} is out of range; allowed: {p.kind} in [{_fmt(low)}, {_fmt(high)}]",
                          field=p.name)
    return number


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
    low, high = param_bounds(p, input_shape)
    if (low is not None and value < low) or (high is not None and value > high):
        scale = " (log scale)" if p.log else ""
        shape = (f" for input shape {'x'.join(str(d) for d in input_shape)}"
                 if p.name == "conv_blocks" and input_shape is not None else "")
        raise ProtocolError(f"{where} is out of range{shape}; allowed: {p.kind} in [{_fmt(low)}, {_fmt(high)}]{scale}")
    return int(value) if p.kind == "int" else float(value)


def validate_params(modality: str | SearchSpace, params: Any,
                    input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Check a trial's ``params`` against the space the orchestrator samples from; return them as the trainer uses
    them (in the space's order, floats as floats).

    Every active parameter must be present, with the right type, inside its range (for ``conv_blocks``: capped by
    ``input_shape`` like :func:`hpo.search_space.suggest` caps it) or one of its choices; conditional parameters
    (``dense_units`` of the CNN) must be absent when inactive; unknown names are refused. Raises
    :class:`ProtocolError` listing every problem, each naming the parameter, the bad value and what is allowed.
    ``modality`` may be a :class:`SearchSpace` (a user's own; ``input_shape`` then caps nothing)."""
    try:
        space = space_for(modality)
    except ConfigError as exc:
        raise ProtocolError(str(exc)) from None
    if not isinstance(params, dict):
        raise ProtocolError(f"params must be an object of parameter names to values, got {_preview(params)}")
    own = isinstance(modality, SearchSpace)
    if own:
        label, input_shape = modality.name, None
    else:
        label = SPACE_LABELS[modality]
    names = [p.name for p in space]
    problems: list[str] = []
    odd_keys = [k for k in params if not isinstance(k, str)]
    if odd_keys:
        problems.append(f"parameter names must be strings, got {_preview(odd_keys[0])}")
    unknown = sorted(k for k in params if isinstance(k, str) and k not in names)
    for name in unknown[:5]:
        other = " (a parameter of the other search space)" if not own and name in all_param_names() else ""
        problems.append(f"unknown parameter {_preview(name)}{other}")
    if len(unknown) > 5:
        problems.append(f"... and {len(unknown) - 5} more unknown parameter(s)")
    checked: dict[str, Any] = {}
    inactive: set[str] = set()
    for p in space:
        if p.active_if is not None:
            control, _cond = p.active_if
            if control in inactive:  # controlled by an unused parameter: unused too
                inactive.add(p.name)
                if p.name in params:
                    problems.append(f"params.{p.name} is given but applies only when {describe_condition(p)} "
                                    f"({control} does not apply); leave it out")
                continue
            if control not in checked:  # the controlling parameter is itself wrong: judge this one on its own
                if p.name in params:
                    try:
                        _check_value(p, params[p.name], input_shape)
                    except ProtocolError as exc:
                        problems.append(str(exc))
                continue
            if not is_active(p, checked):
                inactive.add(p.name)
                if p.name in params:
                    problems.append(f"params.{p.name} is given but applies only when {describe_condition(p)} "
                                    f"({control}={_fmt(checked[control])}); leave it out")
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
