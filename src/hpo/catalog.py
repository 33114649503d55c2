"""What can be optimized, as plain data: the built-in datasets' metadata and the search spaces.

Part of the light core (standard library only; no numpy, Keras or Optuna), so the command line, the REST API, the
config and the orchestration describe datasets and check parameters without loading any data or framework.

Datasets: :data:`DATASET_NAMES`, :func:`info` (modality, input shape, classes, vocabulary; options applied),
:func:`default_options`, the options' bounds (:data:`OPTION_MIN`, :data:`OPTION_MAX`, :data:`OPTION_HELP`) and
:func:`is_generated`. Where their files live: :mod:`hpo.datafiles`; loading them: :mod:`hpo.datasets` (trainer side).

Search spaces (defined in :mod:`hpo.spaces`, re-exported here): :data:`CNN_SPACE` (images), :data:`LSTM_SPACE` (text) and :data:`SEQUENCE_SPACE` (real-valued
sequences: GRU/LSTM/1-D convolution), tuples of :class:`Param` (ranges, choices,
conditionals), their first-trial :data:`DEFAULTS`, :func:`space_for`, :func:`all_param_names`, the checks of a pinned
value (:func:`coerce_pin`, strings from the command line) and of a job's params (:func:`validate_params`, strict JSON
types, the worker side). Asking an Optuna trial for values: :mod:`hpo.search_space`. A user's own space is a
:class:`SearchSpace` (made from plain data by :func:`hpo.user_space.parse_space`); :func:`space_for`,
:func:`defaults_for` and :func:`validate_params` take one wherever they take a modality.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from .exceptions import ConfigError, DatasetError
# the search spaces are part of what can be optimized: defined in hpo.spaces, re-exported here
from .spaces import __all__ as _SPACES_ALL
from .spaces import (CNN_SPACE, DEFAULTS, LSTM_SPACE, SEQUENCE_SPACE, SPACE_LABELS, LrSchedule, Modality, Param, SearchSpace,
                     all_param_names, coerce_pin, condition_holds, conv1d_pools, defaults_for, describe_condition,
                     is_active, max_conv_blocks, missing_defaults, param_bounds, parse_comparison, same_value,
                     space_for, validate_params)  # noqa: F401

__all__ = [
    "DatasetName", "DATASET_NAMES", "DatasetInfo", "info", "default_options", "is_generated",
    "OPTION_MIN", "OPTION_MAX", "OPTION_HELP", *_SPACES_ALL,
]

# -- datasets ----------------------------------------------------------------------------------------------------------

DatasetName = Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "gtsrb", "imdb", "reuters", "mnist1d",
                      "synthetic_images", "synthetic_text", "synthetic_sequence"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset (no data).

    ``input_shape`` excludes the batch axis: ``(H, W, C)`` for images, ``(sequence_length,)`` for text, ``(T, F)``
    (steps, features per step) for real-valued sequences.
    ``vocab_size`` is set for text only: every token id in the loaded data is ``< vocab_size``.
    """

    name: str
    modality: Modality
    input_shape: tuple[int, ...]
    num_classes: int
    description: str
    vocab_size: int | None = None


@dataclass(frozen=True)
class _Spec:
    name: str
    modality: Modality
    num_classes: int
    description: str
    shape: tuple[int, ...] | None = None  # fixed input shape: (H, W, C) images, (T, F) sequences
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
        _Spec("mnist1d", "sequence", 10, "MNIST-1D (Greydanus 2020): 1-D digit templates, shifted, scaled, sheared "
              "and noised, 40 steps x 1 feature, 4,000 train / 1,000 test, generated offline by the mnist1d "
              "package's make_dataset (its defaults, seed 42)", (40, 1), generated=True),
        _Spec("synthetic_images", "image", 4, "generated oriented bars (class = orientation) on noisy backgrounds, "
              "16x16 RGB, 1,600 train / 400 test (for smoke runs and tests)", (16, 16, 3), generated=True),
        _Spec("synthetic_text", "text", 4, "generated token sequences with class-specific signal tokens, "
              "1,600 train / 400 test (for smoke runs and tests)", None, {"vocab_size": 200, "sequence_length": 32},
              generated=True),
        _Spec("synthetic_sequence", "sequence", 4, "generated noisy waveforms (class = sine, square, sawtooth or "
              "chirp) plus a distracting sine, 32 steps x 2 features, 1,600 train / 400 test (for smoke runs and "
              "tests)", (32, 2), generated=True),
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
    """True for a dataset generated in memory (mnist1d and the synthetic_* ones): it needs no files. False for every
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
        assert entry.shape is not None
        shape = entry.shape
    return DatasetInfo(entry.name, entry.modality, shape, entry.num_classes, entry.description, None)
