"""Runs behind the REST API: a bounded queue of optimizations executed in background threads.

The manager composes the orchestrator's public pieces exactly as :func:`hpo.orchestrator.optimize` does
(``prepare_run_dir`` -> ``make_backend`` -> :class:`~hpo.orchestrator.Orchestrator` with a
:class:`~hpo.progress.ProgressTracker`), so a run started over HTTP lands in the same run folder, with the same
files, as ``hpo optimize``. At most ``max_active_runs`` run at once; more wait in a FIFO queue.

Every run folder it touches gets a small ``run_state.json`` (state, timestamps, error) written at submit, start and
end. After a restart the folders are the only truth: a final state there is shown as is; a run whose state file
still says queued/running (the server died under it) is shown as ``interrupted`` — POST /runs with the same
``run_name`` resumes its study. Folders made by ``hpo optimize`` (no state file) are classified from their trials.

Nothing here imports TensorFlow or Optuna at import time; Optuna is loaded when a study is read or a run starts.
"""

from __future__ import annotations

import collections
import csv
import datetime as _dt
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import trial_limit
from .exceptions import BackendUnavailable, ConfigError, DatasetError
from .redact import mask_url
from .results import BEST_FILE, CONFIG_FILE, TRIALS_FILE

__all__ = ["RunManager", "Run", "RunNotFound", "RunConflict", "StudyUnavailable", "OptionsInvalid", "RUN_STATE_FILE",
           "STATES", "FINAL_STATES", "jsonable", "validate_options"]

log = logging.getLogger(__name__)

RUN_STATE_FILE = "run_state.json"
STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "interrupted"})
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the same rule as OptimizationConfig.run_name

BackendFactory = Callable[[Any, Path], Any]  # (config, run_dir) -> Backend


class RunNotFound(KeyError):
    """No run with that id in the output folder."""


class RunConflict(Exception):
    """The request does not fit the run's state (cancel a finished run, start a run that is already active)."""


class StudyUnavailable(Exception):
    """The run's study storage cannot be read right now (locked, unreachable)."""


