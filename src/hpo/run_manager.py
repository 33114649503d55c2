"""Runs behind the REST API: a bounded queue of optimizations executed in background threads.

The manager runs each run as a :class:`~hpo.session.Session`, exactly as :func:`hpo.optimize` does
(``prepare_run_dir`` -> lock -> ``Session`` with a
:class:`~hpo.progress.ProgressTracker`), so a run started over HTTP lands in the same run folder, with the same
files, as ``hpo optimize``. At most ``max_active_runs`` run at once; more wait in a FIFO queue. Bodies are checked by
:mod:`hpo.run_options` (the operator's endpoint and output folder), runs described by :mod:`hpo.run_views`.

Each run holds its folder's lock (:class:`~hpo.runlock.RunLock`) from submit until it ends, taken before anything is
written there: a folder another process holds is refused (RunConflict naming the holder, HTTP 409), and an
``hpo optimize`` on a folder a run of this server holds is refused too. Every run folder it touches gets a small
``run_state.json`` (state, timestamps, error; secrets masked) written at submit, start and end. After a restart the
folders are the only truth: a final state there is shown as is; a run whose state file still says queued/running (the
server died under it) is shown as ``interrupted`` — POST /runs with the same ``run_name`` resumes its study. Folders
made by ``hpo optimize`` (no state file) are classified from their trials.

Nothing here imports TensorFlow or Optuna at import time; Optuna is loaded when a study is read or a run starts.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import BackendUnavailable, ConfigError, DatasetError
from .redact import mask_obj, mask_text
from .results import BEST_FILE, CONFIG_FILE
from .run_options import EndpointPolicy, OptionsInvalid, server_owned_options, validate_options
from .run_views import (FINAL_STATES, RUN_STATE_FILE, describe, file_in, jsonable, list_files, lock_folder, now,
                        read_json, remove_folders, write_json)

__all__ = ["RunManager", "Run", "RunNotFound", "RunConflict", "StudyUnavailable", "OptionsInvalid", "RUN_STATE_FILE",
           "STATES", "FINAL_STATES", "jsonable", "validate_options"]

log = logging.getLogger(__name__)

STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the same rule as OptimizationConfig.run_name

BackendFactory = Callable[[Any, Path], Any]  # (config, run_dir) -> Backend


def _is_run_folder(folder: Path) -> bool:
    return folder.is_dir() and ((folder / RUN_STATE_FILE).is_file() or (folder / CONFIG_FILE).is_file())


class RunNotFound(KeyError):
    """No run with that id in the output folder."""


class RunConflict(Exception):
    """The request does not fit the run's state (cancel a finished run, start a run that is already active)."""


class StudyUnavailable(Exception):
    """The run's study storage cannot be read right now (locked, unreachable)."""


# -- runs -------------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """A run submitted to this server process."""

    id: str
    run_dir: Path
    config: Any  # OptimizationConfig
    resuming: bool
    state: str = "queued"
    created_at: str = field(default_factory=now)
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    stop_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    tracker: Any = None
    session: Any = None
    thread: threading.Thread | None = None
    lock: Any = None  # the run folder's RunLock, held from submit until the run ends
    version: int = 0  # bumped on every progress event and state change (the events stream watches it)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def state_doc(self) -> dict[str, Any]:
        """run_state.json (masked when written)."""
        options = self.config.to_dict()
        from .version import __version__

        return {"id": self.id, "state": self.state, "created_at": self.created_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "error": self.error, "stop_reason": self.stop_reason,
                "resuming": self.resuming, "cancel_requested": self.cancel_requested, "notes": self.notes,
                "hpo_version": __version__, "options": options}


