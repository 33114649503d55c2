"""FallbackBackend: a remote backend (RunPod) with a local backend behind it.

- The endpoint does not answer at start: every trial runs locally, and a health probe every ``probe_interval_s``
  sends trials back to the endpoint once it answers.
- A trial's remote execution fails for infrastructure reasons after the remote backend's own retries, or passes one
  of its client-side bounds (RunPod: nobody took the job within ``runpod_queue_timeout_s``, unusable answers, rate
  limiting beyond its budget; the remote job is cancelled first) -- :class:`~hpo.exceptions.BackendUnavailable`:
  that trial runs locally.
- ``failure_threshold`` such failures in a row: further trials go local until a health probe succeeds.

A trial that ran locally carries ``details["fallback_reason"]`` (the orchestrator records it in the trial's user
attributes and in trials.csv); :attr:`FallbackBackend.notes` summarizes what happened for the run's summary. Without a
local backend the remote errors propagate: the run stops at start with a clear BackendUnavailable, and a trial whose
remote execution fails is a failed trial that says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..exceptions import BackendUnavailable
from ..protocol import EpochReport, TrialJob, TrialResult
from ._base import Backend, CancelToken, EpochHandler, started_late

__all__ = ["FallbackBackend"]

log = logging.getLogger(__name__)


class _Deduplicated:
    """Forwards each epoch once per trial, across a remote attempt, a resubmission and a local rerun."""

    def __init__(self, on_epoch: EpochHandler | None) -> None:
        self.on_epoch = on_epoch
        self.last = 0

    def __call__(self, report: EpochReport) -> None:
        if report.epoch <= self.last:
            return
        self.last = report.epoch
        if self.on_epoch is not None:
            self.on_epoch(report)


class FallbackBackend(Backend):
    """Runs trials on ``remote``; falls back to ``local`` (None: no fallback) as described in the module doc."""

    def __init__(self, remote: Backend, local: Backend | None = None, *, failure_threshold: int = 3,
                 probe_interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.remote = remote
        self.local = local
        self.name = remote.name
        self.failure_threshold = max(1, failure_threshold)
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._local_lock = threading.Lock()
        self._local_started = False
        self._down_reason: str | None = None
        self._next_probe = 0.0
        self._probing = False
        self._consecutive = 0
        self._events: list[str] = []
        self._started = False
        self._closed = False
        self.local_trials = 0
        self.remote_trials = 0

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def queue_ahead(self) -> int:
        """Extra trials the dispatcher keeps submitted: the remote backend's (see RunPodBackend.queue_ahead)."""
        return self.remote.queue_ahead

    @property
    def remote_down(self) -> str | None:
        """Why trials currently go local (None: they go to the remote backend)."""
        return self._down_reason

    @property
    def notes(self) -> list[str]:
        notes = list(self._events)
        if self.local_trials:
            notes.append(f"{self.local_trials} trial(s) ran locally instead of on {self.remote.name} "
                         "(trials.csv column fallback_reason says why)")
        return notes

    def _trip(self, reason: str) -> None:
        with self._lock:
            if self._down_reason is None:
                self._down_reason = reason
                self._next_probe = self._clock() + self.probe_interval_s
                self._events.append(f"{reason}; trials run locally until the endpoint answers a health probe "
                                    f"(every {self.probe_interval_s:g} s)")
                log.warning("%s; running trials locally", reason)

    def _route(self) -> str | None:
        """None: send the trial to the remote backend; otherwise the reason it runs locally."""
        with self._lock:
            if self._down_reason is None:
                return None
            if self._probing or self._clock() < self._next_probe:
                return self._down_reason
            self._probing = True
        try:
            why = self.remote.probe()
        except Exception as exc:  # noqa: BLE001 - a probe that breaks its contract (never raises) says "down"
            why = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._probing = False
            if why is not None:
                self._next_probe = self._clock() + self.probe_interval_s
                return self._down_reason
            self._events.append("the endpoint answered a health probe again; trials went back to it")
            log.warning("the RunPod endpoint answers again; trials go back to it")
            self._down_reason = None
            self._consecutive = 0
            return None

    def _remote_failed(self, error: str) -> None:
        with self._lock:
            self._consecutive += 1
            count = self._consecutive
        if self.local is not None and count >= self.failure_threshold:
            self._trip(f"{count} remote trials in a row failed for infrastructure reasons (last: {error})")

    def _local_backend(self) -> Backend:
        assert self.local is not None
        with self._local_lock:  # started on first use: no local worker processes unless a trial needs them
            if not self._local_started:
                self.local.start()
                self._local_started = True
        return self.local

    # -- Backend ------------------------------------------------------------------------------------------------
    def probe(self) -> str | None:
        """None while trials can run somewhere: on the remote backend, or locally when it is down."""
        if self._closed:
            return "the backend is closed"
        if self.local is not None:
            return self.local.probe()
        return self.remote.probe()

    def start(self) -> None:
        if self._closed:
            raise BackendUnavailable("the backend is closed")
        if self._started:
            return
        try:
            self.remote.start()
        except BackendUnavailable as exc:
            if self.local is None:
                raise
            self._trip(f"the {self.remote.name} endpoint was unreachable at start ({exc})")
        self._started = True

    def run(self, job: TrialJob, *, on_epoch: EpochHandler | None = None, cancel: CancelToken | None = None,
            timeout_s: float | None = None, save_model_to: str | None = None) -> TrialResult:
        if self._closed:
            raise BackendUnavailable("the backend is closed")
        called, forward = time.monotonic(), _Deduplicated(on_epoch)
        reason = self._route()
        if reason is None:
            try:
                result = self.remote.run(job, on_epoch=forward, cancel=cancel, timeout_s=timeout_s,
                                         save_model_to=save_model_to)
            except BackendUnavailable as exc:
                self._remote_failed(str(exc))
                if self.local is None:
                    raise
                if cancel is not None and cancel.cancelled:
                    return TrialResult(trial_id=job.trial_id, status="stopped", error=cancel.reason or "cancelled")
                reason = f"remote execution failed: {exc}"
                log.warning("trial %s runs locally: %s", job.trial_id, reason)
            else:
                with self._lock:
                    self._consecutive = 0
                    self.remote_trials += 1
                return result
        if self.local is None:  # pragma: no cover - _route only answers a reason when there is a local backend
            raise BackendUnavailable(reason)
        result = self._local_backend().run(started_late(job, called), on_epoch=forward, cancel=cancel,
                                           timeout_s=timeout_s, save_model_to=save_model_to)
        with self._lock:
            self.local_trials += 1
        return result.replace(details={**result.details, "fallback_reason": reason})

    def close(self) -> None:
        """Closes both backends (a second call does nothing new); their running trials end ``stopped``."""
        self._closed = True
        try:
            self.remote.close()
        finally:
            if self.local is not None:
                self.local.close()
