"""The run's time budget (``time_budget_minutes``): the run ends by a time, everything included.

The budget counts from the moment the run began (before the workers start). Its trials must have ended by
:attr:`TimeBudget.end_by`, which leaves the time the run's files, plots and report take (:func:`finish_reserve_s`):

- a trial starts only if the shortest trial fits in the time left (:meth:`TimeBudget.fits`, from the seconds per
  epoch of the trials so far);
- each job carries the seconds left (``TrialJob.time_limit_s``, counted from the call to the backend's ``run``: what a
  backend spends before the trainer starts is taken off, :func:`hpo.backends.started_late`): its trainer starts no
  epoch that would not end in time and cuts one that runs slower than judged (after a batch, wherever it runs), and
  the trial is complete at the epochs it trained, its best weights kept;
- at ``end_by`` the trials still running are stopped (:data:`BUDGET_CUT`; local trainers after the batch in training,
  RunPod workers at their epoch's end; complete at what they trained), and cancelled at once a quarter of the
  finishing reserve later.
"""

from __future__ import annotations

import statistics
import threading
import time

from .config import OptimizationConfig
from .protocol import TrialResult

__all__ = ["TimeBudget", "finish_reserve_s", "BUDGET_CUT"]

#: the cancel reason of a trial still running when the budget's time for trials is over
BUDGET_CUT = "cut at the end of time_budget_minutes"


def finish_reserve_s(config: OptimizationConfig, budget_s: float) -> float:
    """Seconds kept for what a run does after its last trial: the results and the best model's files, and with
    plot_generation the plots and report (the model-based plots load TensorFlow in a worker process: about 15-25 s on
    2 CPU cores). At most a quarter of the budget."""
    need = 3.0 if config.plot_generation == "none" else 30.0
    return min(need, budget_s / 4)


class TimeBudget:
    """When the run must end and whether one more trial fits (thread-safe)."""

    def __init__(self, config: OptimizationConfig, started: float | None = None) -> None:
        started = time.monotonic() if started is None else started
        minutes = config.time_budget_minutes
        self.minutes = minutes
        self.started = started
        #: the run ends by this time of time.monotonic (None: no budget)
        self.run_end = started + minutes * 60 if minutes else None
        self.reserve_s = finish_reserve_s(config, minutes * 60) if minutes else 0.0
        #: its trials end by this time
        self.end_by = self.run_end - self.reserve_s if self.run_end is not None else None
        self._min_epochs = config.min_epochs_per_trial
        self._epoch_seconds: list[float] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.end_by is not None

    def time_left(self) -> float | None:
        """Seconds until the trials must have ended (negative: past); None: no budget."""
        return None if self.end_by is None else self.end_by - time.monotonic()

    def record(self, result: TrialResult) -> None:
        """A finished trial's seconds per epoch (all it did: data, model, epochs, evaluation), for :meth:`fits`."""
        if result.epochs_run and result.train_seconds:
            with self._lock:
                self._epoch_seconds.append(float(result.train_seconds) / int(result.epochs_run))

    def trial_needs_s(self) -> float:
        """Seconds the shortest trial is expected to take: min_epochs_per_trial epochs and the evaluation after them,
        at the median seconds per epoch of the trials so far (0 before any has finished)."""
        with self._lock:
            if not self._epoch_seconds:
                return 0.0
            per_epoch = statistics.median(self._epoch_seconds)
        return per_epoch * (self._min_epochs + 0.5)

    def fits(self) -> tuple[bool, str]:
        """(whether one more trial fits in the time left, why not)."""
        left = self.time_left()
        if left is None:
            return True, ""
        need = self.trial_needs_s()
        if left > max(need, 1.0):
            return True, ""
        return False, (f"time_budget_minutes={self.minutes:g}: {max(0.0, left):.0f} s left for trials, too few for "
                       "another one" + (f" (about {need:.1f} s)" if need else ""))
