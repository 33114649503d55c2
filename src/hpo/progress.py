"""Thread-safe aggregation of trial progress, and the displays that show it.

The orchestrator feeds a :class:`ProgressTracker` with trial events (started, epoch, fell back, finished, discarded)
from many threads; listeners receive each event together with a consistent snapshot, one call at a time:

- :class:`LiveDisplay` (terminals): one line per running trial plus a summary line, redrawn in place; finished
  trials scroll above it as permanent lines;
- :class:`LineLog` (pipes, CI logs): one plain line per event, each trial's start and end exactly once;
- a notebook callback (``hpo.optimize(..., progress=callback)``), adapted by :func:`as_listener`.

A snapshot is a plain dict::

    {"total", "done", "completed", "pruned", "failed", "queued", "running": [trial dicts with "age_s"],
     "best", "best_trial", "elapsed_s", "eta_s", "concurrency"}

``done`` includes trials finished by an earlier (resumed) run; ``completed`` / ``pruned`` / ``failed`` count this
session's trials. ``eta_s`` is None until a duration can be estimated.
"""

from __future__ import annotations

import heapq
import inspect
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["ProgressTracker", "TrialProgress", "LineLog", "LiveDisplay", "Listener", "make_display", "as_listener",
           "estimate_eta", "render_live"]

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
        d = dict(self.__dict__)
        d["metrics"] = dict(self.metrics)
        return d


def estimate_eta(*, total: int, done: int, running: list[dict[str, Any]], durations: list[float],
                 concurrency: int) -> float | None:
    """Seconds until ``total`` trials are done, by list scheduling on ``concurrency`` slots.

    The expected trial duration is the mean of the finished trials' durations; before any trial has finished it is
    extrapolated from the running trials' epoch progress (``age_s * max_epochs / epoch``). Each running trial occupies
    a slot until ``max(0, mean - age)``; queued trials then start, each taking ``mean``, on the earliest free slot.
    """
    remaining = total - done
    if remaining <= 0:
        return 0.0
    if durations:
        mean = sum(durations) / len(durations)
    else:
        projected = [t["age_s"] * t["max_epochs"] / t["epoch"] for t in running
                     if t.get("epoch") and t.get("max_epochs")]
        if not projected:
            return None
        mean = sum(projected) / len(projected)
    slots = [max(0.0, mean - t["age_s"]) for t in running[:remaining]]
    slots += [0.0] * max(0, max(1, concurrency) - len(slots))
    heapq.heapify(slots)
    for _ in range(max(0, remaining - len(running))):
        heapq.heapreplace(slots, slots[0] + mean)
    return max(slots)


def estimate_eta_epochs(*, budget: int, epochs_done: int, trial_seconds: float, trial_epochs: int,
                        concurrency: int) -> float | None:
    """Seconds until an epoch budget is spent: epochs left x observed seconds per epoch / concurrency (trials'
    start-up time included in the seconds per epoch). None before any epoch has finished."""
    left = budget - epochs_done
    if left <= 0:
        return 0.0
    if trial_epochs <= 0:
        return None
    return left * (trial_seconds / trial_epochs) / max(1, concurrency)


