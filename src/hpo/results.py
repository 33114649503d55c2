"""A run's results as plain data and files, made from its Optuna study (the store of record):

    trials.csv         one row per trial
    best.json          the best trial (or the Pareto front in pareto mode)

(:mod:`hpo.rundir` owns the run folder itself: config.json, study.db, the lock and the model files.)

Trials serialize to plain dicts (:func:`trial_records`) built from the Optuna study, which is the store of record:
each trial's own TrialResult travels in its user attributes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import kept

__all__ = [
    "OptimizationResult",
    "trial_records",
    "RETRIED",
    "write_trials_csv",
    "write_best",
    "RunFilesWriter",
    "ModelFiles",
    "CONFIG_FILE",
    "BEST_FILE",
    "TRIALS_FILE",
    "MODEL_FILE",
    "RUN_STATE_FILE",
]

CONFIG_FILE = "config.json"
BEST_FILE = "best.json"
TRIALS_FILE = "trials.csv"
MODEL_FILE = "best_model.keras"
STUDY_FILE = "study.db"
#: a run of the REST API: its state (queued, running, failed, ...), written from submit on (hpo.run_manager)
RUN_STATE_FILE = "run_state.json"


@dataclass
class OptimizationResult:
    """What a run produced. ``trials`` are plain dicts (see :func:`trial_records`)."""

    run_dir: str
    study_name: str
    best_params: dict[str, Any] | None
    best_value: float | list[float] | None
    best_trial_number: int | None
    best_val_accuracy: float | None
    best_test_accuracy: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    pareto_front: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    interrupted: bool = False
    stop_reason: str | None = None
    aborted: bool = False  # stopped because trials kept failing (the CLI exits 1)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- for notebooks: the study, a DataFrame, the model ------------------------------------------------------------
    @property
    def study(self) -> Any:
        """The run's ``optuna.Study`` (every trial, with hpo's TrialResult in its user attributes)."""
        study = self.__dict__.get("_study")
        if study is None:
            raise AttributeError("this result has no study attached (build it with hpo.load_results)")
        return study

    def trials_dataframe(self) -> Any:
        """One row per trial (rejected configurations left out, as in trials.csv): number, state, value, the
        validation and test accuracy and loss, health, epochs, where it ran, and one ``params_<name>`` column per
        search parameter. Needs pandas."""
        import pandas as pd

        rows = []
        for t in self.trials:
            row = {k: t.get(k) for k in _CSV_FIXED}
            row.update({f"params_{k}": v for k, v in sorted(t["params"].items())})
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else _CSV_FIXED)

    def load_best_model(self) -> Any:
        """The best trial's Keras model (best_model.keras of the run folder; imports Keras)."""
        path = Path(self.run_dir) / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: no trial completed, or the run kept no model")
        import keras

        return keras.models.load_model(path)

    def __repr__(self) -> str:  # short, notebook-friendly
        return (f"OptimizationResult(run_dir={self.run_dir!r}, best_value={self.best_value!r}, "
                f"best_test_accuracy={self.best_test_accuracy!r}, completed={self.completed}, "
                f"pruned={self.pruned}, failed={self.failed})")


#: the reason of an interrupted trial once its retry was asked (a resumed run): "interrupted; retried as trial N"
RETRIED = "interrupted; retried as trial "


