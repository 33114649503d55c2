"""Running trials: ``concurrent_workers`` threads, each taking a slot from the search, sending the trial's TrialJob to
the backend and handing the TrialResult back to the search (the execution side of a run; KerasTuner's tuner).

A trial's fate is decided in one place, :meth:`hpo.search.Search.finish`, from its result: the backend reports a
trial's own failure as a failed TrialResult; any exception out of the backend makes a failed result here; a cancel
token carries why a trial was stopped (pruned, Ctrl-C, stop requested).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .backends import Backend, CancelToken
from .exceptions import BackendUnavailable
from .progress import ProgressTracker
from .protocol import EpochReport, TrialResult
from .search import Search

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs the search's trials on ``backend`` until the search says the run is done or :meth:`request_stop`."""

    def __init__(self, search: Search, backend: Backend, *, progress: ProgressTracker | None = None,
                 after_trial: Callable[[], None] | None = None) -> None:
        self.search = search
        self.backend = backend
        self.progress = progress
        self.after_trial = after_trial
        self._tokens: dict[int, CancelToken] = {}
        self._threads_left = 0
        self._threads_done = threading.Event()
        self._stopped = threading.Event()

    def request_stop(self, reason: str = "interrupted", *, hard: bool = True) -> None:
        """No new trials; running ones are cancelled (hard: without waiting for their epoch to end)."""
        self.search.stop(reason)
        with self.search.lock:
            tokens = list(self._tokens.values())
        for token in tokens:
            token.cancel(reason, hard=hard)

    def run(self) -> None:
        """Run until done; Ctrl-C (KeyboardInterrupt in this thread) stops gracefully."""
        # A backend may keep a few trials beyond concurrent_workers submitted (RunPod: queued on the endpoint, so a
        # worker that finishes finds its next job waiting instead of waiting for Optuna).
        count = self.search.config.concurrent_workers + max(0, self.backend.queue_ahead)
        threads = [threading.Thread(target=self._thread_main, name=f"hpo-trial-{i}", daemon=True)
                   for i in range(count)]
        self._threads_left = len(threads)
        heartbeat = threading.Thread(target=self._heartbeat_main, name="hpo-heartbeat", daemon=True)
        heartbeat.start()
        for t in threads:
            t.start()
        # Wait on an event, never on Thread.join: on Python 3.11 a Ctrl-C that interrupts join(timeout) marks the
        # still-running thread as stopped (its lock is released from outside); the run then finished while a trial
        # thread had not recorded its trial yet, and the trial stayed RUNNING in the study.
        try:
            while not self._threads_done.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.request_stop("interrupted", hard=True)
            while not self._threads_done.wait(0.2):
                pass
        finally:
            self._stopped.set()

    def _heartbeat_main(self) -> None:
        interval = self.search.storage.get_heartbeat_interval() or 10
        while not self._stopped.wait(interval):
            self.search.beat_running()

    def _thread_main(self) -> None:
        try:
            while True:
                allowance = self.search.reserve()
                if allowance is None:
                    return
                if allowance == 0:  # running trials hold the rest of the budget; they may give some back
                    time.sleep(0.5 if self.search.shared else 0.05)  # shared: each look reads the database
                    continue
                try:
                    self._one_trial(allowance)
                except Exception as exc:  # noqa: BLE001 - a bug here must not hang the other threads
                    log.exception("unexpected error while running a trial")
                    self.search.stop(f"internal error: {type(exc).__name__}: {exc}", aborted=True)
                finally:
                    self.search.release(allowance)
        finally:
            with self.search.lock:
                self._threads_left -= 1
                if self._threads_left == 0:
                    self._threads_done.set()

    def _one_trial(self, max_epochs: int) -> None:
        search = self.search
        asked = search.ask()
        if asked is None:
            return
        trial, params = asked
        job = search.job(trial, params, max_epochs)
        token = CancelToken()
        pruned_at: list[int] = []
        last_epoch = [0]
        with search.lock:
            self._tokens[trial.number] = token
            if search.stop_reason is not None:
                token.cancel(search.stop_reason, hard=True)
        if self.progress:
            self.progress.trial_started(trial.number, where=self.backend.name, max_epochs=job.max_epochs)

        def on_epoch(report: EpochReport) -> None:
            last_epoch[0] = max(last_epoch[0], report.epoch)
            if self.progress:
                self.progress.epoch(trial.number, report.epoch, report.metrics)
            if token.cancelled:
                return
            reason = search.report(trial, report)
            if reason is not None:
                pruned_at.append(report.epoch)
                token.cancel(reason)

        model_path = search.models.path(trial.number)
        timeout_s = (search.config.trial_timeout_minutes or 0) * 60 or None
        try:
            result = self.backend.run(job, on_epoch=on_epoch, cancel=token, timeout_s=timeout_s,
                                      save_model_to=str(model_path) if model_path else None)
        except BackendUnavailable as exc:  # expected (service down, no fallback): the reason, not a traceback
            log.error("trial %s: the backend is unavailable: %s", trial.number, exc)
            result = TrialResult(trial_id=job.trial_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the backend could not run it: a failed trial, the study goes on
            log.error("trial %s: backend error with params %s\n%s", trial.number, params, traceback.format_exc())
            result = TrialResult(trial_id=job.trial_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with search.lock:
                self._tokens.pop(trial.number, None)
        outcome = search.finish(trial, job, result, pruned=bool(pruned_at),
                                cancel_reason=token.reason if token.cancelled else None, last_epoch=last_epoch[0])
        if self.progress:
            if result.details.get("fallback_reason"):
                self.progress.fell_back(trial.number, result.details["fallback_reason"],
                                        where=result.executed_on or "local")
            if outcome.state is None:
                self.progress.trial_discarded(trial.number)
            else:
                self.progress.trial_finished(trial.number, outcome.state, value=outcome.value,
                                             where=result.executed_on, reason=outcome.reason)
        if self.after_trial is not None:
            self.after_trial()
