"""The parent's side: one method-run at a time, each in a fresh subprocess (no warm caches, no shared cores), its
clock started just before the process is spawned, killed (its whole process group) when it overstays its budget by
the grace period (max(30 s, T/2)); what it recorded up to then stays."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["run_method", "grace_s", "read_run"]

BENCH = Path(__file__).resolve().parents[1]


def grace_s(budget_s: float) -> float:
    """How long past T a run may go on before it is killed (trials ending after T never count at T anyway)."""
    return max(30.0, budget_s / 2)


def read_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    trials = []
    log = run_dir / "trials.jsonl"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                trials.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                pass
    notes_path = run_dir / "notes.json"
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    return trials, notes


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first (hpo stops gracefully and ends its workers), then SIGTERM and SIGKILL to the run's process group
    and to every descendant found before (hpo's worker processes run in sessions of their own)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 15), (signal.SIGKILL, 30)):
        if sig == signal.SIGINT:
            proc.send_signal(sig)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        alive = [p for p in family if _alive(p)]
        if alive:
            psutil.wait_procs(alive, timeout=wait)
        if not any(_alive(p) for p in alive):
            return


def _alive(p: Any) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_method(*, method: str, plan: dict[str, Any], seed: int, budget_s: float, run_dir: Path,
               hpo_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one method on one dataset and seed for ``budget_s``; its record (trials, notes, wall time, exit)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH)] + [p for p in [os.environ.get("PYTHONPATH")]
                                                                       if p]),
               TF_CPP_MIN_LOG_LEVEL="2")
    spec = {"method": method, "dataset": plan, "seed": seed, "budget_s": budget_s, "run_dir": str(run_dir),
            "hpo_options": hpo_options or {}}
    spec_path = run_dir / "spec.json"
    with open(run_dir / "output.log", "w", encoding="utf-8") as log:
        spec["start"] = time.time()
        spec_path.write_text(json.dumps(spec, indent=2))
        proc = subprocess.Popen([sys.executable, "-m", "protocol_lib.child", str(spec_path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        killed = False
        try:
            proc.wait(timeout=budget_s + grace_s(budget_s))
        except subprocess.TimeoutExpired:
            killed = True
            _stop(proc)
        except BaseException:
            _stop(proc)
            raise
    wall = time.time() - spec["start"]
    trials, notes = read_run(run_dir)
    record = {"method": method, "dataset": plan["name"], "seed": seed, "budget_s": budget_s, "run_dir": str(run_dir),
              "wall_s": wall, "returncode": proc.returncode, "killed": killed, "trials": trials, "notes": notes}
    (run_dir / "record.json").write_text(json.dumps(record, default=str) + "\n")  # protocol.py --reuse
    return record
