"""What can be optimized, as plain data: the built-in datasets' metadata and the search spaces.

Part of the light core (standard library only; no numpy, Keras or Optuna), so the command line, the REST API, the
config and the orchestration describe datasets and check parameters without loading any data or framework.

Datasets: :data:`DATASET_NAMES`, :func:`info` (modality, input shape, classes, vocabulary; options applied),
:func:`default_options`, the options' bounds (:data:`OPTION_MIN`, :data:`OPTION_MAX`, :data:`OPTION_HELP`) and
:func:`is_generated`. Where their files live: :mod:`hpo.datafiles`; loading them: :mod:`hpo.datasets` (trainer side).

Search spaces: :data:`CNN_SPACE` (images) and :data:`LSTM_SPACE` (text), tuples of :class:`Param` (ranges, choices,
conditionals), their first-trial :data:`DEFAULTS`, :func:`space_for`, :func:`all_param_names`, the checks of a pinned
value (:func:`coerce_pin`, strings from the command line) and of a job's params (:func:`validate_params`, strict JSON
types, the worker side). Asking an Optuna trial for values: :mod:`hpo.search_space`.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .exceptions import ConfigError, DatasetError, ProtocolError

__all__ = [
    "DatasetName", "DATASET_NAMES", "DatasetInfo", "info", "default_options", "is_generated",
    "OPTION_MIN", "OPTION_MAX", "OPTION_HELP",
    "Modality", "LrSchedule", "Param", "CNN_SPACE", "LSTM_SPACE", "DEFAULTS", "space_for", "all_param_names",
    "max_conv_blocks", "param_bounds", "is_active", "coerce_pin", "validate_params",
]

# -- datasets ----------------------------------------------------------------------------------------------------------

DatasetName = Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "gtsrb", "imdb", "reuters", "synthetic_images",
                      "synthetic_text"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
Modality = Literal["image", "text"]
#: learning rate within a trial: constant, or cosine decay from the trial's learning_rate to 0 over its max_epochs
LrSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset (no data).

    ``input_shape`` excludes the batch axis: ``(H, W, C)`` for images, ``(sequence_length,)`` for text.
    ``vocab_size`` is set for text only: every token id in the loaded data is ``< vocab_size``.
    """

    name: str
    modality: Literal["image", "text"]
    input_shape: tuple[int, ...]
    num_classes: int
    description: str
    vocab_size: int | None = None


@dataclass(frozen=True)
class _Spec:
    name: str
    modality: Literal["image", "text"]
    num_classes: int
    description: str
    image_shape: tuple[int, ...] | None = None  # fixed-size image datasets
    defaults: dict[str, int] = field(default_factory=dict)
    generated: bool = False  # made in memory, no files


_REGISTRY: dict[str, _Spec] = {
    s.name: s
    for s in (
        _Spec("mnist", "image", 10, "MNIST handwritten digits, 28x28 grayscale, 60k train / 10k test", (28, 28, 1)),
        _Spec("fashion_mnist", "image", 10, "Fashion-MNIST clothing, 28x28 grayscale, 60k train / 10k test",
              (28, 28, 1)),
        _Spec("cifar10", "image", 10, "CIFAR-10 objects, 32x32 RGB, 50k train / 10k test", (32, 32, 3)),
        _Spec("cifar100", "image", 100, "CIFAR-100 objects (fine labels), 32x32 RGB, 50k train / 10k test",
              (32, 32, 3)),
        _Spec("gtsrb", "image", 43, "German Traffic Sign Recognition Benchmark, RGB cropped to the sign's ROI and "
              "resized to image_size, 39,209 train / 12,630 test", None, {"image_size": 32}),
        _Spec("imdb", "text", 2, "IMDB movie review sentiment, word ids, 25k train / 25k test", None,
              {"vocab_size": 10000, "sequence_length": 200}),
        _Spec("reuters", "text", 46, "Reuters newswire topics, word ids, 8,982 train / 2,246 test (keras split)",
              None, {"vocab_size": 10000, "sequence_length": 200}),
        _Spec("synthetic_images", "image", 4, "generated oriented bars (class = orientation) on noisy backgrounds, "
              "16x16 RGB, 1,600 train / 400 test (for smoke runs and tests)", (16, 16, 3), generated=True),
        _Spec("synthetic_text", "text", 4, "generated token sequences with class-specific signal tokens, "
              "1,600 train / 400 test (for smoke runs and tests)", None, {"vocab_size": 200, "sequence_length": 32},
              generated=True),
    )
}
assert tuple(_REGISTRY) == DATASET_NAMES

