"""The run loop: an Optuna study driven with ask/tell from ``concurrent_workers`` threads.

Each thread: ask a trial -> suggest params -> TrialJob -> backend -> TrialResult -> tell. Every trial's numbers
travel in its own TrialResult, stored in the trial's user attributes. Exceptions decide a trial's fate: a failed
result is recorded and the study goes on; ``max_consecutive_failures`` failures in a row stop the run.

Resume: the same run folder continues its study. Trials left RUNNING by a killed run, and trials cancelled by Ctrl-C,
are marked failed and their parameters retried (``enqueue_trial``); completed trials are never repeated.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import random
import shutil
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from . import datasets, search_space
from .backends import Backend, CancelToken
from .config import OptimizationConfig
from .exceptions import ConfigError, HPOError
from .progress import ProgressTracker
from .protocol import EpochReport, TrialJob, TrialResult
from .results import (CONFIG_FILE, MODEL_FILE, STUDY_FILE, OptimizationResult, build_result, trial_records,
                      write_best, write_config, write_trials_csv)

__all__ = ["Orchestrator", "prepare_run_dir", "objective_values"]

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_REJECTIONS = 100

# hpo drives the study with ask/tell and beats each trial's heartbeat itself (_heartbeat_main); Optuna warns about
# heartbeats outside Study.optimize and about fail_stale_trials being experimental on every call.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental")
warnings.filterwarnings("ignore", message="Argument ``heartbeat_interval`` is an experimental feature")


def objective_values(result: TrialResult, config: OptimizationConfig) -> list[float]:
    """The value(s) told to Optuna for a finished trial (validation metrics only; test metrics are never used)."""
    from . import health

    return health.objective(result, mode=config.mode, health_weight=config.health_weight)


# -- run folder -------------------------------------------------------------------------------------------------------

def _existing_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare_run_dir(config: OptimizationConfig, *, create: bool = True) -> tuple[Path, bool, OptimizationConfig]:
    """Decide the run folder: (path, resuming?, config with run_name filled in). Validates before creating it."""
    root = Path(config.output_dir)
    if config.run_name:
        run_dir = root / config.run_name
        existing = _existing_config(run_dir)
        if existing is not None:
            old = existing["config"]
            for key in ("dataset", "mode"):
                if old.get(key) != getattr(config, key):
                    raise ConfigError(f"run {config.run_name!r} exists with {key}={old.get(key)}; you asked for "
                                      f"{key}={getattr(config, key)} — pick another run_name to start a new run")
            return run_dir, True, config
        from .runlock import HOLDER_FILE, LOCK_FILE

        if run_dir.exists() and any(p.name not in (LOCK_FILE, HOLDER_FILE) for p in run_dir.iterdir()):
            raise ConfigError(f"{run_dir} exists but is not an hpo run folder; pick another run_name")
        if config.resume:
            raise ConfigError(f"resume=true but there is no run {config.run_name!r} in {root}")
        return run_dir, False, config
    if config.resume:
        candidates = []
        for child in root.glob("*") if root.is_dir() else []:
            existing = _existing_config(child)
            if existing and existing["config"].get("dataset") == config.dataset:
                candidates.append((child.stat().st_mtime, child))
        if not candidates:
            raise ConfigError(f"resume=true but {root} holds no run of dataset {config.dataset}; start one without "
                              "resume, or give run_name")
        run_dir = max(candidates)[1]
        return run_dir, True, config.replace(run_name=run_dir.name)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")  # no colons: safe on every OS
    name = f"{config.dataset}-{stamp}"
    run_dir, n = root / name, 2
    while run_dir.exists():
        run_dir, n = root / f"{name}-{n}", n + 1
    return run_dir, False, config.replace(run_name=run_dir.name)


def _tune_sqlite(storage: Any) -> None:
    """WAL journal + synchronous=NORMAL: commits cost a fraction of the default rollback journal's fsyncs (it made
    every ask/tell ~15 ms), readers (optuna-dashboard, `hpo show`) never block writers, and a killed process still
    loses nothing that was committed."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # connections opened before the listener get the pragmas on reconnect


