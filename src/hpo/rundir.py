"""Run folders: the one module that chooses them, writes and reads their config.json, opens their study and keeps
their model files.

    optimization_results/<run_name>/
        config.json        every option of the run (secrets masked) and where its study lives
        study.db           the Optuna study (default storage)
        trials.csv, best.json, best_model.keras, plots/, report.html, logs/
        .hpo.lock          held by the one process that writes the folder (hpo.runlock)

Nothing in a run folder depends on its absolute path: the default study is recorded as "study.db in this folder",
so a copied or moved folder keeps `hpo show`, resume and the report working.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from . import own
from .config import OptimizationConfig
from .exceptions import ConfigError
from .redact import first_line, mask_obj, mask_text, mask_url
from .results import (CONFIG_FILE, MODEL_FILE, RETRIED, RUN_STATE_FILE, STUDY_FILE, OptimizationResult,
                      build_result)
from .runlock import HOLDER_FILE, LOCK_FILE

__all__ = ["prepare_run_dir", "check_output_dir", "read_config_doc", "write_config", "storage_url",
           "study_url_of", "open_run_study", "load_results", "load_study_results", "list_runs", "LOCAL_STUDY"]

#: config.json's record of the default storage: the study.db beside it, wherever the folder is now
LOCAL_STUDY = "study.db (this run folder)"


def read_config_doc(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run folder's config.json as a dict, or None when it has none (or it is unreadable)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("config"), dict) else None


def read_run_state(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A REST API run folder's run_state.json as a dict (None: none, or unreadable)."""
    try:
        doc = json.loads((Path(run_dir) / RUN_STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _not_a_run(run_dir: Path) -> ConfigError:
    """What to say of a folder without config.json: a REST API run that never started says so, with its state."""
    doc = read_run_state(run_dir)
    if doc is None:
        return ConfigError(f"{run_dir} is not an hpo run folder (no readable {CONFIG_FILE})")
    state, error = _never_started_state(run_dir, doc), doc.get("error")
    said = f"{state}" + (f": {mask_text(str(error))}" if error else "")
    return ConfigError(f"{run_dir} is a run of the REST API that never started ({said}); it has no study or trials "
                       "to show (POST it again with the same run_name to start it)")


def _never_started_state(run_dir: Path, doc: dict[str, Any]) -> str:
    """Its state: queued or running while a live server holds its folder, interrupted when that server stopped first,
    or its final state (failed, cancelled)."""
    state = str(doc.get("state") or "empty")
    if state in ("queued", "running") and not _held(run_dir):
        return "interrupted"
    return state


def storage_url(config: OptimizationConfig, run_dir: Path) -> str:
    """The URL to open the run's study with: ``storage=`` or the folder's own study.db."""
    return config.storage or f"sqlite:///{(Path(run_dir) / STUDY_FILE).resolve()}"


def write_config(run_dir: Path, config: OptimizationConfig) -> Path:
    data = mask_obj(config.to_dict())  # every secret masked: storage, an endpoint URL with credentials, ...
    data.pop("output_dir", None)  # where the folder is now decides that; a recorded path would go stale
    from .version import __version__

    doc = {"hpo_version": __version__, "study_name": config.run_name or "",
           "storage_url": mask_url(config.storage) if config.storage else LOCAL_STUDY, "config": data}
    path = Path(run_dir) / CONFIG_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def study_url_of(run_dir: str | os.PathLike[str], doc: dict[str, Any], storage: str | None = None) -> str:
    """Where a run folder's study lives. ``storage`` (the real URL) is needed when config.json holds it masked.

    Folders written before runs were relocatable recorded their study.db by absolute path: when that path is gone but
    the folder has its own study.db, the folder's copy is used."""
    run_dir = Path(run_dir)
    recorded = doc.get("storage_url") or LOCAL_STUDY
    if storage:
        return storage
    if recorded == LOCAL_STUDY:
        return f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"
    if recorded.startswith("sqlite:///") and recorded.endswith(f"/{STUDY_FILE}"):
        old = Path(recorded[len("sqlite:///"):])
        if not old.is_file() and (run_dir / STUDY_FILE).is_file():
            return f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"
    if "***" in recorded:
        raise ConfigError(f"the study of {run_dir} lives in {recorded}; its password is not stored -- give the full "
                          "URL again (storage=...)", field="storage")
    return recorded


def open_run_study(run_dir: str | os.PathLike[str], *, storage: str | None = None,
                   storage_cache: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """(study, config.json document) of a run folder; ConfigError when it is no run folder or the study is gone."""
    import optuna

    run_dir = Path(run_dir)
    doc = read_config_doc(run_dir)
    if doc is None:
        raise _not_a_run(run_dir)
    url = study_url_of(run_dir, doc, storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ConfigError(f"{run_dir} has no study.db: the run never started, or its files were not all copied")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage_cache is not None:
        if url not in storage_cache:
            from .study import open_storage

            storage_cache[url] = open_storage(url)
        store: Any = storage_cache[url]
    elif url.startswith("postgresql"):  # its connection's wait bounded (hpo.study.CONNECT_TIMEOUT_S)
        from .study import open_storage

        store = open_storage(url)
    else:
        store = url
    try:
        study = optuna.load_study(study_name=doc["study_name"], storage=store)
    except KeyError:
        raise ConfigError(f"the study {doc['study_name']!r} of {run_dir} is not in {mask_url(url)}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver: a file that is no database, a server that is down
        raise ConfigError(f"the study of {run_dir} ({mask_url(url)}) cannot be read: {first_line(exc)}") from None
    return study, doc


def load_results(path: str | os.PathLike[str], *, storage: str | None = None) -> OptimizationResult:
    """Read a run folder back (finished or still running; copied or moved elsewhere too)."""
    study, doc = open_run_study(path, storage=storage)
    return build_result(Path(path), study, doc["config"]["mode"])


def load_study_results(storage: str, run_name: str) -> OptimizationResult:
    """The whole of a study shared by several processes, read from its storage alone (no run folder needed)."""
    import optuna

    from .option_types import check_storage_url

    check_storage_url(storage)
    from .study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=run_name, storage=open_storage(storage))
    except KeyError:
        raise ConfigError(f"there is no study {run_name!r} in {mask_url(storage)}", field="run_name") from None
    mode = study.user_attrs.get("hpo_mode", "simple")
    return build_result(Path(f"{run_name}"), study, mode)


def list_runs(output_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run folder in ``output_dir``, newest first: name, dataset, state (running: a live process holds its lock;
    finished; or empty: it never started), best value, trials (from trials.csv), modified time."""
    import csv

    from .results import BEST_FILE, TRIALS_FILE

    root = Path(output_dir)
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        doc = read_config_doc(folder)
        if doc is None:  # a REST API run that never started is listed with its state (no trials); other folders not
            state = read_run_state(folder) if folder.is_dir() else None
            if state is not None:
                options = state.get("options") if isinstance(state.get("options"), dict) else {}
                rows.append({"name": folder.name, "dataset": options.get("dataset"), "mode": options.get("mode"),
                             "state": _never_started_state(folder, state), "best": None, "trials": 0,
                             "completed": 0, "modified": folder.stat().st_mtime})
            continue
        best = None
        try:
            best = json.loads((folder / BEST_FILE).read_text()).get("value")
        except (OSError, ValueError, AttributeError):
            pass
        trials: dict[str, int] = {}
        try:
            with open(folder / TRIALS_FILE, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    state = row["state"]  # an interrupted trial retried since is history: neither counted nor pending
                    state = "retried" if state == "interrupted" and (row.get("reason") or "").startswith(RETRIED) \
                        else state
                    trials[state] = trials.get(state, 0) + 1
        except (OSError, KeyError, csv.Error):
            pass
        counted = sum(n for state, n in trials.items() if state not in ("interrupted", "retried", "waiting"))
        rows.append({"name": folder.name, "dataset": doc["config"].get("dataset"), "mode": doc["config"].get("mode"),
                     "state": _run_state(folder, trials), "best": best, "trials": counted,
                     "completed": trials.get("complete", 0), "modified": folder.stat().st_mtime})
    rows.sort(key=lambda r: r["modified"], reverse=True)
    return rows


def _held(folder: Path) -> bool:
    """Whether a live process holds the folder's lock (a holder was recorded and the lock cannot be taken)."""
    from .runlock import RunLock, RunLocked

    if not (folder / HOLDER_FILE).is_file():
        return False
    try:
        RunLock(folder).acquire().release()
    except RunLocked:
        return True
    return False


def _run_state(folder: Path, trials: dict[str, int]) -> str:
    if _held(folder):
        return "running"
    if not trials:
        return "empty"
    return "interrupted" if trials.get("interrupted") or trials.get("running") else "finished"


# -- choosing the folder -------------------------------------------------------------------------------------------------

def check_output_dir(output_dir: str) -> None:
    """output_dir exists as a writable folder or can be made one; else a ConfigError (nothing else is written)."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir={output_dir!r} is a file, not a folder; allowed: a folder hpo can write to",
                          field="output_dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir={output_dir!r} cannot be created ({exc.strerror or exc}); allowed: a folder "
                          "hpo can write to", field="output_dir") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={output_dir!r} is not writable; allowed: a folder hpo can write to",
                          field="output_dir")


def prepare_run_dir(config: OptimizationConfig) -> tuple[Path, bool, OptimizationConfig]:
    """Decide the run folder: (path, resuming?, config with run_name filled in). Reads only; creates nothing."""
    root = Path(config.output_dir)
    if config.run_name:
        run_dir = root / config.run_name
        existing = read_config_doc(run_dir)
        if existing is not None:
            old = existing["config"]
            for key in ("dataset", "mode"):
                if old.get(key) != getattr(config, key):
                    raise ConfigError(f"run {config.run_name!r} exists with {key}={old.get(key)}; you asked for "
                                      f"{key}={getattr(config, key)} -- pick another run_name to start a new run",
                                      field=key)
            return run_dir, True, config
        if run_dir.exists() and any(p.name not in (LOCK_FILE, HOLDER_FILE, "logs") for p in run_dir.iterdir()):
            raise ConfigError(f"{run_dir} exists but is not an hpo run folder; pick another run_name",
                              field="run_name")
        if config.resume:
            raise ConfigError(f"resume=true but there is no run {config.run_name!r} in {root}", field="resume")
        return run_dir, False, config
    if config.resume:
        candidates = []
        for child in root.glob("*") if root.is_dir() else []:
            existing = read_config_doc(child)
            if existing and existing["config"].get("dataset") == config.dataset:
                candidates.append((child.stat().st_mtime, child))
        if not candidates:
            raise ConfigError(f"resume=true but {root} holds no run of dataset {config.dataset}; start one without "
                              "resume, or give run_name", field="resume")
        run_dir = max(candidates)[1]
        return run_dir, True, config.replace(run_name=run_dir.name)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")  # no colons: safe on every OS
    name = f"{own.run_label(config.dataset)}-{stamp}"
    run_dir, n = root / name, 2
    while run_dir.exists():
        run_dir, n = root / f"{name}-{n}", n + 1
    return run_dir, False, config.replace(run_name=run_dir.name)