class ProgressTracker:
    """Collects trial events; counts, best-so-far and an ETA from observed trial durations and the concurrency.

    Every method may be called from any thread. Listeners run one at a time, in event order, under the tracker's lock;
    a listener that raises is ignored (a display must never break the run).
    """

    def __init__(self, total: int, *, already_done: int = 0, concurrency: int = 1, best: float | None = None,
                 clock: Callable[[], float] = time.monotonic, listeners: list[Listener] | None = None,
                 epoch_budget: int | None = None, epochs_before: int = 0) -> None:
        #: trials expected (with an epoch budget, an estimate: the display never shows more done than total)
        self.total = total
        #: with an epoch budget the ETA counts epochs, not trials; epochs_before: trained by earlier runs (resume)
        self.epoch_budget = epoch_budget
        self.epochs_before = epochs_before
        self.already_done = already_done
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.started_at = clock()
        self.best = best
        self.best_trial: int | None = None
        self.trials: dict[int, TrialProgress] = {}
        self.listeners: list[Listener] = list(listeners or [])
        self._lock = threading.RLock()

    # -- events ------------------------------------------------------------------------------------------------------
    def trial_started(self, number: int, *, where: str = "", max_epochs: int = 0) -> None:
        with self._lock:
            self.trials[number] = TrialProgress(number, "running", where, 0, max_epochs, started_at=self.clock())
            self._emit({"event": "started", "trial": number, "where": where, "max_epochs": max_epochs})

    def epoch(self, number: int, epoch: int, metrics: dict[str, float | None]) -> None:
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, "running", started_at=self.clock()))
            if trial.state in FINAL_STATES:  # a late report of a trial that has ended
                return
            trial.epoch, trial.metrics = epoch, dict(metrics)
            self._emit({"event": "epoch", "trial": number, "epoch": epoch, "max_epochs": trial.max_epochs,
                        "metrics": dict(metrics)})

    def fell_back(self, number: int, reason: str, *, where: str = "local") -> None:
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, "running", started_at=self.clock()))
            trial.fell_back, trial.where = reason, where
            self._emit({"event": "fell_back", "trial": number, "reason": reason, "where": where})

    def trial_finished(self, number: int, state: str, *, value: float | None = None, where: str = "",
                       reason: str | None = None) -> None:
        if state not in FINAL_STATES:
            raise ValueError(f"unknown final state {state!r}; allowed: {', '.join(FINAL_STATES)}")
        with self._lock:
            trial = self.trials.setdefault(number, TrialProgress(number, started_at=self.clock()))
            if trial.state in FINAL_STATES:  # reported twice: the first report stands
                return
            trial.state, trial.value, trial.reason, trial.ended_at = state, value, reason, self.clock()
            if where:
                trial.where = where
            if state == "completed" and value is not None and (self.best is None or value > self.best):
                self.best, self.best_trial = value, number
            self._emit({"event": "finished", "trial": number, "state": state, "value": value,
                        "where": trial.where, "reason": reason})

    def trial_discarded(self, number: int, reason: str | None = None) -> None:
        """A trial that does not count (rejected before training, or interrupted and to be retried)."""
        with self._lock:
            trial = self.trials.pop(number, None)
            if trial is not None and trial.state not in FINAL_STATES:
                self._emit({"event": "discarded", "trial": number,
                            "reason": reason or "interrupted; not counted, retried when the run resumes"})

    # -- views -------------------------------------------------------------------------------------------------------
    def _durations(self) -> list[float]:
        finished = [t for t in self.trials.values()
                    if t.state in FINAL_STATES and t.ended_at is not None and t.started_at is not None]
        # trials that trained (completed, pruned) tell the duration best; failures are often instant
        trained = [t for t in finished if t.state != "failed"] or finished
        return [t.ended_at - t.started_at for t in trained]  # type: ignore[operator]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            trials = list(self.trials.values())
            finished = sum(t.state in FINAL_STATES for t in trials)
            running = []
            for t in sorted(trials, key=lambda t: t.number):
                if t.state == "running":
                    d = t.to_dict()
                    d["age_s"] = max(0.0, now - (t.started_at if t.started_at is not None else now))
                    running.append(d)
            done = self.already_done + finished
            total = max(self.total, done + len(running))
            epochs = self.epochs_before + sum(t.epoch for t in trials)
            if self.epoch_budget is not None:
                seconds = sum((t.ended_at if t.ended_at is not None else now) - t.started_at
                              for t in trials if t.started_at is not None and t.epoch)
                eta = estimate_eta_epochs(budget=self.epoch_budget, epochs_done=epochs, trial_seconds=seconds,
                                          trial_epochs=sum(t.epoch for t in trials), concurrency=self.concurrency)
            else:
                eta = estimate_eta(total=total, done=done, running=running, durations=self._durations(),
                                   concurrency=self.concurrency)
            return {
                "total": total, "done": done, "running": running,
                "queued": max(0, total - done - len(running)),
                "epochs": epochs, "epoch_budget": self.epoch_budget,
                "completed": sum(t.state == "completed" for t in trials),
                "pruned": sum(t.state == "pruned" for t in trials),
                "failed": sum(t.state == "failed" for t in trials),
                "best": self.best, "best_trial": self.best_trial, "elapsed_s": now - self.started_at, "eta_s": eta,
                "concurrency": self.concurrency,
            }

    def _emit(self, event: dict[str, Any]) -> None:
        snap = self.snapshot()
        for listener in list(self.listeners):
            try:
                listener(event, snap)
            except Exception:  # noqa: BLE001 - a display must never break the run
                pass


