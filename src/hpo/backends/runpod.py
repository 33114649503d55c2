"""RunPodBackend: trials run as jobs on a RunPod serverless endpoint, through its REST API, with ``requests``.

    POST {base}/run            {"input": TrialJob, "policy": {"executionTimeout": ms, "ttl": ms}} -> {"id", "status"}
    GET  {base}/status/{id}    IN_QUEUE | IN_PROGRESS (output: the worker's latest progress) | COMPLETED | FAILED |
                               CANCELLED | TIMED_OUT
    POST {base}/cancel/{id}    on the trial's time limit, a CancelToken (prune, Ctrl-C), a client-side deadline, close()
    GET  {base}/health         at start (an endpoint that does not answer raises BackendUnavailable)

``base`` is ``runpod_endpoint_url`` or ``https://api.runpod.ai/v2/<runpod_endpoint_id>``; the key is RUNPOD_API_KEY
from the environment or ``.env``, sent as ``Authorization: Bearer`` to that endpoint only (redirects are not followed,
job ids are quoted into its paths; see :mod:`hpo.backends._http`) and never logged, saved or put in a message.

Polling adapts to what the worker says: fast right after submission, backing off to ``poll_max_s`` while nothing
changes, and fast again around the time the worker's progress (epoch timing, ``eta_s``) says the trial will end, so a
finished trial is noticed within about ``poll_min_s``. Requests share per-route token buckets that stay under
RunPod's rate limits; 5xx and connection errors are retried with jittered exponential backoff; 429 (and 503 with
``Retry-After``) wait as asked, up to ``retry_after_max_s`` a time, without spending an attempt.

Every wait ends on the client side, and wakes at once on the trial's CancelToken:
- a job still IN_QUEUE after ``queue_timeout_s`` is cancelled and the trial raises BackendUnavailable (the
  FallbackBackend runs it locally, or it fails with that reason);
- ``max_bad_answers`` unusable /status answers in a row (not JSON, not an object, no or an unknown status, another
  job's id) cancel the job and raise BackendUnavailable with the last one;
- the endpoint not answering for ``lost_contact_s``, or rate limiting one request for longer than its budget, too.

Outcomes: COMPLETED -> the worker's TrialResult, believed only if it belongs to this trial and its numbers are in range
(:func:`hpo.backends._checks.check_result`; else a failed trial naming the bad field). FAILED because the worker
rejected the job or its handler raised -> a failed TrialResult with the worker's text. TIMED_OUT while running ->
failed (execution timeout), CANCELLED by someone else -> failed, both with the text. Infrastructure failures (a worker
is lost, the job expires in the endpoint's queue) are resubmitted ``resubmits`` times and then raised as
:class:`BackendUnavailable` so :class:`~hpo.backends.fallback.FallbackBackend` can run the trial locally.

Dispatch: ``queue_ahead`` asks the dispatcher to keep that many trials submitted beyond ``concurrent_workers``; they
wait in the endpoint's queue, so a worker that finishes takes its next job from there instead of waiting for the
dispatcher to notice and submit one. A trial's time limit (``timeout_s``) counts from when the job is seen running,
not queued. A job's ``time_limit_s`` (time_budget_minutes) counts from the call to ``run``: the job carries its
``deadline_unix`` and the worker takes the seconds it waited in the queue off the limit (``TrialJob.by_deadline``), so
a final that waited for a cold worker still ends in time. A remote trial's model comes back into ``save_model_to``
(the job asks for it with ``return_model``; the worker uploads it to the bucket, or returns it inline when small:
:mod:`hpo.artifacts`). ``start`` and ``close`` may be called twice; ``close`` cancels the jobs still in flight (their
``run`` returns ``stopped``), and ``run`` after ``close`` raises BackendUnavailable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from .. import artifacts
from ..exceptions import BackendUnavailable, TrialFailed
from ..protocol import EpochReport, TrialJob, TrialResult
from ..redact import mask_text
from ._base import Backend, CancelToken, EpochHandler
from ._checks import check_result
from ._http import RATES, Cancelled, EndpointClient, HTTPFailure, short
from ._runpod_job import (TERMINAL, Attempt, forward, handler_exception, next_wait, partial_result, status_problem,
                          take_progress)

__all__ = ["RunPodBackend", "make_runpod_backend", "endpoint_base_url", "default_queue_ahead", "RUNPOD_API_BASE",
           "RATES"]

log = logging.getLogger(__name__)

RUNPOD_API_BASE = "https://api.runpod.ai/v2"
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


class _InfraFailure(Exception):
    """The remote side failed the trial for reasons that are not the trial's (retry elsewhere)."""


