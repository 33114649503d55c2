"""Thread-safe aggregation of trial progress, and the displays that show it.

The orchestrator feeds a :class:`ProgressTracker` with trial events (started, epoch, finished) from many threads;
listeners (a console line log, a notebook callback) receive each event together with a consistent snapshot.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["ProgressTracker", "TrialProgress", "LineLog", "Listener"]

Listener = Callable[[dict[str, Any], dict[str, Any]], None]  # (event, snapshot)

FINAL_STATES = ("completed", "pruned", "failed")


@dataclass
class TrialProgress:
    number: int
    state: str = "queued"  # queued | running | completed | pruned | failed
    where: str = ""
    epoch: int = 0
    max_epochs: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)
    value: float | None = None
    reason: str | None = None
    fell_back: str | None = None
    started_at: float | None = None
    ended_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ProgressTracker:
    """Collects trial events; counts, best-so-far and an ETA from observed trial durations and the concurrency."""

    def __init__(self, total: int, *, already_done: int = 0, concurrency: int = 1, best: float | None = None,
                 clock: Callable[[], float] = time.monotonic, listeners: list[Listener] | None = None) -> None:
        self.total = total
        self.already_done = already_done
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.started_at = clock()
        self.best = best
        self.trials: dict[int, TrialProgress] = {}
        self.listeners: list[Listener] = list(listeners or [])
        self._lock = threading.RLock()

    # -- events ------------------------------------------------------------------------------------------------------
    def trial_started(self, number: int, *, where: str = "", max_epochs: int = 0) -> None:
        with self._lock:
            self.trials[number] = TrialProgress(number, "running", where, 0, max_epochs, started_at=self.clock())
            self._emit({"event": "started", "trial": number, "where": where})

    def epoch(self, number: int, epoch: int, metrics: dict[str, float | None]) -> None:
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, "running", started_at=self.clock()))
            trial.epoch, trial.metrics = epoch, dict(metrics)
            self._emit({"event": "epoch", "trial": number, "epoch": epoch, "metrics": dict(metrics)})

    def fell_back(self, number: int, reason: str, *, where: str = "local") -> None:
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, "running", started_at=self.clock()))
            trial.fell_back, trial.where = reason, where
            self._emit({"event": "fell_back", "trial": number, "reason": reason})

    def trial_finished(self, number: int, state: str, *, value: float | None = None, where: str = "",
                       reason: str | None = None) -> None:
        if state not in FINAL_STATES:
            raise ValueError(f"unknown final state {state!r}; allowed: {', '.join(FINAL_STATES)}")
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, started_at=self.clock()))
            trial.state, trial.value, trial.reason, trial.ended_at = state, value, reason, self.clock()
            if where:
                trial.where = where
            if state == "completed" and value is not None and (self.best is None or value > self.best):
                self.best = value
            self._emit({"event": "finished", "trial": number, "state": state, "value": value,
                        "where": trial.where, "reason": reason})

    def trial_discarded(self, number: int) -> None:
        """A trial that does not count (rejected before training, or interrupted and to be retried)."""
        with self._lock:
            self.trials.pop(number, None)

    # -- views -------------------------------------------------------------------------------------------------------
    def _durations(self) -> list[float]:
        return [t.ended_at - t.started_at for t in self.trials.values()
                if t.state in FINAL_STATES and t.ended_at is not None and t.started_at is not None]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            finished = sum(t.state in FINAL_STATES for t in self.trials.values())
            running = [t.to_dict() for t in self.trials.values() if t.state == "running"]
            done = self.already_done + finished
            durations = self._durations()
            eta = None
            if durations:
                mean = sum(durations) / len(durations)
                remaining = max(0, self.total - done)
                # running trials are partly done; the rest start as slots free up
                running_left = sum(max(0.0, mean - (now - t["started_at"])) for t in running)
                queued = max(0, remaining - len(running))
                eta = (running_left + queued * mean) / self.concurrency if remaining else 0.0
            return {
                "total": self.total, "done": done, "running": running,
                "completed": sum(t.state == "completed" for t in self.trials.values()),
                "pruned": sum(t.state == "pruned" for t in self.trials.values()),
                "failed": sum(t.state == "failed" for t in self.trials.values()),
                "best": self.best, "elapsed_s": now - self.started_at, "eta_s": eta,
            }

    def _emit(self, event: dict[str, Any]) -> None:
        snap = self.snapshot()
        for listener in list(self.listeners):
            try:
                listener(event, snap)
            except Exception:  # noqa: BLE001 - a display must never break the run
                pass


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class LineLog:
    """Plain one-line-per-event log (CI logs, pipes). Epoch lines are printed only when ``epochs`` is true."""

    def __init__(self, stream: TextIO | None = None, *, epochs: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.epochs = epochs

    def __call__(self, event: dict[str, Any], snap: dict[str, Any]) -> None:
        kind = event["event"]
        head = f"[{snap['done']}/{snap['total']}]"
        if kind == "started":
            line = f"{head} trial {event['trial']} started on {event['where']}"
        elif kind == "epoch":
            if not self.epochs:
                return
            acc = event["metrics"].get("val_accuracy")
            line = f"{head} trial {event['trial']} epoch {event['epoch']}: val_accuracy={_num(acc)}"
        elif kind == "fell_back":
            line = f"{head} trial {event['trial']} runs locally instead: {event['reason']}"
        else:
            reason = f" ({event['reason']})" if event.get("reason") else ""
            line = (f"{head} trial {event['trial']} {event['state']}: value={_num(event['value'])}{reason}; "
                    f"best={_num(snap['best'])}; elapsed {_fmt_seconds(snap['elapsed_s'])}, "
                    f"ETA {_fmt_seconds(snap['eta_s'])}")
        print(line, file=self.stream, flush=True)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
