"""RunPodBackend: trials run as jobs on a RunPod serverless endpoint, through its REST API, with ``requests``.

    POST {base}/run            {"input": TrialJob, "policy": {"executionTimeout": ms, "ttl": ms}} -> {"id", "status"}
    GET  {base}/status/{id}    IN_QUEUE | IN_PROGRESS (output: the worker's latest progress) | COMPLETED | FAILED |
                               CANCELLED | TIMED_OUT
    POST {base}/cancel/{id}    on the trial's time limit, a CancelToken (prune, Ctrl-C) and close()
    GET  {base}/health         at start (an endpoint that does not answer raises BackendUnavailable)

``base`` is ``runpod_endpoint_url`` or ``https://api.runpod.ai/v2/<runpod_endpoint_id>``; the key is RUNPOD_API_KEY
from the environment or ``.env``, sent as ``Authorization: Bearer`` and never logged, saved or put in a message.

Polling adapts to what the worker says: fast right after submission, backing off to ``poll_max_s`` while nothing
changes, and fast again around the time the worker's progress (epoch timing, ``eta_s``) says the trial will end, so a
finished trial is noticed within about ``poll_min_s``. Requests share per-route token buckets that stay under
RunPod's rate limits; 429, 5xx and connection errors are retried with jittered exponential backoff.

Outcomes: COMPLETED -> the worker's TrialResult (checked to belong to this trial); a failed trial is a result too.
FAILED because the worker rejected the job or its handler raised -> a failed TrialResult with the worker's text.
TIMED_OUT while running -> failed (execution timeout), CANCELLED by someone else -> failed, both with the text.
Infrastructure failures (the endpoint stops answering, a worker is lost, the job expires in the queue) are retried
``resubmits`` times and then raised as :class:`BackendUnavailable` so :class:`~hpo.backends.fallback.FallbackBackend`
can run the trial locally.

Dispatch: ``queue_ahead`` asks the orchestrator to keep that many trials submitted beyond ``concurrent_workers``; they
wait in the endpoint's queue, and a worker whose job is about to end takes the next one (the handler's concurrency
modifier) so it starts the moment the current one ends. A trial's time limit (``timeout_s``) counts from when the job
is seen running, not queued. A remote trial's model file is not brought back (``save_model_to`` is not honoured).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import BackendUnavailable
from ..protocol import EpochReport, TrialJob, TrialResult
from ._base import Backend, CancelToken, EpochHandler

__all__ = ["RunPodBackend", "make_runpod_backend", "endpoint_base_url", "default_queue_ahead", "RUNPOD_API_BASE"]

log = logging.getLogger(__name__)

# Retry jitter draws from a private generator: a library must not advance the global ``random`` state, which Keras
# seeds weight initializers from (a retrying client thread made in-process trainings irreproducible).
_JITTER = random.Random()

RUNPOD_API_BASE = "https://api.runpod.ai/v2"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
#: Requests per second each route may use: under RunPod's limits (/run 1000, /status 2000, /cancel 100 per 10 s).
RATES = {"run": (80.0, 20), "status": (150.0, 30), "stream": (150.0, 30), "cancel": (8.0, 8), "health": (5.0, 5)}


class _TokenBucket:
    """Thread-safe: ``take()`` blocks until a request may go out."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.capacity = rate, float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                wait = (1.0 - self.tokens) / self.rate
            time.sleep(wait)