def endpoint_base_url(endpoint_url: str | None, endpoint_id: str | None) -> str:
    """``runpod_endpoint_url`` as given (without a trailing slash), else the RunPod API URL of the endpoint id."""
    if endpoint_url:
        return endpoint_url.rstrip("/")
    if endpoint_id:
        return f"{RUNPOD_API_BASE}/{endpoint_id}"
    raise BackendUnavailable("no RunPod endpoint: give runpod_endpoint_id (or RUNPOD_ENDPOINT_ID) or "
                             "runpod_endpoint_url")


class RunPodBackend(Backend):
    """Runs each trial as one job on a RunPod serverless endpoint. Thread-safe: ``run`` is called from many threads."""

    name = "runpod"

    def __init__(self, base_url: str, api_key: str | None = None, *, execution_timeout_s: float = 3600.0,
                 queue_ttl_s: float = 6 * 3600.0, queue_timeout_s: float = 600.0, poll_min_s: float = 0.1,
                 poll_max_s: float = 1.5, request_timeout_s: float = 20.0, attempts: int = 6, backoff_s: float = 0.25,
                 backoff_max_s: float = 8.0, retry_after_max_s: float = 120.0,
                 rate_limit_budget_s: float | None = None, max_bad_answers: int = 10, resubmits: int = 1,
                 lost_contact_s: float = 90.0, end_window_s: float = 0.75, queue_ahead: int = 0,
                 record_timeline: bool = False) -> None:
        self.http = EndpointClient(base_url, api_key, request_timeout_s=request_timeout_s, attempts=attempts,
                                   backoff_s=backoff_s, backoff_max_s=backoff_max_s,
                                   retry_after_max_s=retry_after_max_s, rate_limit_budget_s=rate_limit_budget_s)
        self.base_url = self.http.base_url
        self.where = self.http.where  # the base URL for messages (masked)
        self.execution_timeout_s = execution_timeout_s
        self.queue_ttl_s = queue_ttl_s
        self.queue_timeout_s = queue_timeout_s
        self.poll_min_s = poll_min_s
        self.poll_max_s = max(poll_min_s, poll_max_s)
        self.max_bad_answers = max(1, max_bad_answers)
        self.resubmits = max(0, resubmits)
        self.lost_contact_s = lost_contact_s
        self.end_window_s = end_window_s
        self._queue_ahead = max(0, int(queue_ahead))
        self._lock = threading.Lock()
        self._inflight: dict[str, str] = {}  # remote job id -> trial id
        self._submitting = 0  # submissions whose answer (the job id) has not come back yet
        self._settled = threading.Condition(self._lock)  # notified when one comes back
        self._swept = False  # close() has cancelled what was in flight: a job id coming back later cancels itself
        #: how long close() waits for submissions under way, so that it cancels the jobs they create
        self.close_wait_s = 5.0
        self._started = False
        self._closed = False
        self.record_timeline = record_timeline
        self.timeline: list[dict[str, Any]] = []  # per remote job: submitted_at / noticed_at (time.time()), ...
        host = urlsplit(self.base_url).hostname
        self._is_runpod_cloud = host is not None and host.endswith("runpod.ai")

    @property
    def queue_ahead(self) -> int:
        """Trials the dispatcher keeps submitted beyond its concurrent_workers, so a worker that finishes finds its
        next job already queued on the endpoint."""
        return self._queue_ahead

    @property
    def _key(self) -> str | None:
        return self.http.key

    @property
    def retried_requests(self) -> Any:
        """Retries per route (rate-limit waits included)."""
        return self.http.retried_requests

    def __repr__(self) -> str:  # never the key
        return f"RunPodBackend({self.where!r}, api_key={'set' if self._key else 'unset'})"

    # -- lifecycle --------------------------------------------------------------------------------------------
    def health(self, *, attempts: int | None = None, rate_limit_budget_s: float | None = None) -> dict[str, Any]:
        """The endpoint's /health answer; BackendUnavailable with the reason if it cannot be had."""
        if self._is_runpod_cloud and not self._key:
            raise BackendUnavailable("RUNPOD_API_KEY is not set (put it in the environment or in .env)")
        try:
            answer = self.http.request("GET", "health", attempts=attempts or 3, timeout=10.0,
                                       rate_limit_budget_s=rate_limit_budget_s)
        except Cancelled as exc:
            raise BackendUnavailable(f"RunPod endpoint {self.where}: {exc}") from None
        except HTTPFailure as exc:
            if exc.transient:
                raise BackendUnavailable(f"RunPod endpoint {self.where} is not reachable: {exc}") from None
            raise BackendUnavailable(f"RunPod endpoint {self.where} refused the health check: {exc}") from None
        if not isinstance(answer, dict):
            raise BackendUnavailable(f"RunPod endpoint {self.where} answered /health with {short(answer, 100)}")
        return answer

    def start(self) -> None:
        if self._closed:
            raise BackendUnavailable("the RunPod backend is closed")
        if self._started:
            return
        answer = self.health()
        self._started = True
        workers = answer.get("workers") if isinstance(answer.get("workers"), dict) else {}
        log.info("RunPod endpoint %s is up (workers: %s)", self.where,
                 ", ".join(f"{k} {short(v, 20)}" for k, v in workers.items()) or "none reported")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._settled.wait_for(lambda: self._submitting == 0, timeout=self.close_wait_s)
            leftover, self._swept = list(self._inflight), True
        for job_id in leftover:  # e.g. Ctrl-C while a thread was between calls: nothing keeps running remotely
            self._cancel(job_id)
        self.http.close()

    def probe(self) -> str | None:
        """None if the endpoint answers /health now, else why not (one quick try, no rate-limit wait)."""
        if self._closed:
            return "the RunPod backend is closed"
        try:
            self.health(attempts=1, rate_limit_budget_s=0.0)
        except BackendUnavailable as exc:
            return str(exc)
        return None

    # -- trials -----------------------------------------------------------------------------------------------
    def run(self, job: TrialJob, *, on_epoch: EpochHandler | None = None, cancel: CancelToken | None = None,
            timeout_s: float | None = None, save_model_to: str | None = None) -> TrialResult:
        if self._closed:
            raise BackendUnavailable("the RunPod backend is closed")
        if save_model_to:  # the worker brings the model back: through the bucket, or inline when small
            job = dataclasses.replace(job, return_model=True)
        if job.time_limit_s is not None:  # the worker takes the seconds spent in the queue (and on resubmits) off it
            job = dataclasses.replace(job, deadline_unix=round(time.time() + job.time_limit_s, 2))
        forwarded = {"epoch": 0}
        failures: list[str] = []
        for attempt in range(self.resubmits + 1):
            try:
                # the model comes back into save_model_to; inline bytes never reach the results
                return artifacts.store_model(self._run_once(job, on_epoch, cancel, timeout_s, forwarded),
                                             save_model_to)
            except BackendUnavailable as exc:  # not worth resubmitting (deadline, garbage answers, rate limits)
                raise BackendUnavailable("; then ".join([*failures, str(exc)])) from None
            except _InfraFailure as exc:
                failures.append(str(exc))
                if cancel is not None and cancel.cancelled:
                    return TrialResult(trial_id=job.trial_id, status="stopped", error=cancel.reason or "cancelled")
                if attempt < self.resubmits:
                    log.warning("trial %s: %s; submitting it again", job.trial_id, exc)
        raise BackendUnavailable("; then ".join(failures))

    def _submit(self, job: TrialJob, timeout_s: float | None, cancel: CancelToken | None) -> str:
        exec_s = self.execution_timeout_s
        if timeout_s is not None:  # the client cancels at the time limit; the endpoint's timeout is the backstop
            exec_s = min(exec_s, timeout_s + 60.0)
        queue_s = min(self.queue_ttl_s, self.queue_timeout_s + 60.0)  # the endpoint expires what the client forgot
        body = {"input": job.to_dict(),
                "policy": {"executionTimeout": int(exec_s * 1000), "ttl": int((exec_s + queue_s) * 1000)}}
        try:
            answer = self.http.request("POST", "run", body=body, cancel=cancel)
        except HTTPFailure as exc:
            raise BackendUnavailable(f"could not submit trial {job.trial_id} to {self.where}: {exc}") from None
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise BackendUnavailable(f"{self.where}/run answered without a usable job id: {short(answer, 200)}")
        return job_id

    def _run_once(self, job: TrialJob, on_epoch: EpochHandler | None, cancel: CancelToken | None,
                  timeout_s: float | None, forwarded: dict[str, int]) -> TrialResult:
        if cancel is not None and cancel.cancelled:
            return TrialResult(trial_id=job.trial_id, status="stopped", error=cancel.reason or "cancelled")
        with self._lock:
            self._submitting += 1
        job_id = None
        try:
            job_id = self._submit(job, timeout_s, cancel)
        except Cancelled as exc:
            return TrialResult(trial_id=job.trial_id, status="stopped", error=str(exc))
        finally:
            with self._lock:  # in flight from here: close() cancels it, or it is cancelled here when close() has swept
                self._submitting -= 1
                if job_id is not None and not self._swept:
                    self._inflight[job_id] = job.trial_id
                swept = job_id is not None and self._swept
                self._settled.notify_all()
        if swept:
            self._cancel(job_id)  # type: ignore[arg-type]
            return TrialResult(trial_id=job.trial_id, status="stopped", error="the RunPod backend is closed")
        submitted_wall = time.time()
        now = time.monotonic()
        attempt = Attempt(job_id=job_id, submitted=now, queued_since=now, last_change=now)
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

    def _give_up(self, a: Attempt, reason: str) -> BackendUnavailable:
        """Cancel the job; the error to raise (not resubmitted: the FallbackBackend decides)."""
        self._cancel(a.job_id)
        return BackendUnavailable(f"remote job {a.job_id} on {self.where}: {reason}; the job was cancelled")

    def _follow(self, job: TrialJob, a: Attempt, on_epoch: EpochHandler | None, cancel: CancelToken | None,
                timeout_s: float | None, forwarded: dict[str, int]) -> TrialResult:
        last_contact = time.monotonic()
        wait = self.poll_min_s
        while True:
            try:
                self.http.pause(wait, cancel)
                now = time.monotonic()
                if timeout_s is not None and a.started is not None and now - a.started > timeout_s:
                    self._cancel(a.job_id)
                    return partial_result(job, a, "failed", f"the trial ran past its time limit of {timeout_s:g} s; "
                                                          f"remote job {a.job_id} was cancelled")
                status: Any = self.http.request("GET", "status", a.job_id, attempts=3, cancel=cancel)
            except Cancelled as exc:
                self._cancel(a.job_id)
                reason = cancel.reason if cancel is not None and cancel.cancelled else None
                return partial_result(job, a, "stopped", reason or str(exc) or "cancelled")
            except HTTPFailure as exc:
                if exc.rate_limited:
                    raise self._give_up(a, str(exc)) from None
                if exc.malformed:
                    status = exc
                elif not exc.transient:
                    self._cancel(a.job_id)
                    raise _InfraFailure(f"remote job {a.job_id}: {exc}") from None
                else:
                    if time.monotonic() - last_contact > self.lost_contact_s:
                        raise self._give_up(a, f"lost contact with the endpoint for more than "
                                               f"{self.lost_contact_s:g} s ({exc})") from None
                    wait = self.poll_max_s
                    continue
            last_contact = time.monotonic()
            a.polls += 1
            problem = str(status) if isinstance(status, HTTPFailure) else status_problem(status, a.job_id)
            if problem is not None:
                a.bad_answers += 1
                log.debug("remote job %s: unusable /status answer %d: %s", a.job_id, a.bad_answers, problem)
                if a.bad_answers >= self.max_bad_answers:
                    raise self._give_up(a, f"{a.bad_answers} unusable /status answers in a row (last: {problem})")
                wait = min(self.poll_max_s, self.poll_min_s * 2 ** a.bad_answers)
                continue
            a.bad_answers = 0
            state = status["status"]
            if status.get("workerId"):
                a.worker = short(status["workerId"], 100)
            if state != a.last_status:
                a.last_status, a.last_change = state, time.monotonic()
                if state != "IN_QUEUE":
                    a.queued_since = None
                elif a.queued_since is None:  # back in the queue (the endpoint requeued it): a new deadline
                    a.queued_since = time.monotonic()
            if state == "IN_QUEUE" and a.queued_since is not None and \
                    time.monotonic() - a.queued_since > self.queue_timeout_s:
                raise self._give_up(a, f"no worker took it within {self.queue_timeout_s:g} s "
                                       "(runpod_queue_timeout_s)")
            if state == "IN_PROGRESS" and a.started is None:
                a.started = time.monotonic()
            output = status.get("output")
            if state == "IN_PROGRESS" and isinstance(output, dict):
                take_progress(job, a, output.get("hpo_progress"), on_epoch, forwarded, status.get("executionTime"),
                              poll_max_s=self.poll_max_s, longest_s=self.execution_timeout_s)
            if state in TERMINAL:
                return self._finished(job, a, status, on_epoch, forwarded)
            wait = next_wait(a, self.poll_min_s, self.poll_max_s, self.end_window_s)
            if timeout_s is not None and a.started is not None:  # wake up for the time limit, not a poll later
                wait = min(wait, max(0.01, a.started + timeout_s - time.monotonic()))
            if state == "IN_QUEUE" and a.queued_since is not None:  # ... and for the queue deadline
                wait = min(wait, max(0.01, a.queued_since + self.queue_timeout_s - time.monotonic() + 0.01))

    def _finished(self, job: TrialJob, a: Attempt, status: dict[str, Any], on_epoch: EpochHandler | None,
                  forwarded: dict[str, int]) -> TrialResult:
        state = status["status"]
        output = status.get("output")
        error = status.get("error")
        where = f"runpod:{a.worker}" if a.worker else "runpod"
        if state == "COMPLETED":
            raw = output.get("trial_result") if isinstance(output, dict) else None
            if raw is None:
                return partial_result(job, a, "failed", f"remote job {a.job_id} completed without a trial result: "
                                                        f"{short(output, 300)}")
            try:
                result = TrialResult.from_dict(raw)
            except Exception as exc:  # noqa: BLE001
                return partial_result(job, a, "failed", f"remote job {a.job_id} returned an invalid trial result: "
                                                        f"{short(exc, 300)}")
            if result.trial_id != job.trial_id:
                return partial_result(job, a, "failed", f"remote job {a.job_id} answered for trial "
                                                        f"{short(result.trial_id, 80)!r}, not {job.trial_id!r}; its "
                                                        "numbers were discarded")
            try:
                check_result(result, job)
            except TrialFailed as exc:
                return partial_result(job, a, "failed", f"remote job {a.job_id} returned a result out of range: "
                                                        f"{short(exc, 300)}; its numbers were discarded")
            for i in range(len(result.history.get("val_accuracy") or result.history.get("loss") or [])):
                metrics = {k: (v[i] if i < len(v) else None) for k, v in result.history.items()}
                a.reports.setdefault(i + 1, EpochReport(trial_id=job.trial_id, epoch=i + 1, metrics=metrics))
            forward(a, on_epoch, forwarded)
            details = dict(result.details)
            details["runpod"] = {"job_id": a.job_id, "worker": a.worker, "delay_ms": status.get("delayTime"),
                                 "execution_ms": status.get("executionTime")}
            return result.replace(executed_on=result.executed_on or where, details=details)
        text = error if isinstance(error, str) else (json.dumps(error, default=str) if error is not None else "")
        text = str(mask_text(text))
        kind = output.get("error_kind") if isinstance(output, dict) else None
        if state == "FAILED":
            if kind in ("invalid_input", "worker_error"):
                return partial_result(job, a, "failed", f"the worker rejected the trial: {text}")
            crashed = handler_exception(text)
            if crashed is not None:
                return partial_result(job, a, "failed", f"the worker's handler raised {crashed}")
            raise _InfraFailure(f"remote job {a.job_id} failed on {where}: {text or 'no error text'}")
        if state == "TIMED_OUT":
            if a.started is None and not status.get("executionTime"):
                raise _InfraFailure(f"remote job {a.job_id} was never picked up by a worker: "
                                    f"{text or 'it expired in the queue'}")
            return partial_result(job, a, "failed", f"remote job {a.job_id} timed out on {where}: "
                                                    f"{text or 'execution timeout exceeded'}")
        return partial_result(job, a, "failed", f"remote job {a.job_id} was cancelled on the endpoint (not by this "
                                                f"run){': ' + text if text else ''}")

    def _cancel(self, job_id: str) -> None:
        """Best effort, bounded: a few attempts, at most 30 s of rate limiting, never interrupted by a cancel token."""
        try:
            self.http.request("POST", "cancel", job_id, attempts=4, timeout=10.0,
                              rate_limit_budget_s=min(30.0, self.http.rate_limit_budget_s))
        except (HTTPFailure, Cancelled) as exc:
            log.warning("could not cancel remote job %s: %s", job_id, exc)


def make_runpod_backend(config: Any, local_fallback: Backend | None = None, *, api_key: str | None = None,
                        env_file: str | None = None) -> Backend:
    """The backend for ``use_runpod_service=true``: RunPod, falling back to ``local_fallback`` (None: no fallback)."""
    from ..config import runpod_api_key
    from .fallback import FallbackBackend

    key = api_key if api_key is not None else runpod_api_key(env_file)
    base = endpoint_base_url(config.runpod_endpoint_url, config.runpod_endpoint_id)
    remote = RunPodBackend(base, key, execution_timeout_s=config.runpod_timeout_s,
                           queue_timeout_s=config.runpod_queue_timeout_s,
                           retry_after_max_s=config.runpod_retry_after_max_s,
                           queue_ahead=default_queue_ahead(config.concurrent_workers))
    return FallbackBackend(remote, local_fallback)


def default_queue_ahead(workers: int) -> int:
    """Trials kept queued beyond ``workers`` running ones: enough that workers finishing within the same second or
    two each find a job waiting (1 for a few workers, about a fifth more for many)."""
    return 1 + max(0, workers) // 5
