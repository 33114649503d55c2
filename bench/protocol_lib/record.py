"""A method-run's side of the protocol: its clock (started by the parent before the subprocess was spawned, so
process start, imports and data loading count), its deadline, and its trial records.

Every finished trial is appended at once to ``trials.jsonl`` as ``{"n", "end_s", "val", "model", "candidate",
"state", "epochs", "params"}`` -- the parent may kill a run that overstays, and what was recorded stays.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MethodRun", "EpochGuard"]


class MethodRun:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.method: str = spec["method"]
        self.dataset: str = spec["dataset"]["name"]
        self.plan: dict[str, Any] = spec["dataset"]
        self.seed: int = int(spec["seed"])
        self.budget_s: float = float(spec["budget_s"])
        self.start: float = float(spec["start"])  # time.time() when the parent launched this run
        self.deadline = self.start + self.budget_s
        self.dir = Path(spec["run_dir"])
        self.models = self.dir / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "trials.jsonl"
        self.count = 0

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.deadline - time.time()

    def model_path(self, n: int) -> Path:
        return self.models / f"trial-{n}.keras"

    def record(self, n: int, val: float | None, *, candidate: bool, state: str, epochs: int | None = None,
               params: dict[str, Any] | None = None, model: str | Path | None = None,
               end_s: float | None = None) -> None:
        """Append one finished trial (end time = now unless given)."""
        if model is None:
            path = self.model_path(n)
            model = path if path.exists() else None
        ok = val is not None and math.isfinite(float(val))
        line = {"n": n, "end_s": self.elapsed() if end_s is None else end_s, "val": float(val) if ok else None,
                "model": str(model) if model else None, "candidate": bool(candidate and ok and model), "state": state,
                "epochs": epochs, "params": params or {}}
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.count += 1

    def note(self, **fields: Any) -> None:
        """Facts about the run (its options, why it stopped) for the report: merged into ``notes.json``."""
        path = self.dir / "notes.json"
        notes = json.loads(path.read_text()) if path.exists() else {}
        notes.update(fields)
        path.write_text(json.dumps(notes, indent=2, default=str) + "\n")


class EpochGuard:
    """Ends a trial after an epoch when the next one would not finish by the deadline (with ``reserve`` seconds
    left for the final evaluation and saving, or the longest end a trial measured), and tells whether a new trial can
    still end one epoch in time."""

    def __init__(self, run: MethodRun, reserve_s: float = 1.5) -> None:
        self.run = run
        self.reserve_s = reserve_s
        #: the longest end a trial took (seconds from its last epoch to its result: evaluation, model file)
        self.end_s = 0.0
        self.first_epoch: list[float] = []  # seconds to a trial's first epoch (data, model, tracing, one epoch)
        self.times: list[float] = []
        self.epoch_s: float | None = None

    def start_trial(self) -> None:
        self.times = []

    def on_epoch(self, elapsed_s: float | None) -> None:
        if elapsed_s is None:
            return
        self.times.append(float(elapsed_s))
        if len(self.times) == 1:
            self.first_epoch.append(float(elapsed_s))
        else:
            last = self.times[-1] - self.times[-2]
            self.epoch_s = last if self.epoch_s is None else 0.5 * (self.epoch_s + last)

    def ended(self, train_seconds: float | None) -> None:
        """A trial ended ``train_seconds`` after its trainer started: its end (from the last epoch) is measured."""
        if train_seconds and self.times:
            self.end_s = max(self.end_s, float(train_seconds) - self.times[-1])

    def reserve(self, per: float) -> float:
        """Seconds kept free at the deadline after an epoch of ``per`` seconds (the end of a trial)."""
        return max(self.reserve_s, 0.3 * per, self.end_s)

    def out_of_time(self) -> bool:
        per = self.epoch_s if self.epoch_s is not None else (self.times[0] if self.times else 0.0)
        return self.run.left() < per + self.reserve(per)

    def can_start(self) -> bool:
        if self.run.left() <= self.reserve_s:
            return False
        if not self.first_epoch:
            return True
        need = min(self.first_epoch)
        return self.run.left() >= need + self.reserve(self.epoch_s or need)
