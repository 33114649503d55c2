"""Range checks on a TrialResult that came from elsewhere (a remote worker), before any of its numbers are believed.

:func:`check_result` raises :class:`~hpo.exceptions.TrialFailed` with a reason that names the first bad field, e.g.
``val_metrics.accuracy = 7.5 is not in [0, 1]``. What is checked:

- accuracies (``val_metrics`` / ``test_metrics`` keys and ``history`` series whose name ends in ``accuracy``) are
  finite and in [0, 1];
- losses (keys and series whose name ends in ``loss``) are finite; other metrics and history values are finite;
- ``health`` scores are in [0, 1] (the design's scale); ``train_seconds`` is finite and >= 0; ``param_count`` >= 0;
- ``epochs_run`` is an int in [0, job.max_epochs]; ``best_epoch`` (if any) is in [1, epochs_run];
- every ``history`` series has exactly ``epochs_run`` entries.

None stands for a value that could not be measured (the protocol turns NaN into None) and is allowed everywhere.
The protocol already checked the types (TrialResult.from_dict), but JSON parsers accept ``NaN`` / ``Infinity``.
"""

from __future__ import annotations

import math
from typing import Any

from ..exceptions import TrialFailed
from ..protocol import TrialJob, TrialResult

__all__ = ["check_result", "check_epoch_metrics"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(where: str, name: str, value: Any) -> None:
    """One metric value: None is allowed; numbers must be finite; accuracies in [0, 1]."""
    if value is None:
        return
    if not _number(value):
        raise TrialFailed(f"{where} = {value!r} is not a number")
    if not math.isfinite(value):
        kind = "loss" if name.endswith("loss") else "value"
        raise TrialFailed(f"{where} = {value!r} is not finite (a {kind} must be a finite number)")
    if name.endswith("accuracy") and not 0.0 <= value <= 1.0:
        raise TrialFailed(f"{where} = {value!r} is not in [0, 1]")


def check_epoch_metrics(metrics: dict[str, Any], where: str = "metrics") -> None:
    """The metrics of one epoch report (TrialFailed naming the field if one is out of range)."""
    for name, value in metrics.items():
        _check_value(f"{where}.{name}", name, value)


def check_result(result: TrialResult, job: TrialJob) -> None:
    """Raise TrialFailed naming the first field of ``result`` that is out of range for ``job`` (see module doc)."""
    epochs = result.epochs_run
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        raise TrialFailed(f"epochs_run = {epochs!r} is not an integer")
    if not 0 <= epochs <= job.max_epochs:
        raise TrialFailed(f"epochs_run = {epochs} is not in [0, {job.max_epochs}] (the job's max_epochs)")
    best = result.best_epoch
    if best is not None and (not isinstance(best, int) or isinstance(best, bool) or not 1 <= best <= epochs):
        raise TrialFailed(f"best_epoch = {best!r} is not in [1, {epochs}] (epochs_run)")
    for group, values in (("val_metrics", result.val_metrics), ("test_metrics", result.test_metrics)):
        for name, value in (values or {}).items():
            _check_value(f"{group}.{name}", name, value)
    for name, series in (result.history or {}).items():
        if not isinstance(series, list):
            raise TrialFailed(f"history.{name} is not a list")
        if len(series) != epochs:
            raise TrialFailed(f"history.{name} has {len(series)} entries, but epochs_run = {epochs}")
        for i, value in enumerate(series):
            _check_value(f"history.{name}[{i}]", name, value)
    for name, value in (result.health or {}).items():
        if value is None:
            continue
        if not _number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise TrialFailed(f"health.{name} = {value!r} is not in [0, 1]")
    seconds = result.train_seconds
    if not _number(seconds) or not math.isfinite(seconds) or seconds < 0:
        raise TrialFailed(f"train_seconds = {seconds!r} is not a finite number >= 0")
    count = result.param_count
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise TrialFailed(f"param_count = {count!r} is not an integer >= 0")
