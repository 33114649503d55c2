"""Experiment tracking: every trial with a verdict logged to MLflow (``tracking=mlflow``) and/or TensorBoard
(``tensorboard=true``), from the numbers the run already has -- the trial's record in the study
(:func:`hpo.results.trial_records`: params, per-epoch history, validation/test metrics, health, epochs, where it
ran). Nothing here imports TensorFlow or Keras; MLflow and tensorboardX are extras, imported only when asked for.

    Session._open  -> check_tracking(config)               ConfigError (exit 2) when an extra is not installed
                   -> tracker = open_tracker(config, ...)  listeners are built in a background thread
    after a trial  -> tracker.request()                    any trial thread; it never waits for the logging
    end of the run -> tracker.close(best_trial_number)     a last sweep; the final best trial gets the model

A :class:`TrialListener` receives each trial once: complete, pruned and failed trials (interrupted ones are retried
under a new number and logged then). A listener skips trials it already holds (a resumed run logs only the rest);
in a study shared by several processes (``storage=``) each process logs its own trials. A tracking error never
fails a trial or the run: it is logged and becomes one note of the result.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from ..redact import mask_text
from ..results import MODEL_FILE, trial_records

__all__ = ["TrialListener", "Tracker", "check_tracking", "open_tracker", "mlflow_tracking_uri", "INSTALL_HINTS",
           "LOGGED_STATES", "TENSORBOARD_DIR"]

log = logging.getLogger(__name__)

INSTALL_HINTS = {"mlflow": 'pip install "hpo[mlflow]"', "tensorboard": 'pip install "hpo[tensorboard]"'}
#: trial states (as trial_records names them) that are logged
LOGGED_STATES = ("complete", "pruned", "fail")
#: per-trial TensorBoard logs: RUN_DIR/tensorboard/trial-N/
TENSORBOARD_DIR = "tensorboard"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules (None), or a module without a spec
        return False


def check_tracking(config: Any) -> None:
    """ConfigError naming the extra to install when ``tracking``/``tensorboard`` ask for a package that is missing
    (checked without importing it)."""
    if getattr(config, "tracking", "none") == "mlflow" and not _installed("mlflow"):
        raise ConfigError(f"tracking=mlflow needs MLflow, which is not installed: {INSTALL_HINTS['mlflow']} "
                          "(or tracking=none)", field="tracking")
    if getattr(config, "tensorboard", False) and not _installed("tensorboardX"):
        raise ConfigError(f"tensorboard=true needs tensorboardX, which is not installed: "
                          f"{INSTALL_HINTS['tensorboard']} (or tensorboard=false)", field="tensorboard")


def mlflow_tracking_uri(run_dir: str | os.PathLike[str]) -> str:
    """Where tracking=mlflow logs: MLFLOW_TRACKING_URI when set, else a SQLite store in the run folder
    (``sqlite:///RUN_DIR/mlflow.db``, artifacts in RUN_DIR/mlartifacts)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


class TrialListener:
    """Receives every finished trial once. ``record`` is the trial's :func:`~hpo.results.trial_records` dict plus
    ``started``/``finished`` (datetimes or None); ``model`` is a snapshot of best_model.keras when this trial's
    model was the run's best as it was logged (only for listeners with ``wants_models``), else None."""

    name = "listener"
    wants_models = False

    def trial_finished(self, record: dict[str, Any], model: Path | None) -> None:
        raise NotImplementedError

    def add_model(self, number: int, model: Path) -> None:
        """The run's final best model belongs to trial ``number`` (called at the end; skip if already logged)."""

    def close(self) -> None:
        """Flush and release (called once, at the end of the run)."""


class Tracker:
    """Feeds the listeners from the study: :meth:`request` (after each trial) wakes a background thread that logs
    the trials with a verdict not logged yet; :meth:`close` logs the rest and returns the notes of any failure.

    ``factories`` build the listeners (in the background thread: MLflow's import and store set-up take seconds);
    ``process``: log only this process's trials (a shared study); ``lock``/``best_number``: the search's lock and
    best trial, so that best_model.keras is snapshotted while no other trial can replace it."""

    def __init__(self, study: Any, run_dir: Path, factories: list[tuple[str, Callable[[], TrialListener]]], *,
                 process: str | None = None, lock: Any = None, best_number: Callable[[], int | None] | None = None):
        self.study, self.run_dir = study, Path(run_dir)
        self._factories = list(factories)
        self._listeners: list[TrialListener] | None = None
        self.process, self._lock, self._best_number = process, lock, best_number
        self._seen: set[int] = set()
        self._notes: list[str] = []
        self._failed: set[str] = set()
        self._sweep_lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._factories:
            self._thread = threading.Thread(target=self._main, name="hpo-tracking", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return bool(self._factories)

    def request(self) -> None:
        """A trial finished: log it soon (never blocks the caller)."""
        if self._thread is not None:
            self._dirty.set()

    def _main(self) -> None:
        self._sweep()  # build the listeners now, while the first trials train
        while not self._stop.is_set():
            if self._dirty.wait(timeout=0.5):
                self._dirty.clear()
                self._sweep()

    def close(self, best_trial_number: int | None = None) -> list[str]:
        """Log what is left, give the final best trial its model, close the listeners; the failures' notes."""
        if not self._factories:
            return []
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sweep()
        model = self.run_dir / MODEL_FILE
        for listener in self._listeners or []:
            if best_trial_number is not None and listener.wants_models and model.is_file():
                self._call(listener, f"the model of trial {best_trial_number}", listener.add_model,
                           best_trial_number, model)
            self._call(listener, "closing", listener.close)
        return list(self._notes)

    # -- internals --------------------------------------------------------------------------------------------------
    def _problem(self, name: str, what: str, exc: BaseException) -> None:
        text = mask_text(f"{type(exc).__name__}: {exc}".strip())
        first = text.splitlines()[0] if text else type(exc).__name__
        log.warning("%s tracking: %s failed: %s", name, what, text)
        if name not in self._failed:  # one note per listener; the log has every failure
            self._failed.add(name)
            self._notes.append(f"{name} tracking: {what} failed ({first[:300]}); the run itself is unaffected, "
                               "see the log for further failures")

    def _call(self, listener: TrialListener, what: str, fn: Callable[..., None], *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - tracking never fails a trial or the run
            self._problem(listener.name, what, exc)
            return False

    def _ensure_listeners(self) -> list[TrialListener]:
        if self._listeners is None:
            self._listeners = []
            for name, factory in self._factories:
                try:
                    self._listeners.append(factory())
                except Exception as exc:  # noqa: BLE001 - a store that cannot be opened: noted, the run goes on
                    self._problem(name, "opening the store", exc)
        return self._listeners

    def _sweep(self) -> None:
        with self._sweep_lock:
            listeners = self._ensure_listeners()
            if not listeners:
                return
            try:
                frozen = {t.number: t for t in self.study.get_trials(deepcopy=False)}
                records = trial_records(self.study)
            except Exception as exc:  # noqa: BLE001 - the study could not be read now; the next sweep retries
                log.warning("tracking: could not read the study: %s", mask_text(str(exc)))
                return
            wants_models = any(listener.wants_models for listener in listeners)
            for record in records:
                number = record["number"]
                if number in self._seen or record["state"] not in LOGGED_STATES:
                    continue
                if self.process is not None and record.get("process") not in (None, self.process):
                    continue  # another process's trial: that process logs it
                self._seen.add(number)
                trial = frozen.get(number)
                record = dict(record, started=getattr(trial, "datetime_start", None),
                              finished=getattr(trial, "datetime_complete", None))
                model = self._snapshot_model(number) if wants_models else None
                try:
                    for listener in listeners:
                        self._call(listener, f"logging trial {number}", listener.trial_finished, record,
                                   model if listener.wants_models else None)
                finally:
                    if model is not None:
                        shutil.rmtree(model.parent, ignore_errors=True)

    def _snapshot_model(self, number: int) -> Path | None:
        """A private link (or copy) of best_model.keras when trial ``number`` is the run's best right now; taken
        under the search's lock, so no other trial's model can replace it meanwhile."""
        if self._lock is None or self._best_number is None:
            return None
        source = self.run_dir / MODEL_FILE
        try:
            with self._lock:
                if self._best_number() != number or not source.is_file():
                    return None
                folder = Path(tempfile.mkdtemp(prefix=".tracking-", dir=self.run_dir))
                target = folder / MODEL_FILE
                try:
                    os.link(source, target)  # instant; the promoted file replaces the name, not this inode
                except OSError:
                    shutil.copy2(source, target)
            return target
        except OSError as exc:
            log.warning("tracking: could not snapshot the model of trial %s: %s", number, mask_text(str(exc)))
            return None


def open_tracker(config: Any, run_dir: Path, study: Any, search: Any = None) -> Tracker:
    """The tracker ``config`` asks for (a no-op one for tracking=none, tensorboard=false). ``search`` (the run's
    :class:`~hpo.search.Search`): its lock and best trial guard the model snapshot, its process id filters a
    shared study's trials."""
    run_dir = Path(run_dir)
    factories: list[tuple[str, Callable[[], TrialListener]]] = []
    if getattr(config, "tracking", "none") == "mlflow":
        def make_mlflow() -> TrialListener:
            from .mlflow_logger import MlflowListener

            return MlflowListener(mlflow_tracking_uri(run_dir), run_dir, experiment=config.run_name or run_dir.name,
                                  tags={"hpo.dataset": config.dataset, "hpo.mode": config.mode},
                                  default_store=not os.environ.get("MLFLOW_TRACKING_URI"))

        factories.append(("MLflow", make_mlflow))
    if getattr(config, "tensorboard", False):
        def make_tensorboard() -> TrialListener:
            from .tensorboard_logger import TensorBoardListener

            return TensorBoardListener(run_dir / TENSORBOARD_DIR)

        factories.append(("TensorBoard", make_tensorboard))
    shared = getattr(config, "storage", None) is not None
    return Tracker(study, run_dir, factories,
                   process=getattr(search, "process", None) if shared else None,
                   lock=getattr(search, "lock", None),
                   best_number=(lambda: search.best_number) if search is not None else None)