def _state_name(trial: Any) -> str:
    """complete, pruned, fail, running, waiting -- or interrupted: a trial that ended without a verdict (Ctrl-C, or a
    process that died and whose trial another run found stale). Every real failure carries the ``counted``
    attribute; a FAIL without it was interrupted, is retried, and never counts as a failure."""
    attrs = trial.user_attrs
    if attrs.get("interrupted") or (trial.state.name == "FAIL" and not attrs.get("counted")):
        return "interrupted"
    return trial.state.name.lower()


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One plain dict per counted trial (trials rejected before training are left out), ordered by number."""
    records = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("rejected"):
            continue
        result = attrs.get("result") or {}
        val, test = result.get("val_metrics") or {}, result.get("test_metrics") or {}
        values = t.values
        record = {
            "number": t.number,
            "state": _state_name(t),
            "value": (values[0] if values and len(values) == 1 else values),
            "val_accuracy": val.get("accuracy"),
            "val_loss": val.get("loss"),
            "test_accuracy": test.get("accuracy"),
            "test_loss": test.get("loss"),
            "overall_health": (result.get("health") or {}).get("overall_health"),
            "epochs": result.get("epochs_run"),
            "best_epoch": result.get("best_epoch"),
            "train_seconds": result.get("train_seconds"),
            "param_count": result.get("param_count") or attrs.get("param_count"),
            "executed_on": result.get("executed_on"),
            "device": result.get("device"),
            "fallback_reason": attrs.get("fallback_reason"),
            "reason": attrs.get("reason"),
            "params": dict(t.params),
            "health": result.get("health") or {},
            "history": result.get("history") or {},
            "retry_of": attrs.get("retry_of"),
            "process": attrs.get("process"),
            "epochs_trained": attrs.get("epochs_trained"),
            #: a final that averages models (final_ensemble): {"members", "weights", "alone": its own metrics}
            "ensemble": _ensemble(result),
            #: a final that started from its source trial's weights (final_warm_start): that trial's number
            "warm_from": _warm_from(result),
        }
        records.append(record)
    retried = {r["retry_of"]: r["number"] for r in records if r["retry_of"] is not None and r["state"] != "waiting"}
    for r in records:  # an interrupted trial whose retry was asked says so (the run is no longer interrupted)
        if r["state"] == "interrupted" and r["number"] in retried:
            r["reason"] = f"{RETRIED}{retried[r['number']]}"
    return records


def _ensemble(result: dict[str, Any]) -> dict[str, Any] | None:
    found = (result.get("details") or {}).get("ensemble")
    return found if isinstance(found, dict) else None


def _warm_from(result: dict[str, Any]) -> int | None:
    found = (result.get("details") or {}).get("warm_start")
    return found.get("from_trial") if isinstance(found, dict) and found.get("loaded") else None


_CSV_FIXED = ["number", "state", "value", "val_accuracy", "val_loss", "test_accuracy", "test_loss", "overall_health",
              "epochs", "best_epoch", "train_seconds", "param_count", "executed_on", "device", "fallback_reason",
              "reason"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_trials_csv(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    param_names = sorted({k for r in records for k in r["params"]})
    path = Path(run_dir) / TRIALS_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_CSV_FIXED + [f"param_{p}" for p in param_names])
        for r in records:
            value = r["value"]
            row = [json.dumps(value) if isinstance(value, list) else value] + [r[k] for k in _CSV_FIXED[3:]]
            writer.writerow([r["number"], r["state"]] + row + [r["params"].get(p, "") for p in param_names])
    os.replace(tmp, path)
    return path


def _best_entry(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("number", "value", "val_accuracy", "val_loss", "test_accuracy", "test_loss", "overall_health",
            "epochs", "best_epoch", "param_count", "executed_on", "device", "params", "health", "ensemble")
    return {k: record[k] for k in keys}


def best_records(study: Any, records: list[dict[str, Any]], mode: str) -> tuple[dict | None, list[dict]]:
    """(best trial record, Pareto front records). In pareto mode the 'best' is the front member with the highest
    validation accuracy."""
    by_number = {r["number"]: r for r in records}
    complete = [r for r in records if r["state"] == "complete"]
    if not complete:
        return None, []
    if mode == "pareto":
        front = sorted((by_number[t.number] for t in study.best_trials if t.number in by_number),
                       key=lambda r: r["number"])
        best = max(front, key=lambda r: (r["val_accuracy"] or 0.0)) if front else None
        return best, front
    best_trial = study.best_trial
    return by_number.get(best_trial.number), []


def write_best(run_dir: Path, study: Any, records: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    best, front = best_records(study, records, mode)
    path = Path(run_dir) / BEST_FILE
    if best is None:
        if path.exists():
            path.unlink()
        return None
    doc = _best_entry(best)
    doc["selected_by"] = {"simple": "validation accuracy", "health": "validation accuracy blended with health",
                          "pareto": "highest validation accuracy on the Pareto front"}[mode]
    if mode == "pareto":
        doc["pareto_front"] = [_best_entry(r) for r in front]
    _atomic_write(path, json.dumps(doc, indent=2) + "\n")
    return doc


def build_result(run_dir: Path, study: Any, mode: str, *, interrupted: bool = False,
                 stop_reason: str | None = None, aborted: bool = False,
                 notes: list[str] | None = None) -> OptimizationResult:
    records = trial_records(study)
    best, front = best_records(study, records, mode)
    result = OptimizationResult(
        run_dir=str(run_dir), study_name=study.study_name,
        best_params=best["params"] if best else None, best_value=best["value"] if best else None,
        best_trial_number=best["number"] if best else None,
        best_val_accuracy=best["val_accuracy"] if best else None,
        best_test_accuracy=best["test_accuracy"] if best else None,
        trials=records, pareto_front=[_best_entry(r) for r in front],
        completed=sum(r["state"] == "complete" for r in records),
        pruned=sum(r["state"] == "pruned" for r in records),
        failed=sum(r["state"] == "fail" for r in records),
        interrupted=interrupted, stop_reason=stop_reason, aborted=aborted, notes=list(notes or []))
    result.__dict__["_study"] = study  # not a dataclass field: to_dict() and repr stay plain data
    return result


class RunFilesWriter:
    """Rewrites trials.csv and best.json when asked. A background thread coalesces the requests, so trial threads
    never wait for file I/O (with many concurrent trials, rewriting per trial under the study lock delayed the next
    dispatch by up to seconds), and writes at most every ``min_interval_s``: each rewrite reads the whole study, so
    rewriting per trial would cost the run time growing with the square of its trials. :meth:`close` writes a last
    time."""

    def __init__(self, run_dir: Path, study: Any, mode: str, *, min_interval_s: float = 2.0) -> None:
        self.run_dir, self.study, self.mode = Path(run_dir), study, mode
        self.min_interval_s = max(0.0, min_interval_s)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        self._dirty.set()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="hpo-files", daemon=True)
                self._thread.start()

    def _main(self) -> None:
        while not self._stop.is_set():
            if self._dirty.wait(timeout=0.5):
                self._dirty.clear()
                self.write_now()
                self._stop.wait(self.min_interval_s)  # requests meanwhile make one write; close() writes at once

    def write_now(self) -> None:
        try:
            records = trial_records(self.study)
            write_trials_csv(self.run_dir, records)
            write_best(self.run_dir, self.study, records, self.mode)
        except Exception:  # noqa: BLE001 - a failed rewrite is retried at the next trial and at the end
            logging.getLogger(__name__).exception("could not write the run files of %s", self.run_dir)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
        self.write_now()


def _link(src: Path, dst: Path) -> None:
    """``dst`` the same file as ``src`` (a hard link; a copy where links are not possible)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class ModelFiles:
    """Each trial saves its model to models/trial-N.keras; the best one becomes best_model.keras.

    Single objective: the best-so-far model replaces best_model.keras as results come in. Pareto: every completed
    trial's model is kept until the end, when the selected one is moved. ``keep`` > 0 (a final may average models,
    ``final_ensemble``): the ``keep`` best completed trials' own models and predictions are also linked into
    models/kept/ (:mod:`hpo.kept`), where a final's trainer reads them."""

    def __init__(self, run_dir: Path, *, pareto: bool, enabled: bool = True, keep: int = 0) -> None:
        self.run_dir, self.pareto, self.enabled, self.keep_count = Path(run_dir), pareto, enabled, keep
        self._kept: dict[int, float] = {}
        self._lock = threading.Lock()

    def path(self, number: int) -> Path | None:
        if not self.enabled:
            return None
        folder = self.run_dir / "models"
        folder.mkdir(exist_ok=True)
        return folder / f"trial-{number}.keras"

    def keep(self, number: int, value: float) -> None:
        """Completed trial ``number`` (objective ``value``) joins the kept models if it is among the ``keep`` best and
        left its predictions; the one that falls out is unlinked."""
        path = self.path(number) if self.keep_count > 0 else None
        if path is None or not kept.predictions_path(path).exists():
            return
        single = next((f for f in (kept.single_path(path), path) if f.exists()), None)  # a final's own model first
        if single is None:
            return
        folder = kept.kept_dir(path)
        with self._lock:
            folder.mkdir(exist_ok=True)
            for src, name in ((single, path.name), (kept.predictions_path(path), kept.predictions_path(path).name)):
                _link(src, folder / name)
            self._kept[number] = value
            ranked = sorted(self._kept, key=lambda n: (-self._kept[n], n))
            for out in ranked[self.keep_count:]:
                del self._kept[out]
                for name in (f"trial-{out}.keras", f"trial-{out}.npz"):
                    (folder / name).unlink(missing_ok=True)

    def promote(self, number: int) -> None:
        """Trial ``number`` is the new best (single objective): its model becomes best_model.keras."""
        path = self.path(number)
        if path is not None and path.exists() and not self.pareto:
            shutil.move(str(path), self.run_dir / MODEL_FILE)

    def drop(self, number: int) -> None:
        path = self.path(number)
        if path is not None and not self.pareto:
            for leftover in (path, kept.predictions_path(path), kept.single_path(path)):
                leftover.unlink(missing_ok=True)

    def finalize(self, best_number: int | None) -> None:
        folder = self.run_dir / "models"
        if self.pareto and best_number is not None:
            chosen = folder / f"trial-{best_number}.keras"
            if chosen.exists():
                shutil.move(str(chosen), self.run_dir / MODEL_FILE)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
