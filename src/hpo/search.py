"""What to try next and what a result means: the search side of a run (KerasTuner's oracle, on Optuna ask/tell).

:class:`Search` owns the study. It decides whether another trial may start and with how many epochs (trials,
epoch_budget, timeout), asks Optuna for the next configuration (warm start, its neighbours, configurations over
max_params rejected), feeds every epoch's validation accuracy to the pruner, and turns a finished trial's result into
its fate in one place (:meth:`Search.finish`): completed, pruned, failed, or interrupted (retried later, never a
failure). It never runs a trial: :mod:`hpo.dispatch` does. Every method touching the study holds :attr:`Search.lock`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import search_space
from . import study as studies
from .budget import BUDGET_CUT, TimeBudget
from .config import OptimizationConfig
from .exceptions import HPOError
from .finale import FINAL_CUT, FINAL_DROPPED, Finale
from .protocol import CUSTOM_DATASET, EpochReport, TrialJob, TrialResult
from .results import ModelFiles

__all__ = ["Search", "Outcome", "MAX_CONSECUTIVE_REJECTIONS"]

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_REJECTIONS = 100


@dataclasses.dataclass
class Outcome:
    """A finished trial's fate for the progress display: state None means interrupted (not counted)."""

    state: str | None
    value: float | None
    reason: str | None