class RunManager:
    """Submits, schedules, cancels and describes runs in ``output_dir``.

    ``backend_factory(config, run_dir) -> Backend`` replaces :func:`hpo.session.make_backend` (tests use an
    instant fake; nothing is downloaded then). ``runpod_endpoints``: the operator's allow-list of RunPod endpoint
    URLs / ids, besides RUNPOD_ENDPOINT_URL / RUNPOD_ENDPOINT_ID of the server's environment or .env
    (:class:`~hpo.run_options.EndpointPolicy`). Each run holds its folder's :class:`~hpo.runlock.RunLock` from
    submit to its end, so no other process (``hpo optimize``, another server) writes to it meanwhile.
    """

    def __init__(self, output_dir: str | os.PathLike[str] = "optimization_results", *, max_active_runs: int = 1,
                 backend_factory: BackendFactory | None = None, join_timeout_s: float = 60.0,
                 runpod_endpoints: Iterable[str] = ()) -> None:
        if max_active_runs < 1:
            raise ConfigError(f"max_active_runs={max_active_runs} is out of range; allowed: >= 1")
        self.endpoints = EndpointPolicy(runpod_endpoints)
        self.output_dir = Path(output_dir)
        self.max_active_runs = max_active_runs
        self.backend_factory = backend_factory
        self.join_timeout_s = join_timeout_s
        self._lock = threading.RLock()
        self._runs: dict[str, Run] = {}
        self._queue: collections.deque[Run] = collections.deque()
        self._storages: dict[str, Any] = {}
        self._storage_lock = threading.Lock()
        self.closing = False

    # -- submit / schedule ----------------------------------------------------------------------------------------
    def submit(self, options: dict[str, Any]) -> Run:
        """Validate ``options`` like the CLI, lock and pick (or resume) the run folder, and queue the run.

        Raises OptionsInvalid (each bad field), RunConflict (that run is already queued or running here, or another
        process holds its folder: the message names it). Nothing is written for a refused body."""
        from .rundir import prepare_run_dir

        if not isinstance(options, dict):
            raise OptionsInvalid([{"loc": ["body"], "msg": "the body must be a JSON object of options, e.g. "
                                   '{"dataset": "synthetic_images", "trials": 2}', "type": "config_error"}])
        options = dict(options)
        config = validate_options(options, server_owned_options(options, self.output_dir, self.endpoints))
        if config.storage and not config.storage.startswith("sqlite"):
            self._check_storage(config.storage)  # before the lock: a server may take its connect_timeout to answer
        with self._lock:
            if self.closing:
                raise RunConflict("the server is shutting down")
            self._check_not_active(config.run_name)
            created: list[Path] = []
            lock = None
            try:
                if config.run_name:  # locked before its folder is read, so no other process changes it meanwhile
                    lock = self._take_lock(self.output_dir / config.run_name, created)
                run_dir, resuming, config = self._prepare(config, prepare_run_dir)
                self._check_not_active(config.run_name)
                lock = lock or self._take_lock(run_dir, created)
            except BaseException:
                if lock is not None:
                    lock.release()
                remove_folders(created)
                raise
            run = Run(id=config.run_name, run_dir=run_dir, config=config, resuming=resuming, lock=lock)
            self._runs[run.id] = run
            self._queue.append(run)
            self._save(run)
            self._pump()
            return run

    def _check_storage(self, url: str) -> None:
        """OptionsInvalid (storage) when the shared study's database cannot be opened, as the CLI's exit 2: a run
        that could only fail is not queued (the answer was 201, then a failed run). The storage opened is kept with
        the ones the run's trials are read through (one connection pool per URL), not opened again for them."""
        from .study import open_storage

        with self._storage_lock:
            if url in self._storages:
                return
        try:
            storage = open_storage(url)
        except ConfigError as exc:  # masked: the URL and the driver's first line
            raise OptionsInvalid([{"loc": ["body", "storage"], "msg": str(exc), "type": "config_error"}]) from None
        with self._storage_lock:
            self._storages.setdefault(url, storage)

    def _take_lock(self, folder: Path, created: list[Path]) -> Any:
        """The folder's RunLock (creating the folder); RunConflict naming the holder when another process has it."""
        from .runlock import RunLocked

        try:
            return lock_folder(self.output_dir, folder, created)
        except RunLocked as exc:
            raise RunConflict(str(exc)) from None

    def _check_not_active(self, name: str | None) -> None:
        run = self._runs.get(name) if name else None
        if run is not None and run.state not in FINAL_STATES:
            raise RunConflict(f"run {name!r} is already {run.state}; cancel it first or pick another run_name")

    def _prepare(self, config: Any, prepare_run_dir: Callable[..., Any]) -> tuple[Path, bool, Any]:
        from .runlock import HOLDER_FILE, LOCK_FILE

        # A folder this server made for a run that never started (queued when the server stopped, cancelled while
        # queued, failed before its study existed) holds no config.json: start it afresh under the same name. So
        # does a folder that holds nothing but our lock.
        if config.run_name:
            folder = self.output_dir / config.run_name
            only_lock = folder.is_dir() and {p.name for p in folder.iterdir()} <= {LOCK_FILE, HOLDER_FILE}
            if only_lock or ((folder / RUN_STATE_FILE).is_file() and not (folder / CONFIG_FILE).is_file()):
                if config.resume:
                    what = "there is no such run" if only_lock else "it never started"
                    raise OptionsInvalid([{"loc": ["body", "resume"], "type": "config_error",
                                           "msg": f"resume=true but run {config.run_name!r}: {what}; nothing to "
                                                  "resume (leave resume out to start it)"}])
                return folder, False, config
        try:
            return prepare_run_dir(config)
        except ConfigError as exc:
            message = str(exc)
            name = "resume" if message.startswith("resume=true") else "run_name"
            raise OptionsInvalid([{"loc": ["body", name], "msg": message, "type": "config_error"}]) from None

    def _active_count(self) -> int:
        return sum(1 for r in self._runs.values() if r.state == "running")

    def _pump(self) -> None:
        """Start queued runs while there is room (call with the lock held)."""
        while not self.closing and self._queue and self._active_count() < self.max_active_runs:
            run = self._queue.popleft()
            if run.state != "queued":
                continue
            run.state, run.started_at = "running", now()
            self._save(run)
            run.thread = threading.Thread(target=self._execute, args=(run,), name=f"hpo-run-{run.id}", daemon=True)
            run.thread.start()

    def _save(self, run: Run) -> None:
        run.version += 1
        try:
            write_json(run.run_dir / RUN_STATE_FILE, run.state_doc())
        except OSError as exc:  # the folder was removed under us: the run goes on, restarts will not know it
            log.warning("could not write %s: %s", run.run_dir / RUN_STATE_FILE, exc)

    # -- execution --------------------------------------------------------------------------------------------------
    def _execute(self, run: Run) -> None:
        from .progress import ProgressTracker
        from .session import Session

        config = run.config
        state, error, stop_reason, notes = "failed", None, None, []
        try:
            def bump(event: dict[str, Any], snapshot: dict[str, Any]) -> None:
                run.version += 1

            tracker = ProgressTracker(config.trial_limit, concurrency=config.concurrent_workers, listeners=[bump])
            backend = self.backend_factory(config, run.run_dir) if self.backend_factory is not None else None
            # the folder is locked since submit (run.lock); datasets are checked (may download: DatasetError)
            session = Session.create(config, backend=backend, progress=tracker, lock=run.lock, run_dir=run.run_dir,
                                     resuming=run.resuming)
            with self._lock:
                run.tracker, run.session = tracker, session
                if run.cancel_requested or self.closing:
                    session.request_stop("interrupted", hard=True)
            result = session.run()
            notes, stop_reason = list(result.notes), result.stop_reason
            if run.cancel_requested:
                state = "cancelled"
            elif result.interrupted or self.closing:
                state = "interrupted"
            elif result.completed == 0:
                state, error = "failed", stop_reason or "no trial completed"
            elif stop_reason and "failed in a row" in stop_reason:
                state, error = "failed", stop_reason
            else:
                state = "completed"
            if config.plot_generation != "none" and result.completed > 0 and not self.closing:
                self._outputs(run, session, result)
        except (ConfigError, DatasetError) as exc:
            error = str(exc)
        except BackendUnavailable as exc:
            error = f"the execution backend is unavailable: {exc}"
        except Exception as exc:  # noqa: BLE001 - a run's failure is its state, never the server's
            log.exception("run %s failed", run.id)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                if state == "failed" and run.cancel_requested:
                    state = "cancelled"
                run.state, run.finished_at = state, now()
                run.error, run.stop_reason, run.notes = error, stop_reason, notes
                self._save(run)
                run.release()
                self._pump()

    @staticmethod
    def _outputs(run: Run, session: Any, result: Any) -> None:
        """Plots and report.html, like ``hpo optimize`` (never fails the run)."""
        session.write_outputs(result)

    # -- cancel / shutdown ------------------------------------------------------------------------------------------
    def cancel(self, run_id: str) -> dict[str, Any]:
        """Queued: cancelled at once. Running: stopped like Ctrl-C (running trials are cancelled and retried when
        the run resumes); the state becomes ``cancelled`` when the run has wound down."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.state in FINAL_STATES:
                status = self.status(run_id)  # RunNotFound if there is no such run at all
                raise RunConflict(f"run {run_id!r} is {status['state']}; only queued or running runs can be "
                                  "cancelled")
            run.cancel_requested = True
            if run.state == "queued":
                try:
                    self._queue.remove(run)
                except ValueError:
                    pass
                run.state, run.finished_at = "cancelled", now()
            elif run.session is not None:
                run.session.request_stop("interrupted", hard=True)
            self._save(run)
            if run.state in FINAL_STATES:
                run.release()
        return self.status(run_id)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop running runs like Ctrl-C (they end ``interrupted``, resumable), leave queued ones queued (a restart
        shows them interrupted), and wait for the run threads."""
        import time

        with self._lock:
            self.closing = True
            for run in self._queue:  # never started: their folders are free (a restart shows them interrupted)
                run.release()
            active = [r for r in self._runs.values() if r.state == "running"]
            for run in active:
                if run.session is not None:
                    run.session.request_stop("interrupted", hard=True)
        deadline = time.monotonic() + (self.join_timeout_s if timeout_s is None else timeout_s)
        for run in active:
            if run.thread is not None:
                run.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._storage_lock:
            for storage in self._storages.values():
                engine = getattr(storage, "engine", None)
                if engine is not None:
                    engine.dispose()
            self._storages.clear()

    # -- views ------------------------------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        """The folder of run ``run_id``; RunNotFound unless it is a run folder of this output_dir."""
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise RunNotFound(run_id)
        with self._lock:
            if run_id in self._runs:
                return self._runs[run_id].run_dir
        folder = self.output_dir / run_id
        if _is_run_folder(folder):
            return folder
        raise RunNotFound(run_id)

    def version(self, run_id: str) -> int:
        run = self._runs.get(run_id)
        return run.version if run is not None else 0

    def is_live(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        return run is not None and run.state not in FINAL_STATES

    def status(self, run_id: str) -> dict[str, Any]:
        folder = self.run_dir(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            position = None
            if run is not None and run.state == "queued":
                position = next((i for i, r in enumerate(self._queue) if r is run), None)
        return describe(folder, run, position)

    def list(self) -> list[dict[str, Any]]:
        """Every run of the output folder (this server's and earlier ones'), newest first."""
        children = self.output_dir.iterdir() if self.output_dir.is_dir() else []
        ids = {c.name for c in children if _RUN_ID.match(c.name) and _is_run_folder(c)}
        with self._lock:
            ids.update(self._runs)
        runs = []
        for run_id in ids:
            try:
                runs.append(self.status(run_id))
            except RunNotFound:  # removed meanwhile
                continue
        runs.sort(key=lambda r: (r["created_at"] or "", r["id"]), reverse=True)
        return runs

    # -- trials, best, files ----------------------------------------------------------------------------------------
    def trials(self, run_id: str) -> list[dict[str, Any]]:
        """Every trial of the run's study (``hpo.results.trial_records``); [] before the study exists."""
        from .results import trial_records
        from .rundir import open_run_study

        folder = self.run_dir(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            session = run.session if run is not None else None
        if read_json(folder / CONFIG_FILE) is None:
            return []
        try:
            with self._storage_lock:  # storages are opened once per URL and kept (a connection pool each)
                study, _doc = open_run_study(folder, storage=session.config.storage if session else None,
                                             storage_cache=self._storages)
            return mask_obj(jsonable(trial_records(study)))
        except ConfigError as exc:
            if "no study.db" in str(exc) or "is not in" in str(exc):
                return []  # the study is not created yet
            raise RunConflict(f"run {run_id!r}: {mask_text(str(exc))}") from None
        except Exception as exc:  # noqa: BLE001 - storage errors (locked, unreachable) are not the API's bug
            log.warning("run %s: study unreadable: %s", run_id, mask_text(str(exc)))
            raise StudyUnavailable(f"the study of run {run_id!r} cannot be read right now: {type(exc).__name__}; "
                                   "retry") from None

    def best(self, run_id: str) -> dict[str, Any] | None:
        return mask_obj(jsonable(read_json(self.run_dir(run_id) / BEST_FILE)))

    def files(self, run_id: str) -> list[dict[str, Any]]:
        return list_files(self.run_dir(run_id))

    def file_path(self, run_id: str, name: str) -> Path:
        """The file ``name`` inside the run folder; RunNotFound for anything else (absolute paths, ``..``, links
        out of the folder, folders, missing files)."""
        path = file_in(self.run_dir(run_id), name)
        if path is None:
            raise RunNotFound(name)
        return path
