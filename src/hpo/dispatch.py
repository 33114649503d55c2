"""Running trials: trial threads send each trial's TrialJob to the backend, and one study thread does everything that
touches the study (the execution side of a run; KerasTuner's tuner).

    study thread     reserve a slot and ask the search for trials (kept ready in a small queue), record finished
                     trials (their fate, progress, run files) in the order they ended, and epoch reports that no
                     pruner acts on -- in that order of urgency: a trial thread with nothing to run first (remote
                     backends), then results, then the ready queue topped up, then epoch reports (those that pile up
                     meanwhile go in one commit, or with their trial's verdict)
    trial threads    (concurrent_workers + the backend's queue_ahead) take a ready trial, run it on the backend, hand
                     the result back to the study thread, and take the next one at once

So nothing that writes to the study sits between a trial's result and the next trial's submission: each freed thread
submits a trial asked before it was needed. How many are asked ahead (:func:`default_ask_ahead`) follows the backend's
``queue_ahead``: none for local workers (a trial is asked when a worker is free, after the results before it are
recorded, so the sampler knows them); for remote ones enough to cover many results at once, asked up to ``ASK_BATCH``
per transaction. Trials asked ahead are RUNNING trials of the study (slot and epochs reserved, heartbeat beaten), so
limits hold as before; a run that stops before starting them records them as interrupted (retried on resume).

A trial's fate is decided in one place, :meth:`hpo.search.Search.finish`, from its result: the backend reports a
trial's own failure as a failed TrialResult; any exception out of the backend makes a failed result here; a cancel
token carries why a trial was stopped (pruned, Ctrl-C, stop requested). Epoch reports reach the pruner in the trial's
own thread, so a pruned trial stops at the epoch it was judged on.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend, CancelToken
from .budget import BUDGET_CUT
from .finale import FINAL_CUT
from .exceptions import BackendUnavailable
from .progress import ProgressTracker
from .protocol import EpochReport, TrialJob, TrialResult
from .search import Search

__all__ = ["Dispatcher", "default_ask_ahead"]

log = logging.getLogger(__name__)
ASK_BATCH = 16  #: the most trials asked in one transaction (remote workers)


def default_ask_ahead(workers: int, queue_ahead: int) -> int:
    """Trials kept asked and ready beyond those running: 0 when the backend queues nothing ahead (local workers: the
    sampler sees every result before the next trial is asked); else the queued-ahead trials again plus half the
    workers, so that when many remote workers finish within the same second each freed slot submits at once."""
    if queue_ahead <= 0:
        return 0
    return queue_ahead + max(1, workers // 2)


@dataclass
class _Ready:
    """A trial asked and reserved, waiting for a trial thread."""

    trial: Any
    params: dict[str, Any]
    job: TrialJob
    allowance: int


@dataclass
class _Running:
    """What a trial thread hands back to the study thread."""

    ready: _Ready
    token: CancelToken
    pruned_at: list[int] = field(default_factory=list)
    last_epoch: list[int] = field(default_factory=lambda: [0])
    result: TrialResult | None = None
    epochs: list[EpochReport] = field(default_factory=list)  # reports to record (no pruner acts on them)
    epochs_posted: bool = False  # the study thread has been asked to record them


class Dispatcher:
    """Runs the search's trials on ``backend`` until the search says the run is done or :meth:`request_stop`.

    ``ask_ahead``: trials kept ready beyond the running ones (default :func:`default_ask_ahead`)."""

    def __init__(self, search: Search, backend: Backend, *, progress: ProgressTracker | None = None,
                 after_trial: Callable[[], None] | None = None, ask_ahead: int | None = None) -> None:
        import optuna

        self.search = search
        self.backend = backend
        self.progress = progress
        self.after_trial = after_trial
        workers = search.config.concurrent_workers
        queue_ahead = max(0, backend.queue_ahead)
        self.thread_count = workers + queue_ahead  # the backend's queue_ahead: submitted beyond concurrent_workers
        self.ask_ahead = default_ask_ahead(workers, queue_ahead) if ask_ahead is None else max(0, int(ask_ahead))
        #: whether epoch reports can prune (then the pruner gets them in the trial's thread; else the study thread)
        self._prunes = search.config.mode != "pareto" and not isinstance(search.study.pruner,
                                                                          optuna.pruners.NopPruner)
        self._tokens: dict[int, CancelToken] = {}
        self._tokens_lock = threading.Lock()
        self._lock = threading.Lock()  # guards everything below; two conditions on it, so a new ready trial wakes
        self._study_cv = threading.Condition(self._lock)  # one trial thread, not every one
        self._threads_cv = threading.Condition(self._lock)
        self._ready: collections.deque[_Ready] = collections.deque()
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._epochs: collections.deque[_Running] = collections.deque()  # trials with epoch reports to record
        self._waiting = 0  # trial threads waiting for a trial
        self._in_flight = 0  # trials handed to trial threads and not recorded yet
        self._exhausted = False  # reserve() said no more trials; looked at again after each recorded trial
        self._retry_at = 0.0  # allowance 0 (epochs held by running trials): ask again after this time or a record
        self._done = False  # no trial is handed out any more: trial threads end
        self._threads_left = 0
        self._threads_done = threading.Event()
        self._study_done = threading.Event()
        self._stopped = threading.Event()
        self._finale_later = False  # the search phase is over but no trial has completed: tried after each record

    def request_stop(self, reason: str = "interrupted", *, hard: bool = True) -> None:
        """No new trials; running ones are cancelled (hard: without waiting for their epoch to end)."""
        self.search.stop(reason)
        with self._tokens_lock:
            tokens = list(self._tokens.values())
        for token in tokens:
            token.cancel(reason, hard=hard)
        with self._lock:
            self._study_cv.notify_all()
            self._threads_cv.notify_all()

    def run(self) -> None:
        """Run until done; Ctrl-C (KeyboardInterrupt in this thread) stops gracefully."""
        threads = [threading.Thread(target=self._thread_main, name=f"hpo-trial-{i}", daemon=True)
                   for i in range(self.thread_count)]
        self._threads_left = len(threads)
        study = threading.Thread(target=self._study_main, name="hpo-study", daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat_main, name="hpo-heartbeat", daemon=True)
        heartbeat.start()
        if self.search.budget.active:
            threading.Thread(target=self._budget_main, name="hpo-budget", daemon=True).start()
        study.start()
        for t in threads:
            t.start()
        # Wait on an event, never on Thread.join: on Python 3.11 a Ctrl-C that interrupts join(timeout) marks the still
        # running thread stopped (its lock released from outside): the run ended while a trial stayed RUNNING.
        try:
            self._wait_until_done()
        except KeyboardInterrupt:
            self.request_stop("interrupted", hard=True)
            self._wait_until_done()
        finally:
            self._stopped.set()

    def _wait_until_done(self) -> None:
        while not (self._threads_done.wait(0.2) and self._study_done.wait(0.2)):  # threads, then the last records
            pass

    def _heartbeat_main(self) -> None:
        interval = self.search.storage.get_heartbeat_interval() or 10
        while not self._stopped.wait(interval):
            self.search.beat_running()

    def _budget_main(self) -> None:
        """time_budget_minutes: when the time for trials is over, no trial starts and the running ones stop (after the
        batch in training; remote ones at their epoch's end), complete at what they trained; a quarter of the
        finishing reserve later, they are cancelled."""
        budget, finale = self.search.budget, self.search.finale
        if finale.active:  # search short, then train long: at the end of the search phase
            if self._stopped.wait(max(0.0, finale.begins_at - time.monotonic())):
                return
            self._post(self._begin_finale)
        for hard, wait in ((False, budget.time_left() or 0.0), (True, budget.reserve_s / 4)):
            if self._stopped.wait(max(0.0, wait)):
                return
            self.request_stop(BUDGET_CUT, hard=hard)

    def _begin_finale(self, source: int | None = None) -> None:
        """The search phase is over (study thread): the best configurations (or ``source``'s: no room for a search)
        are queued to train long, trials asked ahead are dropped and the running search trials stop (after the batch in
        training; remote ones at their epoch's end), complete at what they trained."""
        search = self.search
        if search.stop_reason is not None or search.finale.begun or not (source is not None or search.finale.due()):
            return
        self._finale_later = search.begin_finale(source) is None
        if not search.finale.begun:
            return
        self._dispose_ready(FINAL_CUT)
        # read once the finale began (no final runs yet), so a trial taken but not yet registered is dropped by
        # _run_trial (read before, it was neither disposed of nor cut and held its worker through the finals)
        with self._tokens_lock:
            tokens = dict(self._tokens)
        for token in tokens.values():
            token.cancel(FINAL_CUT, hard=False)
        with self._lock:
            self._exhausted, self._retry_at = False, 0.0

    # -- the study thread ----------------------------------------------------------------------------------------------
    def _post(self, command: Callable[[], None]) -> None:
        with self._lock:
            self._commands.append(command)
            self._study_cv.notify()

    def _next_step(self) -> str | Callable[[], None] | None:
        """Under the condition: a command to run, "ask", "stop" (dispose of the ready trials) or None (all done)."""
        while True:
            stopping = self.search.stop_reason is not None
            if stopping and self._ready:
                return "stop"
            starving = self._waiting > len(self._ready)  # a freed trial thread has nothing to run
            may_ask = not stopping and not self._exhausted and time.monotonic() >= self._retry_at
            if may_ask and starving and self.ask_ahead > 0:
                return "ask"  # remote: a free slot first, results after (they are not on any worker's path)
            if self._commands:
                return self._commands.popleft()
            if may_ask and len(self._ready) < self._waiting + self.ask_ahead:
                return "ask"
            if self._epochs:  # when nothing else waits: reports that pile up meanwhile go in one commit
                running = self._epochs.popleft()
                return lambda: self._record_epochs(running)
            if not self._in_flight and not self._ready and (stopping or self._exhausted):
                self._done = True
                self._threads_cv.notify_all()
                return None
            timeout = None
            if not may_ask and not stopping and not self._exhausted:
                timeout = max(0.01, self._retry_at - time.monotonic())
            self._study_cv.wait(timeout)

    def _study_main(self) -> None:
        try:
            while True:
                with self._lock:
                    step = self._next_step()
                if step is None:
                    return
                if step == "stop":
                    self._dispose_ready()
                elif step == "ask":
                    self._ask_some()
                else:
                    step()  # type: ignore[operator]
        except BaseException:  # noqa: BLE001 - never leave trial threads waiting for a thread that is gone
            log.exception("the dispatcher's study thread failed")
            self.search.stop("internal error in the dispatcher", aborted=True)
            with self._lock:
                self._done = True
                self._threads_cv.notify_all()
        finally:
            self._study_done.set()

    def _ask_some(self) -> None:
        """Reserve and ask the trials needed now: one for local workers (the sampler knows every result before it);
        for remote ones, those awaited plus those kept ahead, up to ``ASK_BATCH`` in one transaction."""
        with self._lock:
            want = 1 if self.ask_ahead <= 0 else min(ASK_BATCH, self._waiting + self.ask_ahead - len(self._ready))
        search, allowances = self.search, list[int]()
        try:
            for i in range(max(1, want)):
                allowance = search.reserve(refresh=i == 0)  # the shared totals read once for the batch
                if not allowance:
                    break
                allowances.append(allowance)
        except Exception as exc:  # noqa: BLE001 - e.g. the shared database went away
            log.exception("could not reserve a trial")
            search.stop(f"internal error: {type(exc).__name__}: {exc}", aborted=True)
            allowance = None
        if not allowances:
            with self._lock:
                if allowance is None:
                    self._exhausted = True
                else:  # running trials hold the rest of the budget; they may give some back (shared: others' too)
                    self._retry_at = time.monotonic() + (0.5 if search.shared else 3600.0)
            return
        jobs: list[TrialJob] = []  # each trial's job (an attribute) written with its params, all in one commit
        try:
            asked = search.ask(lambda t, params: jobs.append(search.job(t, params, allowances[len(jobs)])),
                               count=len(allowances))
        except Exception as exc:  # noqa: BLE001 - a bug or a storage failure must not hang the trial threads
            log.exception("unexpected error while asking for a trial")  # (a trial asked stays RUNNING: recovered
            search.stop(f"internal error: {type(exc).__name__}: {exc}", aborted=True)  # as a killed run's would be)
            asked = []
        for allowance in allowances[len(asked):]:  # fewer asked (the run stopped, a limit near): slots given back
            search.release(allowance)
        with self._lock:
            for (trial, params), job, allowance in zip(asked, jobs, allowances):
                self._ready.append(_Ready(trial, params, job, allowance))
            self._threads_cv.notify(len(asked))

    def _dispose_ready(self, reason: str = "interrupted") -> None:
        """The run stopped before these trials started: interrupted, not counted (retried when the run resumes); or
        the final training began (``FINAL_CUT``: pruned)."""
        with self._lock:
            ready, self._ready = list(self._ready), collections.deque()
        for item in ready:
            try:
                self.search.finish(item.trial, item.job, TrialResult(trial_id=item.job.trial_id, status="stopped",
                                                                     error="not started: the run stopped first"),
                                   pruned=False, cancel_reason=reason, last_epoch=0)
            except Exception:  # noqa: BLE001 - it stays RUNNING; a resumed run or another process recovers it
                log.exception("could not record trial %s as not started", item.trial.number)
            finally:
                self.search.release(item.allowance)

    def _record(self, running: _Running) -> None:
        """A finished trial's verdict, progress and run files (study thread)."""
        search, item, token = self.search, running.ready, running.token
        result = running.result or TrialResult(trial_id=item.job.trial_id, status="failed", error="no result")
        with self._lock:
            epochs, running.epochs = running.epochs, []
        try:
            outcome = search.finish(item.trial, item.job, result, pruned=bool(running.pruned_at),
                                    cancel_reason=token.reason if token.cancelled else None,
                                    last_epoch=running.last_epoch[0], epochs=epochs)
            if self.progress:
                if result.details.get("fallback_reason"):
                    self.progress.fell_back(item.trial.number, result.details["fallback_reason"],
                                            where=result.executed_on or "local")
                if outcome.state is None:
                    self.progress.trial_discarded(item.trial.number)
                else:
                    self.progress.trial_finished(item.trial.number, outcome.state, value=outcome.value,
                                                 where=result.executed_on, reason=outcome.reason)
            if self.after_trial is not None:
                self.after_trial()
            if self._finale_later:
                self._begin_finale()
        except Exception as exc:  # noqa: BLE001 - a bug here must not hang the other threads
            log.exception("unexpected error while recording trial %s", item.trial.number)
            search.stop(f"internal error: {type(exc).__name__}: {exc}", aborted=True)
        finally:
            search.release(item.allowance)
            with self._lock:
                self._in_flight -= 1
                self._exhausted = False  # a trial that does not count (interrupted) frees its slot again
                self._retry_at = 0.0
                self._study_cv.notify()

    # -- trial threads -------------------------------------------------------------------------------------------------
    def _take(self) -> _Ready | None:
        """The next ready trial; None when the run starts no more (done, stopped, past its time limit)."""
        self.search.past_deadline()  # no trial starts after timeout_minutes, however early it was asked
        with self._lock:
            self._waiting += 1
            self._study_cv.notify()
            try:
                while not self._ready and not self._done and self.search.stop_reason is None:
                    self._threads_cv.wait()
                if not self._ready or self.search.stop_reason is not None:
                    self._study_cv.notify()  # the study thread disposes of what is ready
                    return None
                self._in_flight += 1
                return self._ready.popleft()
            finally:
                self._waiting -= 1

    def _thread_main(self) -> None:
        try:
            while True:
                item = self._take()
                if item is None:
                    return
                running = _Running(item, CancelToken())
                try:
                    self._run_trial(running)
                except BaseException as exc:  # noqa: BLE001 - a bug here must not hang the other threads
                    log.exception("unexpected error while running a trial")
                    self.search.stop(f"internal error: {type(exc).__name__}: {exc}", aborted=True)
                    if running.result is None:
                        running.result = TrialResult(trial_id=item.job.trial_id, status="failed",
                                                     error=f"{type(exc).__name__}: {exc}")
                finally:
                    self._post(lambda running=running: self._record(running))
        finally:
            with self._lock:
                self._threads_left -= 1
                if self._threads_left == 0:
                    self._threads_done.set()
                self._study_cv.notify()

    def _run_trial(self, running: _Running) -> None:
        search, item, token = self.search, running.ready, running.token
        trial, job = item.trial, item.job
        with self._tokens_lock:
            self._tokens[trial.number] = token
        if search.stop_reason is not None:
            token.cancel(search.stop_reason, hard=True)
        elif search.finale.begun and not search.finale.is_final(trial.number):  # taken as the search ended (after
            token.cancel(FINAL_CUT)  # _begin_finale disposed of the ready trials, before it read the tokens): dropped
            running.result = TrialResult(trial_id=job.trial_id, status="stopped", error="not started: finals began")
            with self._tokens_lock:
                self._tokens.pop(trial.number, None)
            return
        if self.progress:
            self.progress.trial_started(trial.number, where=self.backend.name, max_epochs=job.max_epochs)
        prunes = self._prunes

        def on_epoch(report: EpochReport) -> None:
            running.last_epoch[0] = max(running.last_epoch[0], report.epoch)
            search.finale.note_epoch(trial.number, report.epoch, report.metrics.get("elapsed_s"))
            if search.finale.no_room(trial.number, report.epoch, job.max_epochs):  # one long schedule beats a search
                self._post(lambda: self._begin_finale(source=trial.number))
            if self.progress:
                self.progress.epoch(trial.number, report.epoch, report.metrics)
            if token.cancelled:
                return
            if not prunes:  # only recorded, by the study thread when it has nothing else to do (or with the verdict)
                with self._lock:
                    running.epochs.append(report)
                    if not running.epochs_posted:
                        running.epochs_posted = True
                        self._epochs.append(running)
                        self._study_cv.notify()
                return
            reason = search.report(trial, report, job.max_epochs)
            if reason is not None:
                running.pruned_at.append(report.epoch)
                token.cancel(reason, discard=True)  # never the answer: the trainer skips its test evaluation

        model_path = search.models.path(trial.number)
        timeout_s = (search.config.trial_timeout_minutes or 0) * 60 or None
        left = search.finale.time_limit(trial.number, search.budget.time_left())  # a final may end earlier
        if left is not None:  # the trainer starts no epoch that would not end in time
            job = dataclasses.replace(job, time_limit_s=round(max(1.0, left), 1))
        try:
            running.result = self.backend.run(job, on_epoch=on_epoch, cancel=token, timeout_s=timeout_s,
                                              save_model_to=str(model_path) if model_path else None)
        except BackendUnavailable as exc:  # expected (service down, no fallback): the reason, not a traceback
            log.error("trial %s: the backend is unavailable: %s", trial.number, exc)
            running.result = TrialResult(trial_id=job.trial_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the backend could not run it: a failed trial, the study goes on
            log.error("trial %s: backend error with params %s\n%s", trial.number, item.params,
                      traceback.format_exc())
            running.result = TrialResult(trial_id=job.trial_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._tokens_lock:
                self._tokens.pop(trial.number, None)

    def _record_epochs(self, running: _Running) -> None:
        """Epoch reports no pruner can act on, recorded in the study (study thread; those still waiting when the
        trial ends are recorded with its verdict)."""
        with self._lock:
            epochs, running.epochs, running.epochs_posted = running.epochs, [], False
        if not epochs:
            return
        try:
            self.search.record_epochs(running.ready.trial, epochs)
        except Exception:  # noqa: BLE001 - e.g. a late report of a trial already recorded: nothing to lose
            log.debug("epochs of trial %s not recorded", running.ready.trial.number, exc_info=True)
