"""What RunPodBackend knows about one remote job while it runs, and the pure functions that read the endpoint's
answers about it: /status validation, progress (epoch reports) taken from the worker's updates, the poll schedule,
the result of a job that ended without a usable worker result, and the SDK's handler-exception text."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..protocol import EpochReport, TrialJob, TrialResult
from ._base import EpochHandler
from ._checks import check_epoch_metrics
from ._http import short

__all__ = ["Attempt", "TERMINAL", "KNOWN", "status_problem", "take_progress", "forward", "next_wait",
           "partial_result", "handler_exception"]

log = logging.getLogger("hpo.backends.runpod")

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
KNOWN = ("IN_QUEUE", "IN_PROGRESS", *TERMINAL)


@dataclass
class Attempt:
    """What the client knows about one remote job while it runs."""

    job_id: str
    submitted: float  # monotonic
    queued_since: float | None = None  # monotonic, while the job is seen IN_QUEUE
    started: float | None = None  # monotonic, when first seen IN_PROGRESS
    worker: str | None = None
    last_change: float = 0.0
    last_status: str = ""
    progress_key: Any = None
    expected_end: float | None = None
    training_done: bool = False
    polls: int = 0
    bad_answers: int = 0  # unusable /status answers in a row
    reports: dict[int, EpochReport] = field(default_factory=dict)


def status_problem(doc: Any, job_id: str) -> str | None:
    """Why a /status answer cannot be used (None: it can)."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__} instead of an object: {short(doc, 80)}"
    state = doc.get("status")
    if not isinstance(state, str):
        return f"no status in {short(doc, 120)}"
    if state not in KNOWN:
        return f"unknown status {short(state, 40)!r}"
    if doc.get("id") not in (None, job_id):
        return f"an answer for job {short(doc.get('id'), 60)!r}"
    return None


def next_wait(a: Attempt, lo: float, hi: float, end_window_s: float) -> float:
    """Seconds to the next /status poll: fast around the expected end, slow while nothing is expected."""
    now = time.monotonic()
    if a.last_status == "IN_PROGRESS" and a.expected_end is not None:
        remaining = a.expected_end - now
        if remaining > end_window_s:
            return min(hi, remaining - end_window_s)  # wake up when the end window opens
        if remaining > -2.0:
            return lo  # the trial should be ending: notice it within lo
        return min(hi, lo + 0.15 * (-remaining - 2.0))  # a long evaluation: back off again
    return min(hi, lo * 1.5 ** min(a.polls, 20))


def take_progress(job: TrialJob, a: Attempt, progress: Any, on_epoch: EpochHandler | None,
                  forwarded: dict[str, int], execution_ms: Any, *, poll_max_s: float, longest_s: float) -> None:
    """Epoch reports and the expected end from a worker's progress update (``output.hpo_progress``). Reports that
    are malformed, out of range, another trial's or past ``job.max_epochs`` are skipped."""
    if not isinstance(progress, dict) or progress.get("trial_id") != job.trial_id:
        return  # not ours (never credit another trial's numbers)
    epochs = progress.get("epochs") if isinstance(progress.get("epochs"), list) else []
    elapsed = progress.get("elapsed_s")
    key = (len(epochs), elapsed if isinstance(elapsed, (int, float)) else None)
    if key != a.progress_key:
        a.progress_key = key
        a.last_change = time.monotonic()
        eta = progress.get("eta_s")
        if isinstance(eta, (int, float)) and math.isfinite(eta):
            # The worker measured eta_s when it posted the update; the endpoint's executionTime (now) minus the
            # worker's elapsed_s (then) says how long ago that was.
            stale = 0.0
            if isinstance(execution_ms, (int, float)) and isinstance(elapsed, (int, float)):
                stale = min(max(0.0, execution_ms / 1000.0 - float(elapsed)), poll_max_s + 1.5)
            a.expected_end = time.monotonic() + min(float(eta), longest_s) - stale
        else:
            a.expected_end = None
        a.training_done = bool(progress.get("training_done"))
    for item in epochs:
        try:
            report = EpochReport.from_dict(item)
            check_epoch_metrics(report.metrics, f"epoch {report.epoch}")
        except Exception as exc:  # noqa: BLE001 - a malformed or out-of-range report is skipped, not believed
            log.debug("trial %s: epoch report skipped: %s", job.trial_id, short(exc, 200))
            continue
        if report.trial_id == job.trial_id and 1 <= report.epoch <= job.max_epochs:
            a.reports.setdefault(report.epoch, report)
    forward(a, on_epoch, forwarded)


def forward(a: Attempt, on_epoch: EpochHandler | None, forwarded: dict[str, int]) -> None:
    """Hand on the epochs not yet forwarded, in order, each once."""
    while forwarded["epoch"] + 1 in a.reports:
        forwarded["epoch"] += 1
        if on_epoch is not None:
            try:
                on_epoch(a.reports[forwarded["epoch"]])
            except Exception:  # noqa: BLE001 - a faulty listener must not lose the trial
                log.exception("epoch listener failed")


def partial_result(job: TrialJob, a: Attempt, status: str, error: str) -> TrialResult:
    """A trial that ended without a usable worker result: what its epochs told us, and why."""
    history: dict[str, list[float | None]] = {}
    epochs = sorted(a.reports)
    for n in epochs:
        for key, value in a.reports[n].metrics.items():
            history.setdefault(key, []).append(value)
    val = [a.reports[n].metrics.get("val_accuracy") for n in epochs]
    best = max((i for i, v in enumerate(val) if v is not None), key=lambda i: val[i], default=None)
    return TrialResult(trial_id=job.trial_id, status=status, history=history, epochs_run=len(epochs),  # type: ignore
                       best_epoch=None if best is None else epochs[best],
                       val_metrics={"accuracy": val[best]} if best is not None else {},
                       executed_on=f"runpod:{a.worker}" if a.worker else "runpod",
                       train_seconds=time.monotonic() - (a.started or a.submitted), error=error,
                       details={"runpod": {"job_id": a.job_id, "worker": a.worker}})


def handler_exception(text: str) -> str | None:
    """The SDK reports an exception in a handler as JSON with error_type / error_message; summarize it."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict) or "error_message" not in data:
        return None
    kind = str(data.get("error_type", "")).replace("<class '", "").replace("'>", "")
    tail = [line for line in str(data.get("error_traceback", "")).strip().splitlines() if line.strip()][-3:]
    return f"{kind}: {data.get('error_message')}" + (f" ({' | '.join(tail)})" if tail else "")