class OptionsInvalid(Exception):
    """POST /runs options that do not validate; ``errors`` lists each bad field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (_dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)).total_seconds()  # type: ignore
    except (TypeError, ValueError):
        return None


def jsonable(value: Any) -> Any:
    """Plain JSON data: non-finite floats become None (JSON has no NaN), paths and other objects become text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _to_int(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


# -- reading a run folder ---------------------------------------------------------------------------------------------

def _trial_summary(run_dir: Path) -> dict[str, int]:
    """Counts by state from trials.csv (written after every trial). ``counted`` = completed + pruned + failed."""
    counts = collections.Counter()
    try:
        with open(run_dir / TRIALS_FILE, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                counts[row.get("state") or "?"] += 1
    except (OSError, csv.Error, UnicodeDecodeError):
        pass
    completed, pruned, failed = counts["complete"], counts["pruned"], counts["fail"]
    return {"completed": completed, "pruned": pruned, "failed": failed, "interrupted": counts["interrupted"],
            "running": counts["running"], "counted": completed + pruned + failed}


def _best_summary(best: dict[str, Any] | None) -> dict[str, Any] | None:
    if not best:
        return None
    return {"trial": best.get("number"), "value": best.get("value"), "val_accuracy": best.get("val_accuracy"),
            "test_accuracy": best.get("test_accuracy"), "overall_health": best.get("overall_health"),
            "params": best.get("params")}


def _errors_field(message: str, candidates: set[str]) -> str | None:
    """The option a ConfigError message is about: the quoted key of "unknown option 'x'", else the candidate
    named earliest in the message (messages start with the field: ``trials=0 is out of range``)."""
    quoted = re.match(r"unknown option '([^']*)'", message)
    if quoted:
        return quoted.group(1)
    best: tuple[int, int, str] | None = None
    for name in candidates:
        m = re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message)
        if m and (best is None or (m.start(), -len(name)) < best[:2]):
            best = (m.start(), -len(name), name)
    return best[2] if best else None


def validate_options(options: dict[str, Any]) -> Any:
    """``config_from_options`` (the CLI's validation), collecting an error for each bad field: the field a
    ConfigError names is set aside and validation runs again, until the rest validates or nothing is left. When the
    dataset itself is bad, the other options are still checked against a stand-in dataset (errors that depend on
    the dataset -- search-space pins, dataset options -- are then not reported)."""
    from . import search_space
    from .config import OptimizationConfig, config_from_options

    if "pins" in options and options["pins"] is not None and not isinstance(options["pins"], dict):
        raise OptionsInvalid([{"loc": ["body", "pins"], "type": "config_error",
                               "msg": "pins must be an object of search-space parameters, e.g. "
                                      '{"activation": "relu"}'}])
    fields = {f for f in OptimizationConfig.__dataclass_fields__ if f != "pins"}
    pin_names = set(search_space.all_param_names())
    dataset_dependent = pin_names | {"vocab_size", "sequence_length", "image_size"}
    opts = dict(options)
    pins: dict[str, Any] = dict(opts.get("pins") or {})
    if "pins" in opts:
        opts["pins"] = pins
    errors: list[dict[str, Any]] = []
    stand_in = False
    for _ in range(len(opts) + len(pins) + 3):
        try:
            config = config_from_options(opts)
        except ConfigError as exc:
            message = str(exc)
            name = _errors_field(message, fields | pin_names | set(opts) | set(pins))
            report = not (stand_in and name in dataset_dependent)
            if name == "dataset" and not stand_in:
                if "dataset" in opts or not errors:
                    errors.append({"loc": ["body", "dataset"], "msg": message, "type": "config_error"})
                opts["dataset"], stand_in = "synthetic_images", True
                continue
            if name in opts and name not in ("pins", "dataset"):
                if report:
                    errors.append({"loc": ["body", name], "msg": message, "type": "config_error"})
                del opts[name]
                continue
            if name in pins:
                if report:
                    errors.append({"loc": ["body", "pins", name], "msg": message, "type": "config_error"})
                del pins[name]
                continue
            if report:
                errors.append({"loc": ["body"] + ([name] if name else []), "msg": message, "type": "config_error"})
            break
        except (TypeError, ValueError, AttributeError) as exc:  # a shape config_from_options does not expect
            errors.append({"loc": ["body"], "msg": f"malformed options: {exc}", "type": "config_error"})
            break
        else:
            if not errors:
                return config
            break
    raise OptionsInvalid(errors or [{"loc": ["body"], "msg": "invalid options", "type": "config_error"}])


# -- runs -------------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """A run submitted to this server process."""

    id: str
    run_dir: Path
    config: Any  # OptimizationConfig
    resuming: bool
    state: str = "queued"
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    stop_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    tracker: Any = None
    orchestrator: Any = None
    thread: threading.Thread | None = None
    version: int = 0  # bumped on every progress event and state change (the events stream watches it)

    def state_doc(self) -> dict[str, Any]:
        options = self.config.to_dict()
        options["storage"] = mask_url(options.get("storage"))
        from . import __version__

        return {"id": self.id, "state": self.state, "created_at": self.created_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "error": self.error, "stop_reason": self.stop_reason,
                "resuming": self.resuming, "cancel_requested": self.cancel_requested, "notes": self.notes,
                "hpo_version": __version__, "options": options}


class RunManager:
    """Submits, schedules, cancels and describes runs in ``output_dir``.

    ``backend_factory(config, run_dir) -> Backend`` replaces :func:`hpo.orchestrator.make_backend` (tests use an
    instant fake; nothing is downloaded then).
    """

    def __init__(self, output_dir: str | os.PathLike[str] = "optimization_results", *, max_active_runs: int = 1,
                 backend_factory: BackendFactory | None = None, join_timeout_s: float = 60.0) -> None:
        if max_active_runs < 1:
            raise ConfigError(f"max_active_runs={max_active_runs} is out of range; allowed: >= 1")
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
        """Validate ``options`` like the CLI, pick (or resume) the run folder, and queue the run.

        Raises OptionsInvalid (each bad field), RunConflict (that run is already queued or running here)."""
        from .orchestrator import prepare_run_dir

        if not isinstance(options, dict):
            raise OptionsInvalid([{"loc": ["body"], "msg": "the body must be a JSON object of options, e.g. "
                                   '{"dataset": "synthetic_images", "trials": 2}', "type": "config_error"}])
        options = dict(options)
        if "output_dir" in options:
            given = options.pop("output_dir")
            if not isinstance(given, str) or Path(given).resolve() != self.output_dir.resolve():
                raise OptionsInvalid([{"loc": ["body", "output_dir"], "type": "config_error",
                                       "msg": f"output_dir={given!r} is not allowed here; runs of this server land "
                                              f"in {str(self.output_dir)!r} (hpo serve output_dir=...)"}])
        options["output_dir"] = str(self.output_dir)
        storage = options.get("storage")
        if isinstance(storage, str) and storage.strip().lower().startswith("sqlite"):
            # a SQLite URL is a file path on this server: over HTTP that would let a caller create files anywhere
            raise OptionsInvalid([{"loc": ["body", "storage"], "type": "config_error",
                                   "msg": "storage: a sqlite URL is not allowed over the API (it names a file on the "
                                          "server); leave it out for the run folder's study.db, or give a database "
                                          "server URL (e.g. postgresql://...)"}])
        config = validate_options(options)
        with self._lock:
            if self.closing:
                raise RunConflict("the server is shutting down")
            self._check_not_active(config.run_name)
            run_dir, resuming, config = self._prepare(config, prepare_run_dir)
            self._check_not_active(config.run_name)
            run_dir.mkdir(parents=True, exist_ok=True)
            run = Run(id=config.run_name, run_dir=run_dir, config=config, resuming=resuming)
            self._runs[run.id] = run
            self._queue.append(run)
            self._save(run)
            self._pump()
            return run

    def _check_not_active(self, name: str | None) -> None:
        run = self._runs.get(name) if name else None
        if run is not None and run.state not in FINAL_STATES:
            raise RunConflict(f"run {name!r} is already {run.state}; cancel it first or pick another run_name")

    def _prepare(self, config: Any, prepare_run_dir: Callable[..., Any]) -> tuple[Path, bool, Any]:
        # A folder this server made for a run that never started (queued when the server stopped, cancelled while
        # queued, failed before its study existed) holds no config.json: start it afresh under the same name.
        if config.run_name:
            folder = self.output_dir / config.run_name
            if (folder / RUN_STATE_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
                if config.resume:
                    raise OptionsInvalid([{"loc": ["body", "resume"], "type": "config_error",
                                           "msg": f"resume=true but run {config.run_name!r} never started; nothing "
                                                  "to resume (leave resume out to start it)"}])
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
            run.state, run.started_at = "running", _now()
            self._save(run)
            run.thread = threading.Thread(target=self._execute, args=(run,), name=f"hpo-run-{run.id}", daemon=True)
            run.thread.start()

    def _save(self, run: Run) -> None:
        run.version += 1
        try:
            _write_json(run.run_dir / RUN_STATE_FILE, run.state_doc())
        except OSError as exc:  # the folder was removed under us: the run goes on, restarts will not know it
            log.warning("could not write %s: %s", run.run_dir / RUN_STATE_FILE, exc)

    # -- execution --------------------------------------------------------------------------------------------------
    def _execute(self, run: Run) -> None:
        from . import datasets
        from .orchestrator import Orchestrator, make_backend
        from .progress import ProgressTracker

        config = run.config
        state, error, stop_reason, notes = "failed", None, None, []
        try:
            if self.backend_factory is None and (not config.use_runpod_service or config.runpod_fallback_local):
                datasets.ensure_available(config.dataset)  # may download; DatasetError says where to put files

            def bump(event: dict[str, Any], snapshot: dict[str, Any]) -> None:
                run.version += 1

            tracker = ProgressTracker(config.trial_limit, concurrency=config.concurrent_workers, listeners=[bump])
            backend = (self.backend_factory or make_backend)(config, run.run_dir)
            orchestrator = Orchestrator(config, backend, run.run_dir, progress=tracker)
            with self._lock:
                run.tracker, run.orchestrator = tracker, orchestrator
                if run.cancel_requested or self.closing:
                    orchestrator.request_stop("interrupted", hard=True)
            try:
                backend.start()
                result = orchestrator.run()
            finally:
                backend.close()
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
                self._outputs(run, orchestrator, result)
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
                run.state, run.finished_at = state, _now()
                run.error, run.stop_reason, run.notes = error, stop_reason, notes
                self._save(run)
                self._pump()

    @staticmethod
    def _outputs(run: Run, orchestrator: Any, result: Any) -> None:
        """Plots and report.html, like ``hpo optimize`` (never fails the run)."""
        try:
            from .report import generate_outputs

            generate_outputs(run.run_dir, plot_generation=run.config.plot_generation, study=orchestrator.study,
                             notes=result.notes)
        except Exception:  # noqa: BLE001
            log.exception("run %s: plots and report could not be written", run.id)

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
                run.state, run.finished_at = "cancelled", _now()
            elif run.orchestrator is not None:
                run.orchestrator.request_stop("interrupted", hard=True)
            self._save(run)
        return self.status(run_id)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop running runs like Ctrl-C (they end ``interrupted``, resumable), leave queued ones queued (a restart
        shows them interrupted), and wait for the run threads."""
        import time

        with self._lock:
            self.closing = True
            active = [r for r in self._runs.values() if r.state == "running"]
            for run in active:
                if run.orchestrator is not None:
                    run.orchestrator.request_stop("interrupted", hard=True)
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
        if folder.is_dir() and ((folder / RUN_STATE_FILE).is_file() or (folder / CONFIG_FILE).is_file()):
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
        return self._describe(folder, run, position)

    def list(self) -> list[dict[str, Any]]:
        """Every run of the output folder (this server's and earlier ones'), newest first."""
        ids: set[str] = set()
        if self.output_dir.is_dir():
            for child in self.output_dir.iterdir():
                if _RUN_ID.match(child.name) and child.is_dir() and (
                        (child / RUN_STATE_FILE).is_file() or (child / CONFIG_FILE).is_file()):
                    ids.add(child.name)
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

    def _describe(self, folder: Path, run: Run | None, position: int | None) -> dict[str, Any]:
        doc = _read_json(folder / RUN_STATE_FILE) or {}
        config_doc = _read_json(folder / CONFIG_FILE)
        if run is not None:
            options = run.config.to_dict()
            options["storage"] = mask_url(options.get("storage"))
        else:
            options = (config_doc or {}).get("config") or doc.get("options") or {}
        summary = _trial_summary(folder)
        total = trial_limit(_to_int(options.get("trials")), _to_int(options.get("epoch_budget")))
        best = _best_summary(_read_json(folder / BEST_FILE))
        if run is not None:
            state, created, started, finished = run.state, run.created_at, run.started_at, run.finished_at
            error, stop_reason, notes, cancel_requested = run.error, run.stop_reason, run.notes, run.cancel_requested
        else:
            created, started, finished = doc.get("created_at"), doc.get("started_at"), doc.get("finished_at")
            error, stop_reason, notes = doc.get("error"), doc.get("stop_reason"), doc.get("notes") or []
            cancel_requested = bool(doc.get("cancel_requested"))
            state = doc.get("state")
            if state in ("queued", "running"):
                state = "interrupted"  # it was in progress when its server stopped
            elif state not in FINAL_STATES:  # a folder from `hpo optimize`: judge by its trials
                done = total is not None and summary["counted"] >= total and not summary["running"]
                state = ("completed" if summary["completed"] else "failed") if done else "interrupted"
            if created is None:
                try:
                    created = _dt.datetime.fromtimestamp((folder / CONFIG_FILE).stat().st_mtime,
                                                         _dt.timezone.utc).isoformat(timespec="milliseconds")
                except OSError:
                    created = None
        if state == "running" and run is not None and run.tracker is not None:
            progress = run.tracker.snapshot()
        else:
            elapsed = _seconds_between(started, finished) if finished else None
            progress = {"total": total, "done": summary["counted"], "running": [],
                        "queued": max(0, (total or 0) - summary["counted"]) if state in ("queued", "running") else 0,
                        "completed": summary["completed"], "pruned": summary["pruned"], "failed": summary["failed"],
                        "best": best["value"] if best else None, "best_trial": best["trial"] if best else None,
                        "elapsed_s": elapsed, "eta_s": 0.0 if state in FINAL_STATES else None,
                        "concurrency": options.get("concurrent_workers")}
        if best is None and progress.get("best") is not None:
            best = {"trial": progress.get("best_trial"), "value": progress.get("best"), "val_accuracy": None,
                    "test_accuracy": None, "overall_health": None, "params": None}
        has_study = config_doc is not None
        resumable = state in ("interrupted", "cancelled", "failed") and (
            not has_study or total is None or summary["counted"] < total)
        return jsonable({
            "id": folder.name, "state": state, "location": f"/runs/{folder.name}",
            "dataset": options.get("dataset"), "mode": options.get("mode"), "trials": total,
            "created_at": created, "started_at": started, "finished_at": finished,
            "queue_position": position, "cancel_requested": cancel_requested, "resumable": resumable,
            "progress": progress, "best": best, "eta_s": progress.get("eta_s"),
            "elapsed_s": progress.get("elapsed_s"), "error": error, "stop_reason": stop_reason, "notes": notes,
            "options": options,
        })

    # -- trials, best, files ----------------------------------------------------------------------------------------
    def _storage(self, url: str) -> Any:
        import optuna

        with self._storage_lock:
            storage = self._storages.get(url)
            if storage is None:
                kwargs: dict[str, Any] = {}
                if url.startswith("sqlite"):
                    kwargs["engine_kwargs"] = {"connect_args": {"timeout": 30}}
                storage = optuna.storages.RDBStorage(url, **kwargs)
                self._storages[url] = storage
            return storage

    def trials(self, run_id: str) -> list[dict[str, Any]]:
        """Every trial of the run's study (``hpo.results.trial_records``); [] before the study exists."""
        import optuna

        from .results import trial_records

        folder = self.run_dir(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            orchestrator = run.orchestrator if run is not None else None
        doc = _read_json(folder / CONFIG_FILE)
        if doc is None:
            return []
        url = orchestrator.storage_url if orchestrator is not None else doc.get("storage_url")
        if not isinstance(url, str) or "***" in url:
            raise RunConflict(f"the study of run {run_id!r} lives in {url}; its password is not stored in the run "
                              "folder, so this server cannot read it")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=doc.get("study_name") or run_id, storage=self._storage(url))
            return jsonable(trial_records(study))
        except KeyError:  # the study is not created yet
            return []
        except Exception as exc:  # noqa: BLE001 - storage errors (locked, unreachable) are not the API's bug
            log.warning("run %s: study %s unreadable: %s", run_id, mask_url(url), exc)
            raise StudyUnavailable(f"the study of run {run_id!r} cannot be read right now: {type(exc).__name__}; "
                                   "retry") from None

    def best(self, run_id: str) -> dict[str, Any] | None:
        return jsonable(_read_json(self.run_dir(run_id) / BEST_FILE))

    def files(self, run_id: str) -> list[dict[str, Any]]:
        folder = self.run_dir(run_id)
        root = folder.resolve()
        found = []
        for path in sorted(folder.rglob("*")):
            try:
                if path.name.endswith(".tmp") or not path.is_file() or not path.resolve().is_relative_to(root):
                    continue
                found.append({"name": path.relative_to(folder).as_posix(), "size": path.stat().st_size})
            except OSError:
                continue
        return found

    def file_path(self, run_id: str, name: str) -> Path:
        """The file ``name`` inside the run folder; RunNotFound for anything else (absolute paths, ``..``, links
        out of the folder, folders, missing files)."""
        folder = self.run_dir(run_id)
        if (not name or "\x00" in name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
                or ".." in re.split(r"[\\/]", name)):
            raise RunNotFound(name)  # absolute, drive-relative, or climbing: refused before touching the disk
        try:
            root = folder.resolve()
            path = (root / name).resolve()
            if not path.is_relative_to(root) or path == root or not path.is_file():
                raise RunNotFound(name)
        except (OSError, ValueError):
            raise RunNotFound(name) from None
        return path
