"""The one wire format: TrialJob (orchestrator -> trainer) and TrialResult (trainer -> orchestrator), versioned.

Local worker processes and RunPod workers receive the very same JSON job and run the very same
``training.run_trial``, so a trial gives the same numbers wherever it runs. Parsing is strict: a missing, unknown or
mistyped field, or another schema version, is a :class:`ProtocolError` that names the field. Non-finite floats are
carried as ``null`` so every document is standard JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from .exceptions import ProtocolError

__all__ = [
    "SCHEMA_VERSION",
    "TrialJob",
    "TrialResult",
    "EpochReport",
    "TrialStatus",
    "LrSchedule",
    "MAX_JOB_BYTES",
]

SCHEMA_VERSION = 1
#: RunPod jobs are small: the dataset is baked into the worker image, only names and numbers travel.
MAX_JOB_BYTES = 1024

TrialStatus = Literal["completed", "failed", "stopped"]
#: learning rate within a trial: constant, or cosine decay from the trial's learning_rate to 0 over its max_epochs
LrSchedule = Literal["constant", "cosine"]
Scalar = int | float | str | bool


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is dict:
        return f"object of {_describe(get_args(tp)[1])}"
    if origin is list:
        return f"list of {_describe(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any JSON value"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _conforms(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in get_args(tp) and isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in get_args(tp))
    if origin is dict:
        vt = get_args(tp)[1]
        return isinstance(value, dict) and all(isinstance(k, str) and _conforms(v, vt) for k, v in value.items())
    if origin is list:
        et = get_args(tp)[0]
        return isinstance(value, list) and all(_conforms(v, et) for v in value)
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


def _clean(value: Any) -> Any:
    """Deep-copy into JSON-safe values: non-finite floats -> None, numpy scalars -> Python scalars, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if hasattr(value, "item"):  # numpy scalar
        return _clean(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


class _Message:
    """Strict dict/JSON conversion shared by the protocol dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _clean(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        name = cls.__name__
        if not isinstance(data, dict):
            raise ProtocolError(f"{name} must be a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ProtocolError(f"{name}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ProtocolError(f"{name}: schema_version {version!r} is not supported; this hpo speaks "
                                f"version {SCHEMA_VERSION}")
        kwargs = {}
        for fname, f in fields.items():
            if fname not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ProtocolError(f"{name}: missing required field {fname!r} ({_describe(hints[fname])})")
                continue
            if not _conforms(data[fname], hints[fname]):
                raise ProtocolError(f"{name}: field {fname!r} must be {_describe(hints[fname])}, "
                                    f"got {json.dumps(data[fname], default=repr)[:80]}")
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


@dataclass(frozen=True)
class TrialJob(_Message):
    """Everything a trainer needs for one trial, and nothing else (no data, no secrets; < 1 KB as JSON)."""

    trial_id: str
    dataset: str
    params: dict[str, Scalar]
    max_epochs: int
    seed: int
    dataset_options: dict[str, int] = field(default_factory=dict)
    #: seed of the train/validation split; the same for every trial of a study, so all trials are compared on the
    #: same validation data (``seed`` varies per trial: weight init, shuffling). None: use ``seed``.
    split_seed: int | None = None
    min_epochs: int = 1
    patience: int = 3
    validation_split: float = 0.2
    data_fraction: float = 1.0
    use_multi_gpu: bool = True
    target_gpus: int = 0
    compute_health: bool = True
    lr_schedule: LrSchedule = "constant"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.min_epochs < 1 or self.patience < 1:
            raise ValueError("max_epochs, min_epochs and patience must be >= 1")
        if not 0.0 < self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {self.validation_split}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.target_gpus < 0:
            raise ValueError(f"target_gpus must be >= 0, got {self.target_gpus}")


@dataclass(frozen=True)
class EpochReport(_Message):
    """Sent after every epoch (worker subprocess line, RunPod progress_update)."""

    trial_id: str
    epoch: int  # 1-based
    metrics: dict[str, float | None]
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class TrialResult(_Message):
    """The outcome of one trial. Every trial's numbers travel in its own result."""

    trial_id: str
    status: TrialStatus
    history: dict[str, list[float | None]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int | None = None  # 1-based, by validation accuracy
    val_metrics: dict[str, float | None] = field(default_factory=dict)
    test_metrics: dict[str, float | None] = field(default_factory=dict)
    health: dict[str, float | None] = field(default_factory=dict)
    param_count: int | None = None
    train_seconds: float = 0.0
    executed_on: str = ""  # e.g. "local:worker-1 (pid 1234)", "runpod:<worker id>"
    device: str = ""  # e.g. "CPU", "2x GPU (MirroredStrategy)"
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # extras (gradient norms for plots, ...)
    schema_version: int = SCHEMA_VERSION

    @property
    def val_accuracy(self) -> float | None:
        return self.val_metrics.get("accuracy")

    def replace(self, **changes: Any) -> TrialResult:
        return dataclasses.replace(self, **changes)
