"""How the REST API describes a run folder: state, progress, best so far, options -- from memory for a run of this
server, from the folder's files otherwise (``run_state.json``, ``config.json``, ``trials.csv``, ``best.json``).

Every description passes through :func:`hpo.redact.mask_obj` here, in one place, so no storage password or key
reaches a response. Progress keeps ``done <= total``: a trial interrupted by a crash or a cancel (a FAIL without the
``counted`` attribute, shown as ``interrupted`` in trials.csv) is retried and never counted as done or failed.
"""

from __future__ import annotations

import collections
import csv
import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .config import trial_limit
from .redact import mask_obj
from .results import BEST_FILE, CONFIG_FILE, RUN_STATE_FILE, TRIALS_FILE

__all__ = ["RUN_STATE_FILE", "FINAL_STATES", "jsonable", "read_json", "write_json", "now", "trial_summary",
           "describe", "list_files", "file_in", "lock_folder", "remove_folders"]

FINAL_STATES = frozenset({"completed", "failed", "cancelled", "interrupted"})


def now() -> str:
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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, with every secret masked."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(mask_obj(jsonable(data)), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _to_int(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def trial_summary(run_dir: Path) -> dict[str, int]:
    """Counts by state from trials.csv (written after every trial). ``counted`` = completed + pruned + failed;
    interrupted trials (retried when the run resumes) are not counted."""
    counts: collections.Counter[str] = collections.Counter()
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


def describe(folder: Path, run: Any, position: int | None) -> dict[str, Any]:
    """The GET /runs/{id} document of ``folder``; ``run``: this server's Run for it, or None."""
    doc = read_json(folder / RUN_STATE_FILE) or {}
    config_doc = read_json(folder / CONFIG_FILE)
    if run is not None:
        options = run.config.to_dict()
    else:
        options = (config_doc or {}).get("config") or doc.get("options") or {}
    summary = trial_summary(folder)
    total = trial_limit(_to_int(options.get("trials")), _to_int(options.get("epoch_budget")))
    best = _best_summary(read_json(folder / BEST_FILE))
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
        progress = dict(run.tracker.snapshot())
    else:
        elapsed = _seconds_between(started, finished) if finished else None
        done = summary["counted"]
        shown = None if total is None else max(total, done)  # resumed with fewer trials than it had: never done > total
        progress = {"total": shown, "done": done, "running": [],
                    "queued": max(0, (shown or 0) - done) if state in ("queued", "running") else 0,
                    "completed": summary["completed"], "pruned": summary["pruned"], "failed": summary["failed"],
                    "best": best["value"] if best else None, "best_trial": best["trial"] if best else None,
                    "elapsed_s": elapsed, "eta_s": 0.0 if state in FINAL_STATES else None,
                    "concurrency": options.get("concurrent_workers")}
    progress["interrupted"] = summary["interrupted"]
    if best is None and progress.get("best") is not None:
        best = {"trial": progress.get("best_trial"), "value": progress.get("best"), "val_accuracy": None,
                "test_accuracy": None, "overall_health": None, "params": None}
    has_study = config_doc is not None
    resumable = state in ("interrupted", "cancelled", "failed") and (
        not has_study or total is None or summary["counted"] < total)
    return mask_obj(jsonable({
        "id": folder.name, "state": state, "location": f"/runs/{folder.name}",
        "dataset": options.get("dataset"), "mode": options.get("mode"), "trials": total,
        "created_at": created, "started_at": started, "finished_at": finished,
        "queue_position": position, "cancel_requested": cancel_requested, "resumable": resumable,
        "progress": progress, "best": best, "eta_s": progress.get("eta_s"),
        "elapsed_s": progress.get("elapsed_s"), "error": error, "stop_reason": stop_reason, "notes": notes,
        "options": options,
    }))


def list_files(folder: Path) -> list[dict[str, Any]]:
    """The files of a run folder (name relative to it, size); nothing outside it, no temporary files."""
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


def file_in(folder: Path, name: str) -> Path | None:
    """The file ``name`` inside ``folder``; None for anything else (absolute paths, ``..``, links out of the folder,
    folders, missing files)."""
    if (not name or "\x00" in name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
            or ".." in re.split(r"[\\/]", name)):
        return None  # absolute, drive-relative, or climbing: refused before touching the disk
    try:
        root = folder.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root or not path.is_file():
            return None
    except (OSError, ValueError):
        return None
    return path


def lock_folder(output_dir: Path, folder: Path, created: list[Path]) -> Any:
    """``RunLock(folder).acquire()`` (RunLocked when another process holds it); the folders this makes (the output
    folder, the run folder) are appended to ``created``."""
    from .runlock import RunLock

    created += [p for p in (output_dir, folder) if not p.exists()]
    return RunLock(folder).acquire()


def remove_folders(created: list[Path]) -> None:
    """Undo a refused submit: the folders it made (holding nothing but lock files) go again."""
    from .runlock import HOLDER_FILE, LOCK_FILE

    for folder in reversed(created):
        for name in (LOCK_FILE, HOLDER_FILE):
            (folder / name).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass
