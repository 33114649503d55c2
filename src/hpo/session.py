"""One run, set up and torn down the same way for the CLI, the notebook (:func:`optimize`) and the REST run manager.

    config -> run folder (locked) -> study -> search + backend -> dispatch -> run files -> plots and report

:class:`Session` owns those steps; :func:`optimize` is ``Session.create(config).run()`` with the console display.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import kept, own_run
from .backends import Backend
from .config import OptimizationConfig
from .exceptions import ConfigError
from .finale import keeps_models
from .progress import ProgressTracker
from .results import CONFIG_FILE, ModelFiles, OptimizationResult, RunFilesWriter, build_result
from .rundir import check_output_dir, prepare_run_dir, storage_url, write_config
from .runlock import RunLock

__all__ = ["Session", "optimize", "make_backend"]

log = logging.getLogger(__name__)


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


class Session:
    """A run folder, its lock, study, search, backend and dispatcher. Build one with :meth:`create` (which checks
    everything and takes the folder's lock before anything is written), then :meth:`run`; :meth:`request_stop`
    stops it gracefully from another thread; :meth:`close` releases the lock."""

    def __init__(self, config: OptimizationConfig, run_dir: Path, *, resuming: bool, lock: RunLock,
                 backend: Backend | None = None, progress: ProgressTracker | None = None,
                 started: float | None = None) -> None:
        self.config = config
        self.started = time.monotonic() if started is None else started  # time_budget_minutes counts from here
        self.run_dir = Path(run_dir)
        self.resuming = resuming
        self.lock = lock
        self.backend = backend or make_backend(config, self.run_dir)
        self.progress = progress
        self.notes: list[str] = []
        self.study: Any = None
        self.search: Any = None
        self.dispatcher: Any = None
        self._stop_lock = threading.Lock()
        self._stop_requested: str | None = None
        self.data_uri: str | None = None  # own data: where trials read it
        self.made_dir = False  # create() made the run folder (close() removes it if the run never began)

    @classmethod
    def create(cls, config: OptimizationConfig, *, backend: Backend | None = None,
               progress: ProgressTracker | None = None, lock: RunLock | None = None,
               run_dir: Path | None = None, resuming: bool | None = None, data: Any = None) -> Session:
        """Check the options against the disk (dataset files, output folder), choose the run folder and lock it.

        ``lock``/``run_dir``/``resuming``: a caller that already chose and locked the folder (the REST run manager
        locks it when a run is submitted) passes them. ``data``: the user's arrays (``dataset="custom"``), prepared
        into the run folder (own data given as a path is read from ``config.dataset``)."""
        started = time.monotonic()
        if run_dir is None:
            run_dir, resuming, config = prepare_run_dir(config)
        local_needed = not config.use_runpod_service or config.runpod_fallback_local
        if local_needed and backend is None and not config.own_data:
            from . import datafiles

            datafiles.ensure_available(config.dataset)  # DatasetError before any folder is made
        check_output_dir(config.output_dir)
        own_run.check_model(config.model)  # the user's build function imports (in a child interpreter)
        existed = Path(run_dir).exists()
        held = lock or RunLock(run_dir).acquire()  # RunLocked (exit 2, HTTP 409): another process writes here
        try:
            config = own_run.prepare_data(config, Path(run_dir), data)  # bad data: an error, nothing written
            session = cls(config, run_dir, resuming=bool(resuming), lock=held, backend=backend, progress=progress,
                          started=started)
            session.data_uri = own_run.data_uri(config, Path(run_dir))  # RunPod: uploaded to the bucket once
            session.made_dir = lock is None and not existed
            return session
        except BaseException:
            if lock is None:
                held.release()
                own_run.remove_new_run_dir(Path(run_dir), existed)
            raise

    # -- running ---------------------------------------------------------------------------------------------------
    @property
    def storage_url(self) -> str:
        return storage_url(self.config, self.run_dir)

    def request_stop(self, reason: str = "interrupted", *, hard: bool = True) -> None:
        with self._stop_lock:
            self._stop_requested = self._stop_requested or reason
            dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.request_stop(reason, hard=hard)

    def run(self) -> OptimizationResult:
        """Start the backend, run every trial, write the run files; the backend is closed whatever happens."""
        try:
            self.backend.start()
            return self._run()
        finally:
            self.backend.close()

    def _open(self) -> None:
        from . import study as studies
        from .dispatch import Dispatcher
        from .pruners import FarBehindPruner
        from .search import Search
        from .tracking import check_tracking, open_tracker

        config = self.config
        check_tracking(config)  # an extra tracking needs is missing: ConfigError before the study is made
        self.run_dir.mkdir(parents=True, exist_ok=True)

        def stale(study: Any, trial: Any) -> None:
            studies.retry_stale_trial(self.notes, study, trial)

        storage = studies.open_storage(self.storage_url, heartbeat_grace_s=config.heartbeat_grace_s,
                                       stale_callback=stale)
        self.study, created = studies.create_study(config, storage, self.notes)
        write_config(self.run_dir, config)
        pruner = self.study.pruner if isinstance(self.study.pruner, FarBehindPruner) else None
        models = ModelFiles(self.run_dir, pareto=config.mode == "pareto",
                            keep=kept.CANDIDATES if keeps_models(config) else 0)
        self.search = Search(config, self.study, storage, pruner=pruner, models=models, notes=self.notes,
                             started=self.started)
        self.search.data_uri = self.data_uri
        self.notes.extend(n for n in own_run.data_notes(config) if n not in self.notes)
        self.search.recover(owns_storage=config.storage is None, created=created)
        self._files = RunFilesWriter(self.run_dir, self.study, config.mode)
        self._tracker = open_tracker(config, self.run_dir, self.study, self.search)  # MLflow / TensorBoard

        def after_trial() -> None:
            self._files.request()
            self._tracker.request()

        with self._stop_lock:
            self.dispatcher = Dispatcher(self.search, self.backend, progress=self.progress, after_trial=after_trial)
            if self._stop_requested is not None:
                self.dispatcher.request_stop(self._stop_requested, hard=True)

    def _run(self) -> OptimizationResult:
        from .study import expected_trials

        self._open()
        search = self.search
        if self.progress is not None:
            self.progress.total = expected_trials(self.config)
            self.progress.already_done = search.counted
            self.progress.epoch_budget = self.config.epoch_budget
            self.progress.epochs_before = search.epochs_spent
            self.progress.best = search.best_value
            self.progress.deadline = search.deadline
            self.progress.end_by = search.budget.run_end
        try:
            self.dispatcher.run()
        finally:
            self._files.close()
        for note in self.backend.notes:  # e.g. why trials ran locally instead of on RunPod
            if note not in self.notes:
                self.notes.append(note)
        result = build_result(self.run_dir, self.study, self.config.mode, interrupted=search.interrupted,
                              stop_reason=search.stop_reason if search.stop_reason != "interrupted" else None,
                              aborted=search.aborted, notes=self.notes)
        search.models.finalize(result.best_trial_number)
        result.notes.extend(self._tracker.close(result.best_trial_number))  # tracking failures, as notes
        return result

    def write_outputs(self, result: OptimizationResult, *, announce: bool = False) -> Path | None:
        """Plots and report.html per plot_generation (never fails the run)."""
        if self.config.plot_generation == "none":
            return None
        try:
            from .report import generate_outputs

            report = generate_outputs(self.run_dir, plot_generation=self.config.plot_generation, study=self.study,
                                      notes=result.notes)
            if report is not None and announce:
                print(f"report: {report}", file=sys.stderr, flush=True)
            return report
        except KeyboardInterrupt:
            log.warning("plots and report skipped: interrupted")
        except Exception:  # noqa: BLE001 - plots never fail the run
            log.exception("plots and report could not be written")
        return None

    def close(self) -> None:
        """Release the folder's lock; a folder this session made for a run that never began (the storage could not
        be opened, Ctrl-C while the workers started: no config.json yet) is removed, nothing half-written left."""
        self.lock.release()
        if self.made_dir and not (self.run_dir / CONFIG_FILE).exists():
            own_run.remove_new_run_dir(self.run_dir, existed=False)


def optimize(config: OptimizationConfig | None = None, *, progress: Any = None, backend: Backend | None = None,
             env_file: str | None = None, **options: Any) -> OptimizationResult:
    """Run an optimization. Options are the CLI's keys (``hpo optimize --help``), validated the same way.

    ``progress``: a callable receiving ``(event, snapshot)`` dicts as trials start, report epochs and end (a
    one-argument callable receives the snapshot only). The console shows a live display on a terminal, one line per
    event otherwise, nothing with ``quiet=True``. At the end, plots and report.html per ``plot_generation``.
    Returns an :class:`~hpo.results.OptimizationResult`; Ctrl-C stops gracefully (``result.interrupted``).
    """
    from .config import config_from_options
    from .progress import as_listener, make_display
    from .redact import install_log_masking

    install_log_masking()
    data = options.pop("data", None)  # own arrays: dataset "custom" unless a dataset is named
    if config is None:
        if data is not None:
            options.setdefault("dataset", "custom")
        config = config_from_options(options, env_file=env_file)
    elif options:
        raise ConfigError("give either a config or keyword options, not both")
    session = Session.create(config, backend=backend, data=data)
    try:
        display = make_display(quiet=config.quiet)
        listeners = [display] if display is not None else []
        if progress is not None:
            listeners.append(as_listener(progress))
        session.progress = ProgressTracker(config.trial_limit, concurrency=config.concurrent_workers,
                                           listeners=listeners)
        try:
            result = session.run()
        finally:
            if display is not None:
                display.close()
        session.write_outputs(result, announce=not config.quiet)
        return result
    finally:
        session.close()
