"""Thread-safe aggregation of trial progress: counts, best so far and the ETA, as a snapshot for the listeners."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .eta import estimate_limits

__all__ = ["ProgressTracker", "TrialProgress", "Listener", "as_listener", "FINAL_STATES"]

Listener = Callable[[dict[str, Any], dict[str, Any]], None]  # (event, snapshot)

FINAL_STATES = ("completed", "pruned", "failed")


@dataclass
class TrialProgress:
    number: int
    state: str = "queued"  # queued | running | completed | pruned | failed
    where: str = ""
    epoch: int = 0
    max_epochs: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)
    value: float | None = None
    reason: str | None = None
    fell_back: str | None = None
    started_at: float | None = None
    ended_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["metrics"] = dict(self.metrics)
        return d


class ProgressTracker:
    """Collects trial events; counts, best-so-far and an ETA from observed trial durations and the concurrency.

    Every method may be called from any thread. Listeners run one at a time, in event order, under the tracker's lock;
    a listener that raises is ignored (a display must never break the run).

    The ETA honours every limit of the run (:func:`hpo.progress.eta.estimate_limits`): ``total`` trials (with an
    epoch budget, ``trial_limit``), ``epoch_budget`` epochs and ``deadline`` -- the time on the tracker's ``clock``
    after which no trial starts (``timeout_minutes``; :meth:`set_timeout` sets it from seconds).
    """

    def __init__(self, total: int, *, already_done: int = 0, concurrency: int = 1, best: float | None = None,
                 clock: Callable[[], float] = time.monotonic, listeners: list[Listener] | None = None,
                 epoch_budget: int | None = None, epochs_before: int = 0, deadline: float | None = None) -> None:
        #: trials expected (with an epoch budget, an estimate: the display never shows more done than total)
        self.total = total
        #: most trials the run trains (the trial limit of the ETA; under an epoch budget ``total`` is an estimate,
        #: as Session sets it, while the tracker is made with ``config.trial_limit``)
        self.trial_limit = total
        #: with an epoch budget the ETA counts epochs too; epochs_before: trained by earlier runs (resume)
        self.epoch_budget = epoch_budget
        self.epochs_before = epochs_before
        self.already_done = already_done
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.started_at = clock()
        #: no trial starts after this time of ``clock`` (``time.monotonic`` by default, as ``Search.deadline``)
        self.deadline = deadline
        #: the run ends by this time of ``clock`` (``time_budget_minutes``, everything included; None: no budget)
        self.end_by: float | None = None
        self.best = best
        self.best_trial: int | None = None
        self.trials: dict[int, TrialProgress] = {}
        self.listeners: list[Listener] = list(listeners or [])
        self._lock = threading.RLock()

    def set_timeout(self, seconds: float | None) -> None:
        """No trial starts ``seconds`` from now (None: no time limit)."""
        self.deadline = None if seconds is None else self.clock() + seconds

    # -- events ------------------------------------------------------------------------------------------------------
    def trial_started(self, number: int, *, where: str = "", max_epochs: int = 0) -> None:
        with self._lock:
            self.trials[number] = TrialProgress(number, "running", where, 0, max_epochs, started_at=self.clock())
            self._emit({"event": "started", "trial": number, "where": where, "max_epochs": max_epochs})

    def epoch(self, number: int, epoch: int, metrics: dict[str, float | None]) -> None:
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, "running", started_at=self.clock()))
            if trial.state in FINAL_STATES:  # a late report of a trial that has ended
                return
            trial.epoch, trial.metrics = epoch, dict(metrics)
            self._emit({"event": "epoch", "trial": number, "epoch": epoch, "max_epochs": trial.max_epochs,
                        "metrics": dict(metrics)})

    def fell_back(self, number: int, reason: str, *, where: str = "local") -> None:
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, "running", started_at=self.clock()))
            trial.fell_back, trial.where = reason, where
            self._emit({"event": "fell_back", "trial": number, "reason": reason, "where": where})

    def trial_finished(self, number: int, state: str, *, value: float | None = None, where: str = "",
                       reason: str | None = None) -> None:
        if state not in FINAL_STATES:
            raise ValueError(f"unknown final state {state!r}; allowed: {', '.join(FINAL_STATES)}")
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, started_at=self.clock()))
            if trial.state in FINAL_STATES:  # reported twice: the first report stands
                return
            trial.state, trial.value, trial.reason, trial.ended_at = state, value, reason, self.clock()
            if where:
                trial.where = where
            if state == "completed" and value is not None and (self.best is None or value > self.best):
                self.best, self.best_trial = value, number
            self._emit({"event": "finished", "trial": number, "state": state, "value": value,
                        "where": trial.where, "reason": reason})

    def trial_discarded(self, number: int, reason: str | None = None) -> None:
        """A trial that does not count (rejected before training, or interrupted and to be retried)."""
        with self._lock:
            trial = self.trials.pop(number, None)
            if trial is not None and trial.state not in FINAL_STATES:
                self._emit({"event": "discarded", "trial": number,
                            "reason": reason or "interrupted; not counted, retried when the run resumes"})

    # -- views -------------------------------------------------------------------------------------------------------
    def _durations(self) -> list[float]:
        finished = [t for t in self.trials.values()
                    if t.state in FINAL_STATES and t.ended_at is not None and t.started_at is not None]
        # trials that trained (completed, pruned) tell the duration best; failures are often instant
        trained = [t for t in finished if t.state != "failed"] or finished
        return [t.ended_at - t.started_at for t in trained]  # type: ignore[operator]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            trials = list(self.trials.values())
            finished = sum(t.state in FINAL_STATES for t in trials)
            running = []
            for t in sorted(trials, key=lambda t: t.number):
                if t.state == "running":
                    d = t.to_dict()
                    d["age_s"] = max(0.0, now - (t.started_at if t.started_at is not None else now))
                    running.append(d)
            done = self.already_done + finished
            total = max(self.total, done + len(running))
            trained = sum(t.epoch for t in trials)
            epochs = self.epochs_before + trained
            seconds = sum((t.ended_at if t.ended_at is not None else now) - t.started_at
                          for t in trials if t.started_at is not None and t.epoch)
            time_left = None if self.deadline is None else self.deadline - now
            cap = total if self.epoch_budget is None else max(self.trial_limit, done + len(running))
            eta = estimate_limits(total=cap, done=done, running=running, durations=self._durations(),
                                  concurrency=self.concurrency, epoch_budget=self.epoch_budget, epochs_done=epochs,
                                  trial_seconds=seconds, trial_epochs=trained, time_left=time_left,
                                  end_left=None if self.end_by is None else self.end_by - now)
            return {
                "total": total, "done": done, "running": running,
                "queued": max(0, total - done - len(running)),
                "epochs": epochs, "epoch_budget": self.epoch_budget,
                "completed": sum(t.state == "completed" for t in trials),
                "pruned": sum(t.state == "pruned" for t in trials),
                "failed": sum(t.state == "failed" for t in trials),
                "best": self.best, "best_trial": self.best_trial, "elapsed_s": now - self.started_at,
                "eta_s": eta.seconds, "eta_limit": eta.limit, "time_left_s": time_left,
                "concurrency": self.concurrency,
            }

    def _emit(self, event: dict[str, Any]) -> None:
        snap = self.snapshot()
        for listener in list(self.listeners):
            try:
                listener(event, snap)
            except Exception:  # noqa: BLE001 - a display must never break the run
                pass


def as_listener(callback: Callable[..., Any]) -> Listener:
    """Adapt a user's progress callback: ``callback(event, snapshot)`` is used as is; a callback that takes one
    argument receives the snapshot only (with the event under ``snapshot["event"]``)."""
    try:
        params = [p for p in inspect.signature(callback).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return callback
    takes_two = any(p.kind == p.VAR_POSITIONAL for p in params) or len(params) >= 2
    if takes_two:
        return callback

    def snapshot_only(event: dict[str, Any], snap: dict[str, Any]) -> None:
        callback(dict(snap, event=event))

    return snapshot_only