class Search:
    """The study and every rule about it. ``pruner`` is hpo's far-behind pruner when the study has one."""

    def __init__(self, config: OptimizationConfig, study: Any, storage: Any, *, pruner: Any, models: ModelFiles,
                 notes: list[str], started: float | None = None) -> None:
        self.config, self.study, self.storage, self.pruner, self.models, self.notes = (config, study, storage, pruner,
                                                                                      models, notes)
        self.info = config.dataset_info
        self.lock = threading.RLock()
        self.counted = 0  # trials with a verdict (completed, pruned, failed)
        self.running = 0
        self.epochs_spent = 0  # epochs trained by finished trials (epoch_budget)
        self.epochs_reserved = 0  # epochs granted to running trials and not yet trained
        self.best_value: float | None = None
        self.best_number: int | None = None
        self.stop_reason: str | None = None
        self.aborted = self.interrupted = False
        self.deadline = time.monotonic() + config.timeout_minutes * 60 if config.timeout_minutes else None
        self.budget = TimeBudget(config, started)  # time_budget_minutes (``started``: when the run began)
        self.finale = Finale(config, self.budget)  # search short, then train the best long (final_training_share)
        self._consecutive_failures = self._consecutive_rejections = 0
        #: number of the warm-start trial while it trains; new trials meanwhile are neighbours of its configuration
        self._warm_start_number: int | None = None
        self._beating: dict[int, int] = {}  # trial number -> storage id of this process's running trials
        self.shared = config.storage is not None  # other processes may run trials of this study
        self._others_running = 0  # their running trials and the epochs those may still train
        self._others_reserved = 0
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self._next_stale_check = 0.0
        self._last_number: int | None = None  # the trial this process asked last
        self._near_limit = False  # other processes may take the last slots (shared study)

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.info.input_shape if self.info.modality == "image" else None

    # -- recovery ---------------------------------------------------------------------------------------------------
    def recover(self, *, owns_storage: bool, created: bool = False) -> None:
        """Trials a killed run left RUNNING (in the folder's own study, all; shared, those whose heartbeat stopped) and
        Ctrl-C'd ones not retried yet are retried; completed trials never. The warm start is queued once per study."""
        from optuna.trial import TrialState

        if owns_storage:
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                try:
                    self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                except Exception:  # noqa: BLE001 - finished meanwhile (UpdateFinishedTrialError): nothing to recover
                    continue
                studies.retry_stale_trial(self.notes, self.study, t)
        self.fail_stale_trials(force=True)
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            if t.user_attrs.get("interrupted") and t.number not in retried and t.params:
                self.study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
        trials = self.study.get_trials(deepcopy=False)
        self.counted = sum(1 for t in trials if t.user_attrs.get("counted"))
        self.epochs_spent = sum(int(t.user_attrs.get("epochs_trained") or 0) for t in trials)
        if not trials and (created or owns_storage):  # new study: default, initial configs, portfolio, once
            c = self.config
            queue = search_space.start_queue(self.space, c.pins, self.shape, warm_start=c.warm_start,
                                             portfolio_size=c.portfolio_size, initial=c.initial_configs)
            for params, attrs in queue[:c.trial_limit]:  # never more than the run trains
                self.study.enqueue_trial(params, user_attrs=attrs)  # the warm start: trial 0 of the new study
                self._warm_start_number = 0 if attrs.get("warm_start") else self._warm_start_number
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if done and self.config.mode != "pareto":
            best = max(done, key=lambda t: t.value)
            self.best_value, self.best_number = best.value, best.number

    def fail_stale_trials(self, *, force: bool = False) -> None:
        """Fail (as interrupted) and re-queue the trials of dead processes, at most every quarter grace period."""
        import optuna

        now = time.monotonic()
        if not force and now < self._next_stale_check:
            return
        self._next_stale_check = now + max(1.0, self.config.heartbeat_grace_s / 4)
        optuna.storages.fail_stale_trials(self.study)

    # -- heartbeats: other processes sharing the study judge this one's trials alive by them -----------------------
    def beat_running(self) -> None:
        with self.lock:
            ids = list(self._beating.values())
        for trial_id in ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried next interval; grace covers several
                log.warning("could not record a heartbeat for a running trial", exc_info=True)

    # -- may another trial start? ----------------------------------------------------------------------------------
    @property
    def shortest_trial(self) -> int:
        """The fewest epochs a trial is started with under epoch_budget: a third of max_epochs_per_trial, at least
        min_epochs_per_trial."""
        c = self.config
        return max(c.min_epochs_per_trial, math.ceil(c.max_epochs_per_trial / 3))

    def _epoch_allowance(self) -> int | None:
        """Epochs the next trial may train: max_epochs_per_trial, or fewer when epoch_budget has fewer left; 0 when
        it must wait for running trials to give unused epochs back; None when the budget is spent.

        A trial is not started with fewer than a third of max_epochs_per_trial (or min_epochs_per_trial): cut that
        short, it cannot compete with the trials that trained for longer (the default CNN reaches 87 % in 2 epochs
        against 91 % in 18), and the run would only wait for it. Those last epochs stay unspent."""
        c = self.config
        if c.epoch_budget is None:
            return c.max_epochs_per_trial
        left = c.epoch_budget - self.epochs_spent - self.epochs_reserved - self._others_reserved
        if left >= self.shortest_trial:
            return min(c.max_epochs_per_trial, left)
        return 0 if self.epochs_reserved + self._others_reserved > 0 else None

    def _refresh_shared(self) -> None:
        """A shared study's totals (trials with a verdict, epochs trained, what other processes' running trials hold),
        from a few column queries, under the lock. Another process may start a trial between this read and the ask, so
        a limit may be overshot by at most one trial per process."""
        self.counted, self.epochs_spent, self._others_running, self._others_reserved = studies.shared_totals(
            self.study, self.storage, set(self._beating), epochs_of_running=self.config.epoch_budget is not None,
            default_epochs=self.config.max_epochs_per_trial)

    def reserve(self, *, refresh: bool = True) -> int | None:
        """A slot for one more trial: its epochs (> 0), 0 to wait for running trials, None when the run is done.
        ``refresh``: read a shared study's totals first (False: one more slot of several reserved together)."""
        with self.lock:
            if self.stop_reason is not None or self.finale.closed:
                return None
            if self.finale.begun:  # a final trial: beyond trials and epoch_budget, its epochs set by the time left
                self.running += 1
                return self.config.max_epochs_per_trial
            if self.shared and refresh:
                self.fail_stale_trials()  # a dead process's trials go back to the queue (retried once)
                self._refresh_shared()
            left = self.config.trial_limit - self.counted - self.running - self._others_running
            if left <= 0:
                return None  # the rest runs here or in other processes (a dead one's trial: retried by whoever looks)
            # the other processes could take the last slots meanwhile: the trial asked is checked (ask)
            self._near_limit = self.shared and left <= self._others_running
            if self.past_deadline():
                return None
            allowance = self._epoch_allowance()
            if allowance is None:
                budget, spent = self.config.epoch_budget, self.epochs_spent
                left = budget - spent
                self.stop_reason = (f"epoch_budget={budget} spent ({spent} epochs trained)" if left <= 0 else
                                    f"epoch_budget={budget} used up: {spent} epochs trained, the {left} left are "
                                    f"fewer than a trial is started with ({self.shortest_trial})")
                return None
            if allowance > 0:
                self.running += 1
                self.epochs_reserved += allowance
            return allowance

    def release(self, allowance: int) -> None:
        with self.lock:
            self.running -= 1
            self.epochs_reserved -= allowance

    def past_deadline(self) -> bool:
        """Whether timeout_minutes has passed, or time_budget_minutes leaves too little time for another trial (the
        run then stops: no trial starts after it)."""
        fits, why = self.budget.fits()
        fits = fits or bool(self.finale.final_fits(self.budget.time_left() or 0.0))  # pending finals: their pace
        if fits and (self.deadline is None or time.monotonic() <= self.deadline):
            return False
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = why or f"timeout_minutes={self.config.timeout_minutes:g} reached"
        return True

    def begin_finale(self, source: int | None = None) -> list[int] | None:
        """The search phase is over: the best configurations are queued to train long (:meth:`Finale.queue`)."""
        with self.lock:
            return self.finale.queue(self.study, self.notes, source)

    def stop(self, reason: str, *, aborted: bool = False) -> None:
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            self.interrupted = self.interrupted or reason == "interrupted"
            self.aborted = self.aborted or aborted

    # -- asking ------------------------------------------------------------------------------------------------------
    def ask(self, prepare: Callable[[Any, dict[str, Any]], Any] | None = None,
            count: int = 1) -> list[tuple[Any, dict[str, Any]]]:
        """Up to ``count`` next trials and their params, asked in one transaction (remote workers freed together);
        none only when the run stopped. Configurations over max_params are rejected (not counted) and redrawn.
        ``prepare(trial, params)`` (e.g. :meth:`job`) runs for each trial returned, its attributes written in the
        same commit as its params."""
        while True:
            with self.lock:
                if self.stop_reason is not None:
                    return []
                if self.config.storage is not None:  # shared study: find trials of dead processes
                    self.fail_stale_trials()
                # Study.ask without its read of every trial; while the warm start trains, a new trial is a neighbour
                trials = studies.ask_trials(self.study, self.storage, 1 if self._near_limit else count,
                                            new=self._neighbour if self._warm_start_number is not None else None)
                self._last_number, trial = trials[-1].number, trials[0]
                if self.finale.begun and "final_of" not in trial.user_attrs:  # queued before the search ended
                    for t in trials:  # (default, initial configs, portfolio): the finals go first, these never run
                        studies.reject(self.study, t, FINAL_DROPPED, process=self.process)
                    continue
                if self.finale.begun:  # a final: its epochs from the time left now
                    self.finale.asked(trial.number, int(trial.user_attrs["final_of"]))
                if (self._near_limit and not trial.user_attrs.keys() & {"retry_of", "warm_start"}  # those run
                        and studies.surplus(self.study, self.storage, trial._trial_id, self.config.trial_limit)):
                    studies.reject(self.study, trial, "one too many: other processes took the study's last trials",
                                   process=self.process)
                    return []
                asked, too_big = [], []
                with studies.gathered_writes(*trials, first=True):  # one commit: params, attributes, heartbeats
                    for trial in trials:
                        self._beating[trial.number] = trial._trial_id
                        trial.set_user_attr("process", self.process)  # who ran it, for the aggregate view
                        params = search_space.suggest(trial, self.space, self.config.pins, input_shape=self.shape)
                        n = 0 if self.config.model is not None else search_space.count_params(
                            params, self.info.modality, self.info.input_shape, self.info.num_classes,
                            self.info.vocab_size)
                        if self.config.model is None:  # an own model: its size is known once it is built
                            trial.set_user_attr("param_count", n)
                        (asked if n <= self.config.max_params else too_big).append((trial, params, n))
                        if n <= self.config.max_params and prepare is not None:
                            prepare(trial, params)
                for trial, _, n in too_big:
                    if trial.number == self._warm_start_number:  # pins made the default too big: no neighbours
                        self._warm_start_number = None
                    studies.reject(self.study, trial, f"{n} parameters > max_params={self.config.max_params}")
                    self._beating.pop(trial.number, None)
                    self._consecutive_rejections += 1
                    if self._consecutive_rejections >= MAX_CONSECUTIVE_REJECTIONS:
                        self.stop_reason = (f"{MAX_CONSECUTIVE_REJECTIONS} sampled configurations in a row exceeded "
                                            f"max_params={self.config.max_params}; raise max_params or pin smaller "
                                            "layers")
                if asked or self.stop_reason is not None:
                    self._consecutive_rejections = 0 if asked else self._consecutive_rejections
                    return [(t, p) for t, p, _ in asked]

    def _neighbour(self, offset: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """The default configuration with two parameters redrawn at random, and its attributes (under the lock).

        While the warm-start trial trains, the sampler knows nothing good yet: TPE's random start-up trials land
        anywhere (in a short run, a network at 20x the default's epoch time, or a 15 %-accuracy one), and with
        several workers TPE counts the running warm start as a bad result (constant liar). Neighbours of the default
        explore where sound configurations are; once its result is in, TPE takes over. (Queued trials go first.)"""
        # the study's size (numbered from 0; the newest: the one this process asked last) + the offset-th asked together
        last = self._last_number if self._last_number is not None else len(self.study.get_trials(deepcopy=False)) - 1
        size = last + 1 + offset
        rng = random.Random(f"{self.config.seed}-neighbour-{size}")
        return search_space.neighbour_params(self.space, rng, self.config.pins, self.shape), {"near_default": True}

    #: own data: where trials read the prepared data file (file:// here, s3:// for remote workers); the session sets it
    data_uri: str | None = None

    @functools.cached_property
    def space(self) -> Any:
        """What to sample: the modality's built-in space (its name) or the user's SearchSpace."""
        return self.config.search_space

    def _data_fields(self) -> dict[str, Any]:
        c = self.config
        if not c.own_data:
            return {"dataset": c.dataset, "dataset_options": c.dataset_options}
        info = self.info
        return {"dataset": CUSTOM_DATASET, "data_uri": self.data_uri, "data_sha256": c.data_sha256, "modality":
                info.modality, "input_shape": list(info.input_shape), "num_classes": info.num_classes, "vocab_size":
                info.vocab_size}

    def job(self, trial: Any, params: dict[str, Any], max_epochs: int) -> TrialJob:
        c, final = self.config, self.finale.epochs_of.get(trial.number)  # a final: its epochs, no early stopping
        job = TrialJob(trial_id=f"{c.run_name}#{trial.number}", **self._data_fields(), model=c.model, params=params,
                       max_epochs=final or max_epochs, min_epochs=c.min_epochs_per_trial,
                       patience=final or c.early_stopping_patience,
                       seed=(c.seed + trial.number) % 2**32, split_seed=c.seed, validation_split=c.validation_split,
                       data_fraction=c.data_fraction, use_multi_gpu=c.use_multi_gpu, lr_schedule=c.lr_schedule,
                       target_gpus=c.target_gpus_per_worker, compute_health=c.mode != "simple",
                       **self.finale.job_fields(trial.number),
                       schedule_epochs=(final or max(c.max_epochs_per_trial, max_epochs)) if c.lr_schedule == "cosine"
                       else None)
        with self.lock:
            trial.set_user_attr("job", job.to_dict())
        return job

    # -- epochs --------------------------------------------------------------------------------------------------------
    def report(self, trial: Any, report: EpochReport, max_epochs: int) -> str | None:
        """Feed one epoch's validation accuracy to the pruner; the reason to prune now, or None. A trial at its last
        epoch (``max_epochs``) is never pruned: it has trained everything, and pruning would only discard its result."""
        acc = report.metrics.get("val_accuracy")
        if self.config.mode == "pareto" or acc is None:
            return None
        with self.lock:
            trial.report(float(acc), report.epoch)
            seconds = report.metrics.get("elapsed_s")  # measured by the trainer
            if self.pruner is not None and seconds is not None:
                self.pruner.record_time(trial.number, report.epoch, float(seconds))
            final = trial.number in self.finale.epochs_of  # a final trial is never pruned either
            if report.epoch < max_epochs and not final and trial.should_prune():
                reasons = self.pruner.reasons if self.pruner is not None else {}
                return reasons.get(trial.number) or f"pruned at epoch {report.epoch}"
        return None

    # -- the verdict ---------------------------------------------------------------------------------------------------
    def finish(self, trial: Any, job: TrialJob, result: TrialResult, *, pruned: bool, cancel_reason: str | None,
               last_epoch: int, epochs: Sequence[EpochReport] = ()) -> Outcome:
        """Record a finished trial: its epochs against the budget, its result, and its fate in the study.
        ``epochs``: reports not recorded yet (:meth:`record_epochs`), written with the verdict."""
        from optuna.trial import TrialState

        from . import scoring
        from .backends._checks import check_result
        from .exceptions import TrialFailed

        if result.status == "stopped" and cancel_reason in (BUDGET_CUT, FINAL_CUT) and result.val_metrics:
            # stopped at an epoch's end when the time for trials (or the search) was over: complete at what it trained
            result = dataclasses.replace(result, status="completed", details=dict(result.details, out_of_time=True))
        self.budget.record(result)
        self.finale.note_result(trial.number, result.train_seconds)
        if result.status == "completed":  # believed only in range, wherever it ran
            try:
                check_result(result, job)
            except TrialFailed as exc:
                result = TrialResult(trial_id=result.trial_id, status="failed", executed_on=result.executed_on,
                                     error=f"the trial's result is out of range: {exc}")
        result = scoring.reweight(result, self.config.health_weights)  # overall_health with the run's weights
        with self.lock:
            if trial.number == self._warm_start_number:
                self._warm_start_number = None
            # epochs this trial trained count against epoch_budget whatever its fate (an interrupted trial's too)
            trained = min(job.max_epochs, max(int(result.epochs_run or 0), last_epoch))
            self.epochs_spent += trained
            with studies.gathered_writes(trial):  # the verdict's attributes in one commit, the tell after it
                self._record_epochs(trial, epochs)
                trial.set_user_attr("epochs_trained", trained)
                trial.set_user_attr("result", result.to_dict())
                if result.details.get("fallback_reason"):
                    trial.set_user_attr("fallback_reason", result.details["fallback_reason"])
                outcome = Outcome("failed", None, result.error)
                if result.status == "completed":
                    try:
                        values: list[float] | None = scoring.objective(result, mode=self.config.mode,
                                                                       health_weight=self.config.health_weight)
                    except HPOError as exc:
                        values, outcome.reason = None, str(exc)
                    if values is not None and all(math.isfinite(v) for v in values):
                        trial.set_user_attr("counted", True)
                        why = self.finale.reason(trial, cancel_reason, bool(result.details.get("out_of_time")))
                        if why is not None:  # cut at an epoch's end, or ended after the final training was chosen
                            trial.set_user_attr("reason", f"{why}: trained {result.epochs_run} epochs")
                        tell: dict[str, Any] = {"values": values if len(values) > 1 else values[0]}
                        self.counted += 1
                        self._consecutive_failures = 0
                        outcome = Outcome("completed", values[0], None)
                        self.models.keep(trial.number, values[0])  # before promote(): it links the trial's file
                        if self.config.mode != "pareto" and (self.best_value is None or values[0] > self.best_value):
                            self.best_value, self.best_number = values[0], trial.number
                            self.models.promote(trial.number)
                    else:
                        tell = self._fail(trial, outcome.reason or "the objective could not be computed")
                elif (result.status == "stopped" and pruned) or cancel_reason in (BUDGET_CUT, FINAL_CUT):  # cut
                    trial.set_user_attr("counted", True)
                    trial.set_user_attr("reason", cancel_reason)
                    tell = {"state": TrialState.PRUNED}
                    self.counted += 1
                    self._consecutive_failures = 0
                    outcome = Outcome("pruned", result.val_accuracy, cancel_reason)
                elif cancel_reason is not None and (self.interrupted or cancel_reason == "interrupted"):
                    trial.set_user_attr("interrupted", True)
                    trial.set_user_attr("reason", "interrupted; retried when the run resumes")
                    tell = {"state": TrialState.FAIL}
                    outcome = Outcome(None, None, None)
                else:
                    tell = self._fail(trial, result.error or cancel_reason or "failed")
            studies.tell(self.study, trial, **tell)
            self.models.drop(trial.number)
            self._beating.pop(trial.number, None)
        return outcome

    def record_epochs(self, trial: Any, epochs: Sequence[EpochReport]) -> None:
        """Epoch reports no pruner acts on (see :attr:`prunes`), written in one commit."""
        with self.lock, studies.gathered_writes(trial):
            self._record_epochs(trial, epochs)

    def _record_epochs(self, trial: Any, epochs: Sequence[EpochReport]) -> None:
        for report in epochs:
            acc = report.metrics.get("val_accuracy")
            if self.config.mode != "pareto" and acc is not None:  # as report(), without asking the pruner
                trial.report(float(acc), report.epoch)

    def _fail(self, trial: Any, reason: str) -> dict[str, Any]:
        """A failed trial's attributes and counts; what to tell the study."""
        from optuna.trial import TrialState

        log.warning("trial %s failed with params %s: %s", trial.number, trial.params, reason)
        trial.set_user_attr("counted", True)
        trial.set_user_attr("reason", reason[:2000])
        self.counted += 1
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.config.max_consecutive_failures and self.stop_reason is None:
            self.aborted = True
            self.stop_reason = (f"{self._consecutive_failures} trials failed in a row "
                                f"(max_consecutive_failures={self.config.max_consecutive_failures}); last error: "
                                f"{reason.splitlines()[0] if reason else '?'}")
        return {"state": TrialState.FAIL}
