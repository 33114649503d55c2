"""Which completed trial is the run's best (single objective): the highest value, except that a final training
within one standard error of it is preferred.

A time-budgeted run ends by training its best configurations again on a long schedule (:mod:`hpo.finale`). Its
search trial's value is the highest of many noisy measurements on the same validation set (the winner's curse: the
maximum of several estimates is biased upwards), while a final's value is one fresh measurement of a configuration
trained several times longer. So the best final is the run's best unless a trial's value exceeds it by more than one
standard error of the validation estimate (the "one standard error rule" of model selection, with the longer
training as the preferred side). The standard error is the binomial one of the highest value read as a proportion
over the validation examples, ``sqrt(v (1 - v) / n)`` (about 1 pp for 90 % on 1,000 examples): exact for
``mode=simple`` (validation accuracy), an approximation for ``mode=health``'s blend. Without finals, or when the
number of validation examples is unknown, the best is simply the highest value (the earlier trial on ties).

Standard library only: the search, the results files and the plots all decide with this one function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Candidate", "standard_error", "choose_best", "of_trial", "of_record"]


@dataclass(frozen=True)
class Candidate:
    """A completed trial as the selection sees it."""

    number: int
    value: float
    final: bool = False  #: a final training (user attribute ``final_of``)
    examples: int | None = None  #: validation examples its value was measured on


def standard_error(value: float, examples: int | None) -> float:
    """Binomial standard error of ``value`` (clipped to [0, 1]) measured on ``examples``; 0 when unknown."""
    if not examples or examples <= 0 or not math.isfinite(value):
        return 0.0
    p = min(1.0, max(0.0, value))
    return math.sqrt(p * (1 - p) / examples)


def choose_best(candidates: Iterable[Candidate]) -> Candidate | None:
    """The run's best among ``candidates`` (finite values only; None when there is none): the best final when its
    value is at least the highest value minus :func:`standard_error` of it, else the highest (earlier on ties)."""
    done = sorted((c for c in candidates if math.isfinite(c.value)), key=lambda c: (-c.value, c.number))
    if not done:
        return None
    top = done[0]
    final = next((c for c in done if c.final), None)
    if final is not None and final.value >= top.value - standard_error(top.value, top.examples):
        return final
    return top


def of_trial(trial: Any) -> Candidate:
    """A completed single-objective Optuna trial: its value, ``final_of`` and its result's ``val_examples``."""
    attrs = trial.user_attrs
    details = (attrs.get("result") or {}).get("details") or {}
    return Candidate(trial.number, float(trial.value), "final_of" in attrs, details.get("val_examples"))


def of_record(record: Mapping[str, Any]) -> Candidate:
    """A completed trial's record (:func:`hpo.results.trial_records`)."""
    return Candidate(record["number"], float(record["value"]), record.get("final_of") is not None,
                     record.get("val_examples"))