class _HTTPFailure(Exception):
    """A request that failed for good: ``status`` is the HTTP status (None: no answer). No secrets in the text."""

    def __init__(self, message: str, status: int | None = None, transient: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class _InfraFailure(Exception):
    """The remote side failed the trial for reasons that are not the trial's (retry elsewhere)."""


@dataclass
class _Attempt:
    """What the client knows about one remote job while it runs."""

    job_id: str
    submitted: float  # monotonic
    started: float | None = None  # monotonic, when first seen IN_PROGRESS
    worker: str | None = None
    last_change: float = 0.0
    last_status: str = ""
    progress_key: Any = None
    expected_end: float | None = None
    training_done: bool = False
    polls: int = 0
    reports: dict[int, EpochReport] = field(default_factory=dict)


def endpoint_base_url(endpoint_url: str | None, endpoint_id: str | None) -> str:
    """``runpod_endpoint_url`` as given (without a trailing slash), else the RunPod API URL of the endpoint id."""
    if endpoint_url:
        return endpoint_url.rstrip("/")
    if endpoint_id:
        return f"{RUNPOD_API_BASE}/{endpoint_id}"
    raise BackendUnavailable("no RunPod endpoint: give runpod_endpoint_id (or RUNPOD_ENDPOINT_ID) or "
                             "runpod_endpoint_url")


def _short(text: Any, limit: int = 300) -> str:
    text = str(text).strip().replace("\n", " | ")
    return text if len(text) <= limit else text[:limit] + "…"


class RunPodBackend(Backend):
    """Runs each trial as one job on a RunPod serverless endpoint. Thread-safe: ``run`` is called from many threads."""

    name = "runpod"

    def __init__(self, base_url: str, api_key: str | None = None, *, execution_timeout_s: float = 3600.0,
                 queue_ttl_s: float = 6 * 3600.0, poll_min_s: float = 0.1, poll_max_s: float = 1.5,
                 request_timeout_s: float = 20.0, attempts: int = 6, backoff_s: float = 0.25,
                 backoff_max_s: float = 8.0, resubmits: int = 1, lost_contact_s: float = 90.0,
                 end_window_s: float = 0.75, queue_ahead: int = 0, record_timeline: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key or None
        self.execution_timeout_s = execution_timeout_s
        self.queue_ttl_s = queue_ttl_s
        self.poll_min_s = poll_min_s
        self.poll_max_s = max(poll_min_s, poll_max_s)
        self.request_timeout_s = request_timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.resubmits = max(0, resubmits)
        self.lost_contact_s = lost_contact_s
        self.end_window_s = end_window_s
        #: Trials the orchestrator keeps submitted beyond its concurrent_workers, so a worker that is about to
        #: finish finds its next job already queued (the worker asks for it just before its current one ends).
        self.queue_ahead = max(0, int(queue_ahead))
        self._buckets = {route: _TokenBucket(rate, burst) for route, (rate, burst) in RATES.items()}
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._lock = threading.Lock()
        self._inflight: dict[str, str] = {}  # remote job id -> trial id
        self._closed = False
        self.record_timeline = record_timeline
        self.timeline: list[dict[str, Any]] = []  # per remote job: submitted_at / noticed_at (time.time()), ...
        self.retried_requests: collections.Counter[str] = collections.Counter()
        parts = urlsplit(self.base_url)
        self._is_runpod_cloud = parts.hostname is not None and parts.hostname.endswith("runpod.ai")

    def __repr__(self) -> str:  # never the key
        return f"RunPodBackend({self.base_url!r}, api_key={'set' if self._key else 'unset'})"

    # -- HTTP -------------------------------------------------------------------------------------------------
    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            from .. import __version__

            session = requests.Session()
            session.headers.update({"Content-Type": "application/json", "Accept": "application/json",
                                    "User-Agent": f"hpo/{__version__}"})
            if self._key:
                session.headers["Authorization"] = f"Bearer {self._key}"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _request(self, method: str, path: str, route: str, *, body: Any = None, attempts: int | None = None,
                 timeout: float | None = None) -> Any:
        """One API call with retries: 429 / 5xx / connection errors back off and retry; other 4xx fail at once."""
        import requests

        url = f"{self.base_url}/{path}"
        data = None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False)
        tries = attempts or self.attempts
        last = ""
        status: int | None = None
        for attempt in range(tries):
            if attempt:
                with self._lock:
                    self.retried_requests[route] += 1
            self._buckets[route].take()
            retry_after: float | None = None
            try:
                response = self._session().request(method, url, data=data,
                                                   timeout=(5.0, timeout or self.request_timeout_s))
            except requests.RequestException as exc:  # connection refused, reset, timeout: the text has no headers
                status, last = None, f"{type(exc).__name__}: {_short(exc, 200)}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return response.json()
                    except ValueError:
                        last = f"HTTP {status} with a body that is not JSON: {_short(response.text, 120)}"
                elif status == 429 or status >= 500:
                    last = f"HTTP {status}: {_short(response.text, 200)}"
                    try:
                        retry_after = float(response.headers.get("Retry-After", ""))
                    except ValueError:
                        retry_after = None
                else:
                    hint = " (check RUNPOD_API_KEY)" if status in (401, 403) else ""
                    raise _HTTPFailure(f"{method} {path}: HTTP {status}{hint}: {_short(response.text, 300)}",
                                       status, transient=False)
            if attempt + 1 < tries:
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt) * _JITTER.uniform(0.5, 1.5)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.backoff_max_s))
                log.debug("%s %s failed (%s); retry %d in %.2f s", method, path, last, attempt + 1, delay)
                time.sleep(delay)
        raise _HTTPFailure(f"{method} {path}: {last} (after {tries} attempts)", status, transient=True)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def health(self, *, attempts: int | None = None) -> dict[str, Any]:
        """The endpoint's /health answer; BackendUnavailable with the reason if it cannot be had."""
        if self._is_runpod_cloud and not self._key:
            raise BackendUnavailable("RUNPOD_API_KEY is not set (put it in the environment or in .env)")
        try:
            answer = self._request("GET", "health", "health", attempts=attempts or 3, timeout=10.0)
        except _HTTPFailure as exc:
            if exc.transient:
                raise BackendUnavailable(f"RunPod endpoint {self.base_url} is not reachable: {exc}") from None
            raise BackendUnavailable(f"RunPod endpoint {self.base_url} refused the health check: {exc}") from None
        if not isinstance(answer, dict):
            raise BackendUnavailable(f"RunPod endpoint {self.base_url} answered /health with "
                                     f"{_short(answer, 100)}")
        return answer

    def start(self) -> None:
        answer = self.health()
        workers = answer.get("workers") or {}
        log.info("RunPod endpoint %s is up (workers: %s)", self.base_url,
                 ", ".join(f"{k} {v}" for k, v in workers.items()) or "none reported")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            leftover = list(self._inflight)
        for job_id in leftover:  # e.g. Ctrl-C while a thread was between calls: nothing keeps running remotely
            self._cancel(job_id)
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            try:
                session.close()
            except Exception:  # noqa: BLE001
                pass

    # -- trials -----------------------------------------------------------------------------------------------
    def run(self, job: TrialJob, *, on_epoch: EpochHandler | None = None, cancel: CancelToken | None = None,
            timeout_s: float | None = None, save_model_to: str | None = None) -> TrialResult:
        if self._closed:
            raise BackendUnavailable("the RunPod backend is closed")
        if save_model_to:
            log.debug("trial %s runs remotely: its model file is not saved locally", job.trial_id)
        forwarded = {"epoch": 0}
        failures: list[str] = []
        for attempt in range(self.resubmits + 1):
            try:
                return self._run_once(job, on_epoch, cancel, timeout_s, forwarded)
            except _InfraFailure as exc:
                failures.append(str(exc))
                if cancel is not None and cancel.cancelled:
                    return TrialResult(trial_id=job.trial_id, status="stopped", error=cancel.reason or "cancelled")
                if attempt < self.resubmits:
                    log.warning("trial %s: %s; submitting it again", job.trial_id, exc)
        raise BackendUnavailable("; then ".join(failures))

    def _submit(self, job: TrialJob, timeout_s: float | None) -> str:
        exec_s = self.execution_timeout_s
        if timeout_s is not None:  # the client cancels at the time limit; the endpoint's timeout is the backstop
            exec_s = min(exec_s, timeout_s + 60.0)
        body = {"input": job.to_dict(),
                "policy": {"executionTimeout": int(exec_s * 1000), "ttl": int((exec_s + self.queue_ttl_s) * 1000)}}
        try:
            answer = self._request("POST", "run", "run", body=body)
        except _HTTPFailure as exc:
            raise BackendUnavailable(f"could not submit trial {job.trial_id} to {self.base_url}: {exc}") from None
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise BackendUnavailable(f"{self.base_url}/run answered without a job id: {_short(answer, 200)}")
        return job_id

    def _run_once(self, job: TrialJob, on_epoch: EpochHandler | None, cancel: CancelToken | None,
                  timeout_s: float | None, forwarded: dict[str, int]) -> TrialResult:
        if cancel is not None and cancel.cancelled:
            return TrialResult(trial_id=job.trial_id, status="stopped", error=cancel.reason or "cancelled")
        job_id = self._submit(job, timeout_s)
        submitted_wall = time.time()
        with self._lock:
            self._inflight[job_id] = job.trial_id
        attempt = _Attempt(job_id=job_id, submitted=time.monotonic(), last_change=time.monotonic())
        record: dict[str, Any] = {"trial_id": job.trial_id, "job_id": job_id, "thread": threading.get_ident(),
                                  "submitted_at": submitted_wall}
        try:
            result = self._follow(job, attempt, on_epoch, cancel, timeout_s, forwarded)
        finally:
            with self._lock:
                self._inflight.pop(job_id, None)
        record.update(noticed_at=time.time(), status=result.status, worker=attempt.worker, polls=attempt.polls)
        if self.record_timeline:
            with self._lock:
                self.timeline.append(record)
        return result

    def _follow(self, job: TrialJob, a: _Attempt, on_epoch: EpochHandler | None, cancel: CancelToken | None,
                timeout_s: float | None, forwarded: dict[str, int]) -> TrialResult:
        last_contact = time.monotonic()
        wait = self.poll_min_s
        while True:
            if cancel is not None:
                cancel.wait(wait)  # wakes at once on a cancel
            else:
                time.sleep(wait)
            now = time.monotonic()
            if cancel is not None and cancel.cancelled:
                self._cancel(a.job_id)
                return self._partial(job, a, "stopped", cancel.reason or "cancelled")
            if timeout_s is not None and a.started is not None and now - a.started > timeout_s:
                self._cancel(a.job_id)
                return self._partial(job, a, "failed", f"the trial ran past its time limit of {timeout_s:g} s; "
                                                      f"remote job {a.job_id} was cancelled")
            try:
                status = self._request("GET", f"status/{a.job_id}", "status", attempts=3)
            except _HTTPFailure as exc:
                if not exc.transient:
                    self._cancel(a.job_id)
                    raise _InfraFailure(f"remote job {a.job_id}: {exc}") from None
                if time.monotonic() - last_contact > self.lost_contact_s:
                    self._cancel(a.job_id)
                    raise _InfraFailure(f"lost contact with {self.base_url} for more than "
                                        f"{self.lost_contact_s:g} s ({exc})") from None
                wait = self.poll_max_s
                continue
            last_contact = time.monotonic()
            a.polls += 1
            if not isinstance(status, dict):
                wait = self.poll_max_s
                continue
            state = str(status.get("status", ""))
            if status.get("workerId"):
                a.worker = str(status["workerId"])
            if state != a.last_status:
                a.last_status, a.last_change = state, time.monotonic()
            if state == "IN_PROGRESS" and a.started is None:
                a.started = time.monotonic()
            output = status.get("output")
            if state == "IN_PROGRESS" and isinstance(output, dict):
                self._progress(job, a, output.get("hpo_progress"), on_epoch, forwarded, status.get("executionTime"))
            if state in TERMINAL:
                return self._finished(job, a, status, on_epoch, forwarded)
            wait = self._next_wait(a)
            if timeout_s is not None and a.started is not None:  # wake up for the time limit, not a poll later
                wait = min(wait, max(0.01, a.started + timeout_s - time.monotonic()))

    def _next_wait(self, a: _Attempt) -> float:
        """Seconds to the next /status poll: fast around the expected end, slow while nothing is expected."""
        now = time.monotonic()
        lo, hi = self.poll_min_s, self.poll_max_s
        if a.last_status == "IN_PROGRESS" and a.expected_end is not None:
            remaining = a.expected_end - now
            if remaining > self.end_window_s:
                return min(hi, remaining - self.end_window_s)  # wake up when the end window opens
            if remaining > -2.0:
                return lo  # the trial should be ending: notice it within lo
            return min(hi, lo + 0.15 * (-remaining - 2.0))  # a long evaluation: back off again
        return min(hi, lo * 1.5 ** min(a.polls, 20))

    def _progress(self, job: TrialJob, a: _Attempt, progress: Any, on_epoch: EpochHandler | None,
                  forwarded: dict[str, int], execution_ms: Any = None) -> None:
        if not isinstance(progress, dict) or progress.get("trial_id") != job.trial_id:
            return  # not ours (never credit another trial's numbers)
        epochs = progress.get("epochs") or []
        elapsed = progress.get("elapsed_s")
        key = (len(epochs), elapsed)
        if key != a.progress_key:
            a.progress_key = key
            a.last_change = time.monotonic()
            eta = progress.get("eta_s")
            if isinstance(eta, (int, float)) and math.isfinite(eta):
                # The worker measured eta_s when it posted the update; the endpoint's executionTime (now) minus the
                # worker's elapsed_s (then) says how long ago that was.
                stale = 0.0
                if isinstance(execution_ms, (int, float)) and isinstance(elapsed, (int, float)):
                    stale = min(max(0.0, execution_ms / 1000.0 - float(elapsed)), self.poll_max_s + 1.5)
                a.expected_end = time.monotonic() + float(eta) - stale
            else:
                a.expected_end = None
            a.training_done = bool(progress.get("training_done"))
        for item in epochs:
            try:
                report = EpochReport.from_dict(item)
            except Exception:  # noqa: BLE001 - a malformed report is skipped, not fatal
                continue
            if report.trial_id == job.trial_id:
                a.reports.setdefault(report.epoch, report)
        self._forward(a, on_epoch, forwarded)

    @staticmethod
    def _forward(a: _Attempt, on_epoch: EpochHandler | None, forwarded: dict[str, int]) -> None:
        while forwarded["epoch"] + 1 in a.reports:
            forwarded["epoch"] += 1
            if on_epoch is not None:
                try:
                    on_epoch(a.reports[forwarded["epoch"]])
                except Exception:  # noqa: BLE001 - a faulty listener must not lose the trial
                    log.exception("epoch listener failed")

    def _finished(self, job: TrialJob, a: _Attempt, status: dict[str, Any], on_epoch: EpochHandler | None,
                  forwarded: dict[str, int]) -> TrialResult:
        state = status["status"]
        output = status.get("output")
        error = status.get("error")
        where = f"runpod:{a.worker}" if a.worker else "runpod"
        if state == "COMPLETED":
            raw = output.get("trial_result") if isinstance(output, dict) else None
            if raw is None:
                return TrialResult(trial_id=job.trial_id, status="failed", executed_on=where,
                                   error=f"remote job {a.job_id} completed without a trial result: "
                                         f"{_short(output, 300)}")
            try:
                result = TrialResult.from_dict(raw)
            except Exception as exc:  # noqa: BLE001
                return TrialResult(trial_id=job.trial_id, status="failed", executed_on=where,
                                   error=f"remote job {a.job_id} returned an invalid trial result: {exc}")
            if result.trial_id != job.trial_id:
                return TrialResult(trial_id=job.trial_id, status="failed", executed_on=where,
                                   error=f"remote job {a.job_id} answered for trial {result.trial_id!r}, not "
                                         f"{job.trial_id!r}; its numbers were discarded")
            for i in range(len(result.history.get("val_accuracy") or result.history.get("loss") or [])):
                metrics = {k: (v[i] if i < len(v) else None) for k, v in result.history.items()}
                a.reports.setdefault(i + 1, EpochReport(trial_id=job.trial_id, epoch=i + 1, metrics=metrics))
            self._forward(a, on_epoch, forwarded)
            details = dict(result.details)
            details["runpod"] = {"job_id": a.job_id, "worker": a.worker, "delay_ms": status.get("delayTime"),
                                 "execution_ms": status.get("executionTime")}
            return result.replace(executed_on=result.executed_on or where, details=details)
        text = error if isinstance(error, str) else (json.dumps(error) if error is not None else "")
        kind = output.get("error_kind") if isinstance(output, dict) else None
        if state == "FAILED":
            if kind in ("invalid_input", "worker_error"):
                return self._partial(job, a, "failed", f"the worker rejected the trial: {text}")
            crashed = _handler_exception(text)
            if crashed is not None:
                return self._partial(job, a, "failed", f"the worker's handler raised {crashed}")
            raise _InfraFailure(f"remote job {a.job_id} failed on {where}: {text or 'no error text'}")
        if state == "TIMED_OUT":
            if a.started is None and not status.get("executionTime"):
                raise _InfraFailure(f"remote job {a.job_id} was never picked up by a worker: "
                                    f"{text or 'it expired in the queue'}")
            return self._partial(job, a, "failed", f"remote job {a.job_id} timed out on {where}: "
                                                    f"{text or 'execution timeout exceeded'}")
        return self._partial(job, a, "failed", f"remote job {a.job_id} was cancelled on the endpoint (not by this "
                                                f"run){': ' + text if text else ''}")

    def _partial(self, job: TrialJob, a: _Attempt, status: str, error: str) -> TrialResult:
        """A trial that ended without a worker's result: what its epochs told us, and why."""
        history: dict[str, list[float | None]] = {}
        epochs = sorted(a.reports)
        for n in epochs:
            for key, value in a.reports[n].metrics.items():
                history.setdefault(key, []).append(value)
        val = [a.reports[n].metrics.get("val_accuracy") for n in epochs]
        best = max((i for i, v in enumerate(val) if v is not None), key=lambda i: val[i], default=None)
        return TrialResult(trial_id=job.trial_id, status=status, history=history, epochs_run=len(epochs),
                           best_epoch=None if best is None else epochs[best],
                           val_metrics={"accuracy": val[best]} if best is not None else {},
                           executed_on=f"runpod:{a.worker}" if a.worker else "runpod",
                           train_seconds=time.monotonic() - (a.started or a.submitted), error=error,
                           details={"runpod": {"job_id": a.job_id, "worker": a.worker}})

    def _cancel(self, job_id: str) -> None:
        try:
            self._request("POST", f"cancel/{job_id}", "cancel", attempts=4, timeout=10.0)
        except _HTTPFailure as exc:
            log.warning("could not cancel remote job %s: %s", job_id, exc)

    def probe(self) -> str | None:
        """None if the endpoint answers /health now, else why not (one quick try)."""
        try:
            self.health(attempts=1)
        except BackendUnavailable as exc:
            return str(exc)
        return None


def _handler_exception(text: str) -> str | None:
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


def make_runpod_backend(config: Any, local_fallback: Backend | None = None, *, api_key: str | None = None,
                        env_file: str | None = None) -> Backend:
    """The backend for ``use_runpod_service=true``: RunPod, falling back to ``local_fallback`` (None: no fallback)."""
    from ..config import runpod_api_key
    from .fallback import FallbackBackend

    key = api_key if api_key is not None else runpod_api_key(env_file)
    base = endpoint_base_url(config.runpod_endpoint_url, config.runpod_endpoint_id)
    remote = RunPodBackend(base, key, execution_timeout_s=config.runpod_timeout_s,
                           queue_ahead=default_queue_ahead(config.concurrent_workers))
    return FallbackBackend(remote, local_fallback)


def default_queue_ahead(workers: int) -> int:
    """Trials kept queued beyond ``workers`` running ones: enough that workers finishing within the same second or
    two each find a job waiting (1 for a few workers, about a fifth more for many)."""
    return 1 + max(0, workers) // 5