OPTION_MIN = {"vocab_size": 3, "sequence_length": 1, "image_size": 8}
#: the most a job may ask for (a larger embedding or input would exhaust a worker's memory, not train)
OPTION_MAX = {"vocab_size": 1_000_000, "sequence_length": 100_000, "image_size": 1024}
OPTION_HELP = {
    "vocab_size": "integer >= 3 (ids 0, 1, 2 are padding, start and out-of-vocabulary)",
    "sequence_length": "integer >= 1",
    "image_size": "integer >= 8 (images are resized to image_size x image_size)",
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def spec(name: str) -> _Spec:
    """The registry entry of ``name`` (case and '-' forgiven), or DatasetError listing the allowed names."""
    if not isinstance(name, str):
        raise DatasetError(f"Dataset name must be a string, got {name!r}. Allowed: {', '.join(DATASET_NAMES)}.")
    key = _key(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, DATASET_NAMES, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DatasetError(f"Unknown dataset '{name}'.{hint} Allowed: {', '.join(DATASET_NAMES)}.")


def is_generated(name: str) -> bool:
    """True for a dataset generated in memory (synthetic_images, synthetic_text): it needs no files. False for every
    other name, datasets or not."""
    found = _REGISTRY.get(_key(name)) if isinstance(name, str) else None
    return found is not None and found.generated


def default_options(name: str) -> dict:
    """The dataset's options and their default values (a fresh dict), e.g. ``{"image_size": 32}`` for gtsrb.

    Datasets without options return ``{}``.
    """
    return dict(spec(name).defaults)


def resolve_options(name: str, options: Mapping | None) -> dict[str, int]:
    """Validate ``options`` against the dataset's option set and fill defaults (missing or None -> default)."""
    entry = spec(name)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"Dataset options must be a dict, got {type(options).__name__}.")
    unknown = sorted(str(k) for k in options if k not in entry.defaults)
    if unknown:
        allowed = ", ".join(f"{k} ({OPTION_HELP[k]})" for k in entry.defaults) or "none"
        raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for dataset '{entry.name}'. "
                          f"Options it accepts: {allowed}.", field=unknown[0])
    out = dict(entry.defaults)
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # int or a numpy integer
            raise ConfigError(f"Dataset option {key} must be an {OPTION_HELP[key]}, got {value!r}.", field=key)
        value = int(value)
        if value < OPTION_MIN[key]:
            raise ConfigError(f"Dataset option {key}={value} is too small for '{entry.name}': "
                              f"must be an {OPTION_HELP[key]}.", field=key)
        if value > OPTION_MAX[key]:
            raise ConfigError(f"Dataset option {key}={value} is too large for '{entry.name}': "
                              f"allowed at most {OPTION_MAX[key]}.", field=key)
        out[key] = value
    return out


def info(name: str, options: dict | None = None) -> DatasetInfo:
    """Describe dataset ``name`` with ``options`` applied. No file access.

    Options: ``vocab_size`` and ``sequence_length`` (text), ``image_size`` (gtsrb); a missing or ``None`` option
    takes the dataset's default (:func:`default_options`).

    Raises:
        DatasetError: unknown dataset (the message lists the allowed names and the closest match).
        ConfigError: unknown option for this dataset or a value out of range (``field`` names the option).
    """
    entry = spec(name)
    opts = resolve_options(entry.name, options)
    if entry.modality == "text":
        return DatasetInfo(entry.name, "text", (opts["sequence_length"],), entry.num_classes, entry.description,
                           opts["vocab_size"])
    if "image_size" in opts:
        shape = (opts["image_size"], opts["image_size"], 3)
    else:
        assert entry.image_shape is not None
        shape = entry.image_shape
    return DatasetInfo(entry.name, "image", shape, entry.num_classes, entry.description, None)


# -- search spaces -----------------------------------------------------------------------------------------------------

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


def param_bounds(p: Param, input_shape: tuple[int, ...] | None) -> tuple[float | None, float | None]:
    """``p``'s (low, high); ``conv_blocks`` is capped by :func:`max_conv_blocks` of ``input_shape``."""
    if p.name == "conv_blocks" and input_shape is not None:
        return p.low, min(int(p.high), max_conv_blocks(input_shape))
    return p.low, p.high


def is_active(p: Param, params: dict[str, Any]) -> bool:
    """Whether conditional ``p`` applies given the already-chosen ``params``."""
    if p.active_if is None:
        return True
    name, cond = p.active_if
    assert cond == ">0"
    return params.get(name, 0) > 0


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
        raise ConfigError(f"{p.name}={value!r} is not a valid {p.kind}; {p.name} is {p.describe()}",
                          field=p.name) from None
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


def validate_params(modality: str, params: Any, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Check a trial's ``params`` against the space the orchestrator samples from; return them as the trainer uses
    them (in the space's order, floats as floats).

    Every active parameter must be present, with the right type, inside its range (for ``conv_blocks``: capped by
    ``input_shape`` like :func:`hpo.search_space.suggest` caps it) or one of its choices; conditional parameters
    (``dense_units`` of the CNN) must be absent when inactive; unknown names are refused. Raises
    :class:`ProtocolError` listing every problem, each naming the parameter, the bad value and what is allowed."""
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
            if not is_active(p, checked):
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
