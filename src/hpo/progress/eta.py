"""How long the run still takes: an ETA that honours every limit of a run.

A run ends at the first of its limits (``hpo.search.Search.reserve``):

- **trials**: ``total`` trials done. Estimated by list scheduling (:func:`estimate_eta`) on ``concurrency`` slots
  from the observed seconds per trial (or, before any trial has finished, per epoch of the running trials);
- **epochs**: ``epoch_budget`` training epochs spent: epochs left x observed seconds per epoch / concurrency
  (:func:`estimate_eta_epochs`);
- **time**: ``timeout_minutes`` stops *starting* trials at the deadline; trials running then still finish. The same
  schedule, with no trial starting at or after the deadline: the ETA is the time left until the deadline, plus at
  most what a trial started just before it still needs (never the hours a trial count alone would take);
- **budget**: ``time_budget_minutes`` ends the run by a time, everything included: the ETA is never past it.

:func:`estimate_limits` combines them and says which limit is expected to end the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Eta", "LIMITS", "estimate_eta", "estimate_eta_epochs", "estimate_limits", "expected_trial_seconds"]

#: the limits an ETA may be bound by, in the order ties are broken
LIMITS = ("trials", "epochs", "time", "budget")


@dataclass(frozen=True)
class Eta:
    """Seconds until the run ends (None: not known yet) and the limit expected to end it."""

    seconds: float | None
    limit: str | None = None


def expected_trial_seconds(running: list[dict[str, Any]], durations: list[float]) -> float | None:
    """The expected duration of a trial: the mean of the finished trials' durations; before any has finished,
    extrapolated from the running trials' epoch progress (``age_s * max_epochs / epoch``); None when unknown."""
    if durations:
        return sum(durations) / len(durations)
    projected = [t["age_s"] * t["max_epochs"] / t["epoch"] for t in running if t.get("epoch") and t.get("max_epochs")]
    return sum(projected) / len(projected) if projected else None


def estimate_eta(*, total: int, done: int, running: list[dict[str, Any]], durations: list[float],
                 concurrency: int, time_left: float | None = None) -> float | None:
    """Seconds until ``total`` trials are done, by list scheduling on ``concurrency`` slots.

    Each running trial occupies a slot until ``max(0, mean - age)``; queued trials then start, each taking the
    expected duration ``mean`` (:func:`expected_trial_seconds`), on the earliest free slot. With ``time_left``
    (seconds until the deadline after which no trial starts), a queued trial that would start at or after it never
    runs. All slots open within ``[0, mean]``, so the queue goes round the slots in the order they open: slot ``i``
    (sorted) takes ``q // n`` trials, one more for the first ``q % n`` -- or fewer, if the deadline comes first.
    """
    remaining = total - done
    if remaining <= 0:
        return 0.0
    if time_left is not None and time_left <= 0 and not running:
        return 0.0  # past the deadline, nothing running: the run is ending
    mean = expected_trial_seconds(running, durations)
    if mean is None:
        return None
    slots = sorted([max(0.0, mean - t["age_s"]) for t in running[:remaining]]
                   + [0.0] * max(0, max(1, concurrency) - min(len(running), remaining)))
    queued = max(0, remaining - len(running))
    ends = []
    for i, opens in enumerate(slots):
        starts = queued // len(slots) + (1 if i < queued % len(slots) else 0)
        if time_left is not None and mean > 0:  # starts at opens, opens + mean, ... before the deadline only
            starts = min(starts, max(0, math.ceil((time_left - opens) / mean)))
        elif time_left is not None and opens >= time_left:
            starts = 0
        ends.append(opens + starts * mean)
    return max(ends)


def estimate_eta_epochs(*, budget: int, epochs_done: int, trial_seconds: float, trial_epochs: int,
                        concurrency: int) -> float | None:
    """Seconds until an epoch budget is spent: epochs left x observed seconds per epoch / concurrency (trials'
    start-up time included in the seconds per epoch). None before any epoch has finished."""
    left = budget - epochs_done
    if left <= 0:
        return 0.0
    if trial_epochs <= 0:
        return None
    return left * (trial_seconds / trial_epochs) / max(1, concurrency)


def estimate_limits(*, total: int, done: int, running: list[dict[str, Any]], durations: list[float],
                    concurrency: int, epoch_budget: int | None = None, epochs_done: int = 0,
                    trial_seconds: float = 0.0, trial_epochs: int = 0, time_left: float | None = None,
                    end_left: float | None = None) -> Eta:
    """The run's ETA: the earliest of the trial, epoch-budget and time limits that can be estimated.

    ``epoch_budget``/``epochs_done``: the budget and the epochs trained so far (earlier runs included);
    ``trial_seconds``/``trial_epochs``: seconds spent by the trials that trained, and their epochs (the observed
    seconds per epoch); ``time_left``: seconds until the deadline (None: no time limit; negative: passed);
    ``end_left``: seconds until the run's end by its time budget (None: no budget).
    """
    candidates: list[tuple[float, str]] = []
    by_trials = estimate_eta(total=total, done=done, running=running, durations=durations, concurrency=concurrency)
    if by_trials is not None:
        candidates.append((by_trials, "trials"))
    if by_trials == 0.0:
        return Eta(0.0, "trials")
    if epoch_budget is not None:
        by_epochs = estimate_eta_epochs(budget=epoch_budget, epochs_done=epochs_done, trial_seconds=trial_seconds,
                                        trial_epochs=trial_epochs, concurrency=concurrency)
        if by_epochs is not None:
            candidates.append((by_epochs, "epochs"))
    if time_left is not None:
        by_time = estimate_eta(total=total, done=done, running=running, durations=durations,
                               concurrency=concurrency, time_left=time_left)
        # the deadline binds only when it stops a trial from starting (else it is the trial schedule itself)
        if by_time is not None and (by_trials is None or by_time < by_trials):
            candidates.append((by_time, "time"))
    if end_left is not None and (not candidates or max(0.0, end_left) < min(c[0] for c in candidates)):
        candidates.append((max(0.0, end_left), "budget"))  # the budget ends the run by then, whatever else remains
    if not candidates:
        return Eta(None, None)
    seconds, limit = min(candidates, key=lambda c: (c[0], LIMITS.index(c[1])))
    return Eta(seconds, limit)