# -- orchestrator -----------------------------------------------------------------------------------------------------

class Orchestrator:
    """Runs one optimization. Use :meth:`run`; :meth:`request_stop` stops it gracefully from another thread."""

    def __init__(self, config: OptimizationConfig, backend: Backend, run_dir: Path, *,
                 progress: ProgressTracker | None = None, model_store: bool = True) -> None:
        self.config = config
        self.backend = backend
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.model_store = model_store
        self.info = config.dataset_info
        self._lock = threading.RLock()  # guards the study (ask/tell/report) and the counters
        self._files_lock = threading.Lock()
        self._files_dirty = threading.Event()
        self._writer_stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._tokens: dict[int, CancelToken] = {}
        self._counted = 0
        self._running = 0
        self._consecutive_failures = 0
        self._consecutive_rejections = 0
        self._stop_reason: str | None = None
        self._aborted = False
        self._interrupted = False
        self._deadline: float | None = None
        self._best_value: float | None = None
        self._best_number: int | None = None
        self._epochs_spent = 0  # epochs trained by finished trials (epoch_budget)
        self._epochs_reserved = 0  # epochs granted to running trials and not yet trained
        #: number of the warm-start trial while it trains; new trials meanwhile are neighbours of its configuration
        self._warm_start_number: int | None = None
        self.notes: list[str] = []
        self.study: Any = None
        self._storage: Any = None
        self._threads_left = 0
        self._threads_done = threading.Event()
        self._heartbeat_ids: dict[int, int] = {}  # trial number -> storage trial id, for this process's running trials
        self._next_stale_check = 0.0

    # -- study ----------------------------------------------------------------------------------------------------
    @property
    def expected_trials(self) -> int:
        """trials, or about as many as epoch_budget allows when it is the tighter limit (pruning and early
        stopping end most trials around the middle of their epoch range)."""
        c = self.config
        if c.epoch_budget is None:
            return c.trial_limit
        typical = max(1, math.ceil((c.min_epochs_per_trial + c.max_epochs_per_trial) / 2))
        return max(1, min(c.trial_limit, c.epoch_budget // typical))

    @property
    def startup_trials(self) -> int:
        """Random trials before TPE models the results. TPE's default of 10 would make a 12-trial run almost a random
        search: a quarter of the expected trials (3..10) leaves most trials guided. With warm_start, the trials that
        start while the default trains are its neighbours (:meth:`_enqueue_neighbour`), so TPE needs no random
        start-up of its own beyond one trial (a quarter of the expected ones, up to 10, in long runs, for coverage)."""
        quarter = min(10, self.expected_trials // 4)
        return max(1, quarter) if self.config.warm_start else max(3, quarter)

    @property
    def storage_url(self) -> str:
        return self.config.storage or f"sqlite:///{(self.run_dir / STUDY_FILE).resolve()}"

    @property
    def owns_storage(self) -> bool:
        """True when the study lives in this run folder's own study.db: the run folder's lock then proves that no
        other process writes to it, so trials found RUNNING at start are certainly stale."""
        return self.config.storage is None

    def _create_study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = self.storage_url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        grace = self.config.heartbeat_grace_s
        # Optuna 4.9 renamed failed_trial_callback (removed in 6); pass whichever this Optuna has
        import inspect

        takes_new = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
        kwargs["heartbeat_stale_trial_callback" if takes_new else "failed_trial_callback"] = self._retry_stale
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=max(1, int(grace // 4)),
                                             grace_period=max(2, int(grace)), **kwargs)
        if url.startswith("sqlite"):
            _tune_sqlite(storage)
        self._storage = storage
        directions = ["maximize", "maximize"] if self.config.mode == "pareto" else ["maximize"]
        name = self.config.run_name
        try:
            existing = optuna.load_study(study_name=name, storage=storage)
            previous = len(existing.trials)
        except KeyError:
            previous = 0
        # A resumed study gets a sampler seeded past the trials it already has, so its random start-up trials do
        # not repeat the parameters of the first run.
        seed = self.config.seed + previous
        if self.config.sampler == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            # Multivariate TPE (grouped, for the conditional dense_units) models how the parameters interact.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = optuna.samplers.TPESampler(
                    seed=seed, constant_liar=self.config.concurrent_workers > 1, multivariate=True, group=True,
                    n_startup_trials=self.startup_trials)
        study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                                    pruner=self._make_pruner(), load_if_exists=True)
        study.set_user_attr("hpo_mode", self.config.mode)
        return study

    def _make_pruner(self) -> Any:
        import optuna

        c = self.config
        if c.mode == "pareto" or c.pruner == "none":
            if c.mode == "pareto" and c.pruner != "none":
                self.notes.append(f"pruner={c.pruner} is off: Optuna cannot prune multi-objective (pareto) studies")
            return optuna.pruners.NopPruner()
        from .pruners import FarBehindPruner

        if c.pruner == "hyperband":
            inner: Any = optuna.pruners.HyperbandPruner(min_resource=c.min_epochs_per_trial,
                                                        max_resource=c.max_epochs_per_trial)
        elif c.pruner == "median":
            inner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=c.min_epochs_per_trial)
        else:
            inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=c.min_epochs_per_trial)
        return FarBehindPruner(inner, margin=c.prune_below_best, time_margin=c.prune_behind_in_time,
                               min_step=c.min_epochs_per_trial)

    def _retry_stale(self, study: Any, trial: Any) -> None:
        """Optuna's failed-trial callback: a trial whose process stopped sending heartbeats was just failed (by this
        process only: the storage lets one process make that change). It was interrupted, not a failure: it is
        queued again once, with its parameters."""
        if trial.params and not trial.user_attrs.get("retry_of_stale"):
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "retry_of_stale": True},
                                skip_if_exists=False)
        self.notes.append(f"trial {trial.number} was left running by a process that stopped; it is retried")

    def _fail_stale_trials(self, *, force: bool = False) -> None:
        """Fail (as interrupted) and re-queue the trials of dead processes. (Under _lock, or before the threads.)"""
        import optuna

        now = time.monotonic()
        if not force and now < self._next_stale_check:
            return
        self._next_stale_check = now + max(1.0, self.config.heartbeat_grace_s / 4)
        optuna.storages.fail_stale_trials(self.study)

    def _recover(self) -> None:
        """Trials a killed run left RUNNING become interrupted and are retried; so are Ctrl-C'd trials that were not
        retried yet. Completed trials are never repeated.

        With the run folder's own study (the lock proves no other process uses it) every RUNNING trial is stale.
        With a shared storage only trials whose heartbeat stopped are: a live process's trials are never touched."""
        from optuna.trial import TrialState

        if self.owns_storage:
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                try:
                    self._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                except Exception:  # noqa: BLE001 - finished meanwhile (UpdateFinishedTrialError): nothing to recover
                    continue
                self._retry_stale(self.study, t)
        self._fail_stale_trials(force=True)
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            if t.user_attrs.get("interrupted") and t.number not in retried and t.params:
                self.study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
        trials = self.study.get_trials(deepcopy=False)
        self._counted = sum(1 for t in trials if t.user_attrs.get("counted"))
        self._epochs_spent = sum(int(t.user_attrs.get("epochs_trained") or 0) for t in trials)
        if not trials and self.config.warm_start:
            info = self.info
            shape = info.input_shape if info.modality == "image" else None
            self.study.enqueue_trial(search_space.default_params(info.modality, self.config.pins, shape),
                                     user_attrs={"warm_start": True})
            self._warm_start_number = self.study.get_trials(deepcopy=False)[-1].number
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if done and self.config.mode != "pareto":
            best = max(done, key=lambda t: t.value)
            self._best_value, self._best_number = best.value, best.number

    # -- the loop ---------------------------------------------------------------------------------------------------
    def request_stop(self, reason: str = "interrupted", *, hard: bool = True) -> None:
        """No new trials; running ones are cancelled (hard: without waiting for their epoch to end)."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            self._interrupted = self._interrupted or reason == "interrupted"
            tokens = list(self._tokens.values())
        for token in tokens:
            token.cancel(reason, hard=hard)

    def run(self) -> OptimizationResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.study = self._create_study()
        write_config(self.run_dir, self.config, storage_url=self.storage_url, study_name=self.config.run_name or "")
        self._recover()
        if self.progress is not None:
            self.progress.total = self.expected_trials
            self.progress.already_done = self._counted
            self.progress.epoch_budget = self.config.epoch_budget
            self.progress.epochs_before = self._epochs_spent
            self.progress.best = self._best_value
        if self.config.timeout_minutes:
            self._deadline = time.monotonic() + self.config.timeout_minutes * 60
        # A backend may ask for a few trials beyond concurrent_workers to be kept submitted (RunPod: queued on the
        # endpoint, so a worker that finishes finds its next job waiting instead of waiting for Optuna).
        queue_ahead = max(0, int(getattr(self.backend, "queue_ahead", 0) or 0))
        threads = [threading.Thread(target=self._thread_main, name=f"hpo-trial-{i}", daemon=True)
                   for i in range(self.config.concurrent_workers + queue_ahead)]
        threading.Thread(target=self._heartbeat_main, name="hpo-heartbeat", daemon=True).start()
        self._threads_left = len(threads)
        for t in threads:
            t.start()
        # Wait on an event, never on Thread.join: on Python 3.11 a Ctrl-C that interrupts join(timeout) marks the
        # still-running thread as stopped (its lock is released from outside), the run then finished while a trial
        # thread had not recorded its trial yet, and the trial stayed RUNNING in the study.
        try:
            while not self._threads_done.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.request_stop("interrupted", hard=True)
            while not self._threads_done.wait(0.2):
                pass
        return self._finish()

    def _epoch_allowance(self) -> int | None:
        """Epochs the next trial may train: max_epochs_per_trial, or fewer when epoch_budget has fewer left; 0 when
        it must wait for running trials to give unused epochs back; None when the budget is spent. (Under _lock.)

        A trial is not started with fewer than a third of max_epochs_per_trial (or min_epochs_per_trial): cut that
        short, it cannot compete with the trials that trained for longer (the default CNN reaches 87 % in 2 epochs
        against 91 % in 18), and the run would only wait for it. Those last epochs stay unspent."""
        c = self.config
        if c.epoch_budget is None:
            return c.max_epochs_per_trial
        left = c.epoch_budget - self._epochs_spent - self._epochs_reserved
        if left >= self.shortest_trial:
            return min(c.max_epochs_per_trial, left)
        return 0 if self._epochs_reserved > 0 else None

    @property
    def shortest_trial(self) -> int:
        """The fewest epochs a trial is started with under epoch_budget: a third of max_epochs_per_trial, at least
        min_epochs_per_trial."""
        c = self.config
        return max(c.min_epochs_per_trial, math.ceil(c.max_epochs_per_trial / 3))

    def _thread_main(self) -> None:
        try:
            self._trial_loop()
        finally:
            with self._lock:
                self._threads_left -= 1
                if self._threads_left == 0:
                    self._threads_done.set()

    def _trial_loop(self) -> None:
        while True:
            with self._lock:
                if self._stop_reason is not None:
                    return
                if self._counted + self._running >= self.config.trial_limit:
                    return
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._stop_reason = f"timeout_minutes={self.config.timeout_minutes:g} reached"
                    return
                allowance = self._epoch_allowance()
                if allowance is None:
                    left = self.config.epoch_budget - self._epochs_spent
                    self._stop_reason = (f"epoch_budget={self.config.epoch_budget} spent "
                                         f"({self._epochs_spent} epochs trained)" if left <= 0 else
                                         f"epoch_budget={self.config.epoch_budget} used up: "
                                         f"{self._epochs_spent} epochs trained, the {left} left are fewer than "
                                         f"a trial is started with ({self.shortest_trial})")
                    return
                if allowance > 0:
                    self._running += 1
                    self._epochs_reserved += allowance
            if allowance == 0:  # running trials hold the rest of the budget; they may give some back
                time.sleep(0.05)
                continue
            try:
                self._one_trial(allowance)
            except Exception as exc:  # noqa: BLE001 - an orchestrator bug must not hang the other threads
                log.exception("unexpected error while running a trial")
                with self._lock:
                    if self._stop_reason is None:
                        self._stop_reason = f"internal error: {type(exc).__name__}: {exc}"
                    self._aborted = True  # the CLI exits 1: a run that stopped on an internal error did not succeed
            finally:
                with self._lock:
                    self._running -= 1
                    self._epochs_reserved -= allowance

    def _ask(self) -> tuple[Any, dict[str, Any]] | None:
        """Ask for a trial and its params; rejects (not counted) configurations over max_params."""
        info = self.info
        while True:
            with self._lock:
                if self._stop_reason is not None:
                    return None
                shape = info.input_shape if info.modality == "image" else None
                if self._warm_start_number is not None:
                    self._enqueue_neighbour(shape)
                if not self.owns_storage:
                    self._fail_stale_trials()
                trial = self.study.ask()
                self._beat(trial)
                params = search_space.suggest(trial, info.modality, self.config.pins, input_shape=shape)
                n = search_space.count_params(params, info.modality, info.input_shape, info.num_classes,
                                              info.vocab_size)
                trial.set_user_attr("param_count", n)
                if n <= self.config.max_params:
                    self._consecutive_rejections = 0
                    return trial, params
                import optuna

                if trial.number == self._warm_start_number:  # pins made the default too big: no neighbours of it
                    self._warm_start_number = None
                trial.set_user_attr("rejected", True)
                trial.set_user_attr("reason", f"{n} parameters > max_params={self.config.max_params}")
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                self._heartbeat_ids.pop(trial.number, None)
                self._consecutive_rejections += 1
                if self._consecutive_rejections >= MAX_CONSECUTIVE_REJECTIONS:
                    self._stop_reason = (f"{MAX_CONSECUTIVE_REJECTIONS} sampled configurations in a row exceeded "
                                         f"max_params={self.config.max_params}; raise max_params or pin smaller "
                                         "layers")
                    return None

    # -- heartbeats: other processes sharing the study judge this one's trials alive by them --------------------
    def _beat(self, trial: Any) -> None:
        """Record a first heartbeat as the trial is asked and keep beating until it is told. (Under _lock.)"""
        self._heartbeat_ids[trial.number] = trial._trial_id
        self._storage.record_heartbeat(trial._trial_id)

    def _heartbeat_main(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 10
        while not self._writer_stop.wait(interval):
            with self._lock:
                ids = list(self._heartbeat_ids.values())
            for trial_id in ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is retried next interval; grace covers several
                    log.warning("could not record a heartbeat for a running trial", exc_info=True)

    def _enqueue_neighbour(self, shape: tuple[int, ...] | None) -> None:
        """Queue the default configuration with two parameters redrawn at random (under _lock).

        While the warm-start trial trains, the sampler knows nothing good yet: TPE's random start-up trials land
        anywhere in the space (in a short run, a 3-block 64-filter 5x5 network at 20x the default's epoch time, or
        a 15 %-accuracy configuration), and with several workers TPE counts the running warm-start trial as a bad
        result (constant liar) and models the first pruned random trial as the good region. Neighbours of the
        default explore where sound configurations are; once its result is in, TPE takes over."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):  # the warm start itself, or a retry, goes first
            return
        rng = random.Random(f"{self.config.seed}-neighbour-{len(trials)}")
        params = search_space.neighbour_params(self.info.modality, rng, self.config.pins, shape)
        self.study.enqueue_trial(params, user_attrs={"near_default": True}, skip_if_exists=False)

    def _job(self, trial: Any, params: dict[str, Any], max_epochs: int) -> TrialJob:
        c = self.config
        return TrialJob(trial_id=f"{c.run_name}#{trial.number}", dataset=c.dataset,
                        dataset_options=c.dataset_options, params=params, max_epochs=max_epochs,
                        min_epochs=c.min_epochs_per_trial, patience=c.early_stopping_patience,
                        seed=(c.seed + trial.number) % 2**32, split_seed=c.seed, validation_split=c.validation_split,
                        data_fraction=c.data_fraction, use_multi_gpu=c.use_multi_gpu,
                        target_gpus=c.target_gpus_per_worker, compute_health=c.mode != "simple",
                        lr_schedule=c.lr_schedule)

    def _one_trial(self, max_epochs: int) -> None:
        asked = self._ask()
        if asked is None:
            return
        trial, params = asked
        job = self._job(trial, params, max_epochs)
        token = CancelToken()
        pruned_at: list[int] = []
        last_epoch = [0]
        with self._lock:
            self._tokens[trial.number] = token
            trial.set_user_attr("job", job.to_dict())
            if self._stop_reason is not None:
                token.cancel(self._stop_reason, hard=True)
        if self.progress:
            self.progress.trial_started(trial.number, where=self.backend.name, max_epochs=job.max_epochs)

        def on_epoch(report: EpochReport) -> None:
            last_epoch[0] = max(last_epoch[0], report.epoch)
            if self.progress:
                self.progress.epoch(trial.number, report.epoch, report.metrics)
            acc = report.metrics.get("val_accuracy")
            if self.config.mode == "pareto" or acc is None or token.cancelled:
                return
            with self._lock:
                trial.report(float(acc), report.epoch)
                record_time = getattr(self.study.pruner, "record_time", None)
                seconds = report.metrics.get("elapsed_s")  # measured by the trainer
                if record_time is not None and seconds is not None:
                    record_time(trial.number, report.epoch, float(seconds))
                if trial.should_prune():
                    pruned_at.append(report.epoch)
                    reasons = getattr(self.study.pruner, "reasons", {})
                    token.cancel(reasons.get(trial.number) or f"pruned at epoch {report.epoch}")

        model_path = self._model_path(trial.number)
        try:
            result = self.backend.run(job, on_epoch=on_epoch, cancel=token,
                                      timeout_s=(self.config.trial_timeout_minutes or 0) * 60 or None,
                                      save_model_to=str(model_path) if model_path else None)
        except Exception as exc:  # noqa: BLE001 - the backend could not run it: a failed trial, the study goes on
            log.error("trial %s: backend error with params %s\n%s", trial.number, params, traceback.format_exc())
            result = TrialResult(trial_id=job.trial_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._tokens.pop(trial.number, None)
        with self._lock:
            if trial.number == self._warm_start_number:
                self._warm_start_number = None
            # epochs this trial trained count against epoch_budget whatever its fate (an interrupted trial's too)
            trained = min(job.max_epochs, max(int(result.epochs_run or 0), last_epoch[0]))
            trial.set_user_attr("epochs_trained", trained)
            self._epochs_spent += trained
        self._tell(trial, job, result, pruned_at, token)

    def _tell(self, trial: Any, job: TrialJob, result: TrialResult, pruned_at: list[int], token: CancelToken) -> None:
        from optuna.trial import TrialState

        from . import health

        result = health.reweight(result, self.config.health_weights)  # overall_health with the run's weights
        state, value, reason = "failed", None, result.error
        with self._lock:
            trial.set_user_attr("result", result.to_dict())
            if result.details.get("fallback_reason"):
                trial.set_user_attr("fallback_reason", result.details["fallback_reason"])
            if result.status == "completed":
                try:
                    values = objective_values(result, self.config)
                except HPOError as exc:
                    values, reason = None, str(exc)
                if values is not None and all(math.isfinite(v) for v in values):
                    trial.set_user_attr("counted", True)
                    self.study.tell(trial, values if len(values) > 1 else values[0])
                    self._counted += 1
                    self._consecutive_failures = 0
                    state, value = "completed", values[0]
                    self._keep_model_if_best(trial.number, values)
                else:
                    self._fail(trial, reason or "the objective could not be computed")
            elif result.status == "stopped" and pruned_at:
                trial.set_user_attr("counted", True)
                trial.set_user_attr("reason", token.reason)
                self.study.tell(trial, state=TrialState.PRUNED)
                self._counted += 1
                self._consecutive_failures = 0
                state, value, reason = "pruned", result.val_accuracy, token.reason
            elif token.cancelled and (self._interrupted or token.reason == "interrupted"):
                trial.set_user_attr("interrupted", True)
                trial.set_user_attr("reason", "interrupted; retried when the run resumes")
                self.study.tell(trial, state=TrialState.FAIL)
                state, reason = None, None
            else:
                self._fail(trial, result.error or token.reason or "failed")
            self._drop_model(trial.number)
        with self._lock:
            self._heartbeat_ids.pop(trial.number, None)
        if self.progress and result.details.get("fallback_reason"):
            self.progress.fell_back(trial.number, result.details["fallback_reason"],
                                    where=result.executed_on or "local")
        if self.progress:
            if state is None:
                self.progress.trial_discarded(trial.number)
            else:
                self.progress.trial_finished(trial.number, state, value=value, where=result.executed_on,
                                             reason=reason)
        self._write_files()

    def _fail(self, trial: Any, reason: str) -> None:
        from optuna.trial import TrialState

        log.warning("trial %s failed with params %s: %s", trial.number, trial.params, reason)
        trial.set_user_attr("counted", True)
        trial.set_user_attr("reason", reason[:2000])
        self.study.tell(trial, state=TrialState.FAIL)
        self._counted += 1
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.config.max_consecutive_failures and self._stop_reason is None:
            self._aborted = True
            self._stop_reason = (f"{self._consecutive_failures} trials failed in a row "
                                 f"(max_consecutive_failures={self.config.max_consecutive_failures}); last error: "
                                 f"{reason.splitlines()[0] if reason else '?'}")

    # -- best model -------------------------------------------------------------------------------------------------
    def _model_path(self, number: int) -> Path | None:
        if not self.model_store:
            return None
        folder = self.run_dir / "models"
        folder.mkdir(exist_ok=True)
        return folder / f"trial-{number}.keras"

    def _keep_model_if_best(self, number: int, values: list[float]) -> None:
        """Single objective: the best-so-far model becomes best_model.keras. Pareto: models are kept until the end."""
        path = self._model_path(number)
        if path is None or not path.exists():
            return
        if self.config.mode == "pareto":
            return
        if self._best_value is None or values[0] > self._best_value:
            self._best_value, self._best_number = values[0], number
            shutil.move(str(path), self.run_dir / MODEL_FILE)

    def _drop_model(self, number: int) -> None:
        path = self._model_path(number)
        if path is not None and path.exists() and self.config.mode != "pareto":
            path.unlink()

    def _finalize_models(self, result: OptimizationResult) -> None:
        folder = self.run_dir / "models"
        if self.config.mode == "pareto" and result.best_trial_number is not None:
            chosen = folder / f"trial-{result.best_trial_number}.keras"
            if chosen.exists():
                shutil.move(str(chosen), self.run_dir / MODEL_FILE)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    # -- files ------------------------------------------------------------------------------------------------------
    def _write_files(self) -> None:
        """Ask for trials.csv / best.json to be rewritten. A background writer coalesces the requests, so trial
        threads never wait for file I/O (with many concurrent trials, rewriting per trial under the study lock
        delayed the next dispatch by up to seconds)."""
        self._files_dirty.set()
        if self._writer is None:
            self._writer = threading.Thread(target=self._writer_main, name="hpo-files", daemon=True)
            self._writer.start()

    def _writer_main(self) -> None:
        while not self._writer_stop.is_set():
            if self._files_dirty.wait(timeout=0.5):
                self._files_dirty.clear()
                self._write_files_now()

    def _write_files_now(self) -> None:
        with self._files_lock:
            try:
                records = trial_records(self.study)
                write_trials_csv(self.run_dir, records)
                write_best(self.run_dir, self.study, records, self.config.mode)
            except Exception:  # noqa: BLE001 - a failed rewrite is retried at the next trial and at the end
                log.exception("could not write the run files of %s", self.run_dir)

    def _finish(self) -> OptimizationResult:
        self._writer_stop.set()
        if self._writer is not None:
            self._writer.join()
        self._write_files_now()
        for note in getattr(self.backend, "notes", None) or []:  # e.g. why trials ran locally instead of on RunPod
            if note not in self.notes:
                self.notes.append(note)
        result = build_result(self.run_dir, self.study, self.config.mode, interrupted=self._interrupted,
                              stop_reason=self._stop_reason if self._stop_reason != "interrupted" else None,
                              aborted=self._aborted,
                              notes=self.notes)
        self._finalize_models(result)
        return result


# -- the public entry point ---------------------------------------------------------------------------------------------

def make_backend(config: OptimizationConfig, run_dir: Path) -> Backend:
    """The backend the config asks for: local worker processes, or RunPod (with local fallback)."""
    from .backends.local import LocalBackend

    # Several CPU workers share the cores instead of each spawning a thread per core (oversubscribed cores train
    # slower in total); GPU training is unaffected by the CPU thread pools.
    workers = config.concurrent_workers
    tf_threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    local = LocalBackend(workers=workers, log_dir=run_dir / "logs", tf_threads=tf_threads)
    if not config.use_runpod_service:
        return local
    from .backends.runpod import make_runpod_backend

    return make_runpod_backend(config, local_fallback=local if config.runpod_fallback_local else None)


def optimize(config: OptimizationConfig | None = None, *, progress: Any = None, backend: Backend | None = None,
             env_file: str | None = None, **options: Any) -> OptimizationResult:
    """Run an optimization. Options are the CLI's keys (``hpo optimize --help``), validated the same way.

    ``progress``: a callable receiving ``(event, snapshot)`` dicts as trials start, report epochs and end (a
    one-argument callable receives the snapshot only). The console shows a live display on a terminal, one line per
    event otherwise, nothing with ``quiet=True``. At the end, plots and report.html per ``plot_generation``.
    Returns an :class:`~hpo.results.OptimizationResult`; Ctrl-C stops gracefully (``result.interrupted``).
    """
    from .config import config_from_options

    if config is None:
        config = config_from_options(options, env_file=env_file)
    elif options:
        raise ConfigError("give either a config or keyword options, not both")
    from .redact import install_log_masking
    from .runlock import RunLock

    install_log_masking()
    run_dir, _resuming, config = prepare_run_dir(config)
    local_needed = not config.use_runpod_service or config.runpod_fallback_local
    if local_needed and backend is None:
        datasets.ensure_available(config.dataset)  # DatasetError before any folder is made
    check_output_dir(config.output_dir)
    lock = RunLock(run_dir).acquire()  # RunLocked (exit 2) when another process writes to this folder
    try:
        return _run_locked(config, run_dir, progress, backend)
    finally:
        lock.release()


def check_output_dir(output_dir: str) -> None:
    """output_dir exists as a writable folder or can be made one; else a ConfigError (nothing else is written)."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir={output_dir!r} is a file, not a folder; allowed: a folder hpo can write to")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir={output_dir!r} cannot be created ({exc.strerror or exc}); allowed: a folder "
                          "hpo can write to") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={output_dir!r} is not writable; allowed: a folder hpo can write to")


def _run_locked(config: OptimizationConfig, run_dir: Path, progress: Any, backend: Backend | None) -> Any:
    from .progress import as_listener, make_display

    display = make_display(quiet=config.quiet)
    listeners = [display] if display is not None else []
    if progress is not None:
        listeners.append(as_listener(progress))
    tracker = ProgressTracker(config.trial_limit, concurrency=config.concurrent_workers, listeners=listeners)
    backend = backend or make_backend(config, run_dir)
    orchestrator = Orchestrator(config, backend, run_dir, progress=tracker)
    try:
        backend.start()
        result = orchestrator.run()
    finally:
        if display is not None:
            display.close()
        backend.close()
    if config.plot_generation != "none":
        try:
            from .report import generate_outputs

            report = generate_outputs(run_dir, plot_generation=config.plot_generation, study=orchestrator.study,
                                      notes=result.notes)
            if report is not None and not config.quiet:
                import sys

                print(f"report: {report}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            log.warning("plots and report skipped: interrupted")
        except Exception:  # noqa: BLE001 - plots never fail the run
            log.exception("plots and report could not be written")
    return result