# -- formatting --------------------------------------------------------------------------------------------------------

def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _event_line(event: dict[str, Any], snap: dict[str, Any]) -> str | None:
    """The permanent line of an event (None for epoch events)."""
    kind = event["event"]
    head = f"[{snap['done']}/{snap['total']}]"
    n = event["trial"]
    if kind == "started":
        return f"{head} trial {n} started on {event.get('where') or '?'}"
    if kind == "fell_back":
        return f"{head} trial {n} runs on {event.get('where') or 'local'} instead: {event['reason']}"
    if kind == "discarded":
        return f"{head} trial {n} discarded: {event['reason']}"
    if kind == "finished":
        reason = f" ({_first_line(event['reason'])})" if event.get("reason") else ""
        where = f" on {event['where']}" if event.get("where") else ""
        budget = f"; epochs {snap['epochs']}/{snap['epoch_budget']}" if snap.get("epoch_budget") else ""
        return (f"{head} trial {n} {event['state']}{where}: value={_num(event['value'])}{reason}; "
                f"best={_num(snap['best'])}{budget}; elapsed {_fmt_seconds(snap['elapsed_s'])}, "
                f"ETA {_fmt_seconds(snap['eta_s'])}")
    return None


def _first_line(text: str, limit: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class LineLog:
    """Plain one-line-per-event log (CI logs, pipes): every trial's start and end (finished or discarded) exactly
    once. Epoch lines are printed only when ``epochs`` is true."""

    def __init__(self, stream: TextIO | None = None, *, epochs: bool = False) -> None:
        self.stream = stream
        self.epochs = epochs

    def __call__(self, event: dict[str, Any], snap: dict[str, Any]) -> None:
        if event["event"] == "epoch":
            if not self.epochs:
                return
            head = f"[{snap['done']}/{snap['total']}]"
            total = f"/{event['max_epochs']}" if event.get("max_epochs") else ""
            line = (f"{head} trial {event['trial']} epoch {event['epoch']}{total}: "
                    f"val_accuracy={_num(event['metrics'].get('val_accuracy'))}")
        else:
            line = _event_line(event, snap)
            if line is None:
                return
        print(line, file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        pass


# -- live terminal display ---------------------------------------------------------------------------------------------

def _bar(done: int, total: int, width: int = 10) -> str:
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "█" * filled + "░" * (width - filled)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render_live(snap: dict[str, Any], *, width: int = 100, max_rows: int = 20) -> list[str]:
    """The live block: one line per running trial, then the summary line (plain text, each at most ``width``)."""
    lines = []
    running = snap["running"]
    shown = running if len(running) <= max_rows else running[: max_rows - 1]
    for t in shown:
        where = t.get("where") or "?"
        if t.get("fell_back"):
            where += " (fell back)"
        if t.get("epoch"):
            total = t.get("max_epochs") or "?"
            progress = f"epoch {t['epoch']}/{total} {_bar(t['epoch'], t.get('max_epochs') or 0)}"
        else:
            progress = f"starting      {_bar(0, 1)}"
        m = t.get("metrics") or {}
        metrics = "".join(f"  {label} {_num(m.get(key))}" for key, label in
                          (("val_accuracy", "val_acc"), ("val_loss", "val_loss")) if m.get(key) is not None)
        lines.append(f"  trial {t['number']:<4} {_fit(where, 28):<28} {progress}{metrics}  "
                     f"{_fmt_seconds(t.get('age_s'))}")
    if len(shown) < len(running):
        lines.append(f"  … and {len(running) - len(shown)} more running")
    best = "-" if snap["best"] is None else f"{snap['best']:.4f}"
    if snap.get("best_trial") is not None:
        best += f" (trial {snap['best_trial']})"
    budget = f" · epochs {snap['epochs']}/{snap['epoch_budget']}" if snap.get("epoch_budget") else ""
    lines.append(f"{snap['done']}/{snap['total']} done · {snap['completed']} completed, {snap['pruned']} pruned, "
                 f"{snap['failed']} failed · {len(running)} running{budget} · best {best} · "
                 f"elapsed {_fmt_seconds(snap['elapsed_s'])} · ETA {_fmt_seconds(snap['eta_s'])}")
    return [_fit(line, width) for line in lines]


_COLORS = {"completed": "32", "pruned": "33", "failed": "31", "discarded": "33", "fell_back": "36"}


class LiveDisplay:
    """Live block for terminals, redrawn in place with ANSI escapes (and every ``refresh_s`` so that elapsed time
    and ETA tick). Finished, discarded and fallen-back trials are printed as permanent lines above the block."""

    def __init__(self, stream: TextIO | None = None, *, refresh_s: float = 0.5, color: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.refresh_s = refresh_s
        self.color = (os.environ.get("NO_COLOR") is None) if color is None else color
        self.clock = clock
        self._lock = threading.Lock()
        self._drawn = 0
        self._snap: dict[str, Any] | None = None
        self._snap_at = 0.0
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, event: dict[str, Any], snap: dict[str, Any]) -> None:
        with self._lock:
            if self._closed:
                return
            self._snap, self._snap_at = snap, self.clock()
            line = None if event["event"] == "started" else _event_line(event, snap)
            if line is not None and self.color:
                code = _COLORS.get(event.get("state") or event["event"])
                line = f"\x1b[{code}m{line}\x1b[0m" if code else line
            self._draw([line] if line else [])
            if self._thread is None and self.refresh_s > 0:
                self._thread = threading.Thread(target=self._tick, name="hpo-progress", daemon=True)
                self._thread.start()

    def _aged(self) -> dict[str, Any] | None:
        if self._snap is None:
            return None
        dt = max(0.0, self.clock() - self._snap_at)
        snap = dict(self._snap)
        snap["elapsed_s"] = snap["elapsed_s"] + dt
        if snap["eta_s"] is not None:
            snap["eta_s"] = max(0.0, snap["eta_s"] - dt)
        snap["running"] = [dict(t, age_s=t.get("age_s", 0.0) + dt) for t in snap["running"]]
        return snap

    def _draw(self, permanent: list[str], *, final: bool = False) -> None:
        snap = self._aged()
        size = shutil.get_terminal_size(fallback=(100, 24))
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}A\r\x1b[J")  # up to the block's first line, clear to the end
        out.extend(p + "\n" for p in permanent)
        block = [] if snap is None else render_live(dict(snap, running=[] if final else snap["running"]),
                                                    width=max(20, size.columns - 1),
                                                    max_rows=max(1, size.lines - 4))
        if block and self.color:
            block[-1] = f"\x1b[1m{block[-1]}\x1b[0m"
        out.extend(b + "\n" for b in block)
        self._drawn = len(block)
        try:
            self.stream.write("".join(out))
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: stop drawing
            self._closed = True

    def _tick(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with self._lock:
                if self._closed:
                    return
                self._draw([])

    def close(self) -> None:
        """Stop ticking and leave the final summary line on screen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if not self._closed:
                self._draw([], final=True)
            self._closed = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def make_display(stream: TextIO | None = None, *, quiet: bool = False) -> LiveDisplay | LineLog | None:
    """The console display: none when ``quiet``, a :class:`LiveDisplay` on a terminal, a :class:`LineLog` otherwise
    (pipes, CI logs, notebooks)."""
    if quiet:
        return None
    stream = stream or sys.stderr
    return LiveDisplay(stream) if _is_terminal(stream) else LineLog(stream)


def as_listener(callback: Callable[..., Any]) -> Listener:
    """Adapt a user's progress callback: ``callback(event, snapshot)`` is used as is; a callback that takes one
    argument receives the snapshot only (with the event under ``snapshot["event"]``)."""
    try:
        params = [p for p in inspect.signature(callback).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return callback
    takes_two = any(p.kind == p.VAR_POSITIONAL for p in params) or len(params) >= 2
    if takes_two:
        return callback

    def snapshot_only(event: dict[str, Any], snap: dict[str, Any]) -> None:
        callback(dict(snap, event=event))

    return snapshot_only
