"""The simulator's job state machine: jobs and workers as the control plane sees them, the FIFO queue handed to
long-polling workers, and the transitions IN_QUEUE -> IN_PROGRESS -> COMPLETED / FAILED / CANCELLED / TIMED_OUT
(execution timeouts, queue ttl, lost workers, stop signals re-delivered). Runs on the simulator's event loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SimJob", "SimWorker", "Fault", "Taker", "JobStateMachine", "TERMINAL", "RATE_LIMITS", "ROUTES", "DROPS"]

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
#: RunPod's documented rate limits: requests per 10 s window.
RATE_LIMITS = {"run": 1000, "status": 2000, "stream": 2000, "cancel": 100}
ROUTES = ("run", "status", "stream", "cancel", "health", "purge-queue", "job-take", "job-stop", "job-done",
          "job-stream", "ping")


@dataclass
class SimJob:
    """One request as the control plane sees it. Times are ``time.time()`` seconds."""

    id: str
    input: Any
    created_at: float
    status: str = "IN_QUEUE"
    execution_timeout_s: float | None = None
    ttl_s: float | None = None
    worker_id: str | None = None
    taken_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: str | None = None
    progress: Any = None
    progress_posts: list[tuple[float, Any]] = field(default_factory=list)
    stream: list[Any] = field(default_factory=list)
    stream_sent: int = 0
    late_posts: list[tuple[float, str, Any]] = field(default_factory=list)
    history: list[tuple[float, str]] = field(default_factory=list)
    retries: int = 0
    cancelled_at: float | None = None

    def set_status(self, status: str, now: float) -> None:
        self.status = status
        self.history.append((now, status))

    def snapshot(self) -> dict[str, Any]:
        data = asdict(self)
        data["progress_posts"] = [list(p) for p in self.progress_posts]
        return data


@dataclass
class SimWorker:
    """A worker process as the control plane sees it (by the id in its URLs)."""

    id: str
    first_seen: float
    last_seen: float
    jobs: set[str] = field(default_factory=set)  # job ids handed to it and not yet given back
    stops: dict[str, float] = field(default_factory=dict)  # job id -> last delivery of its stop signal (0: none yet)
    stop_since: dict[str, float] = field(default_factory=dict)  # job id -> when it was told to stop
    pinged_jobs: set[str] | None = None
    pings: int = 0
    takes: int = 0
    vanished: bool = False
    lost: bool = False
    polls_open: int = 0

    def snapshot(self) -> dict[str, Any]:
        data = asdict(self)
        data["jobs"] = sorted(self.jobs)
        data["pinged_jobs"] = sorted(self.pinged_jobs) if self.pinged_jobs is not None else None
        return data


@dataclass
class Fault:
    route: str
    status: int | str  # an HTTP status, or one of DROPS
    remaining: int | None
    rate: float | None
    body: str
    retry_after: str | None = None


#: Faults that answer no HTTP status: the server closes the connection without an answer ("close"), resets it (TCP
#: RST, "reset"), or sends the start of a 200 answer and closes mid-body ("truncate").
DROPS = ("close", "reset", "truncate")


@dataclass
class Taker:
    worker: SimWorker
    future: asyncio.Future
    batch: int
    request: Any



class JobStateMachine:
    """The jobs, the queue and the workers, and every transition between states (a mixin of RunPodSimulator)."""

    lost_jobs: str
    worker_timeout_s: float
    stop_redeliver_s: float
    _jobs: dict[str, SimJob]
    _queue: collections.deque[str]
    _workers: dict[str, SimWorker]
    _takers: collections.deque[Taker]
    _stop_events: dict[str, asyncio.Event]

    def _worker(self, worker_id: str) -> SimWorker:
        worker = self._workers.get(worker_id)
        now = time.time()
        if worker is None:
            worker = self._workers[worker_id] = SimWorker(worker_id, now, now)
            self._stop_events[worker_id] = asyncio.Event()
        return worker

    def _seen(self, worker_id: str) -> SimWorker:
        worker = self._worker(worker_id)
        if not worker.vanished:
            worker.last_seen = time.time()
            worker.lost = False
        return worker

    def _status_doc(self, job: SimJob) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": job.id, "status": job.status}
        if job.taken_at is not None:
            doc["delayTime"] = int((job.taken_at - job.created_at) * 1000)
            doc["workerId"] = job.worker_id
            end = job.finished_at if job.finished_at is not None else time.time()
            doc["executionTime"] = int((end - job.taken_at) * 1000)
        if job.retries:
            doc["retries"] = job.retries
        if job.status == "IN_PROGRESS" and job.progress is not None:
            doc["output"] = job.progress
        elif job.status in TERMINAL and job.output is not None:
            doc["output"] = job.output
        if job.error is not None:
            doc["error"] = job.error
        return doc

    def _finish(self, job: SimJob, status: str, now: float, *, error: str | None = None, stop: bool = True) -> None:
        job.set_status(status, now)
        job.finished_at = now
        if error is not None:
            job.error = error
        if job.id in self._queue:
            self._queue.remove(job.id)
        worker = self._workers.get(job.worker_id or "")
        if worker is not None and job.id in worker.jobs:
            if stop:
                worker.stops[job.id] = 0.0
                worker.stop_since[job.id] = now
                self._stop_events[worker.id].set()
            else:
                worker.jobs.discard(job.id)

    def _enqueue(self, job: SimJob, *, front: bool = False) -> None:
        self._queue.appendleft(job.id) if front else self._queue.append(job.id)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand queued jobs to waiting workers, first come first served."""
        while self._queue and self._takers:
            taker = self._takers.popleft()
            transport = taker.request.transport
            if taker.future.done() or taker.worker.vanished or transport is None or transport.is_closing():
                if not taker.future.done():
                    taker.future.set_result([])
                continue
            taker.future.set_result(self._pop(taker.worker, taker.batch))

    def _pop(self, worker: SimWorker, n: int) -> list[SimJob]:
        taken: list[SimJob] = []
        now = time.time()
        while self._queue and len(taken) < n:
            job = self._jobs[self._queue.popleft()]
            job.worker_id = worker.id
            job.taken_at = now
            job.set_status("IN_PROGRESS", now)
            worker.jobs.add(job.id)
            worker.takes += 1
            taken.append(job)
        return taken

    def _lose_worker(self, worker: SimWorker, now: float, why: str) -> None:
        worker.lost = True
        for job_id in sorted(worker.jobs):
            job = self._jobs[job_id]
            if job.status != "IN_PROGRESS":
                continue
            if self.lost_jobs == "requeue":
                job.retries += 1
                job.worker_id = None
                job.taken_at = None
                job.progress = None
                job.set_status("IN_QUEUE", now)
                self._enqueue(job, front=True)
            else:
                self._finish(job, "FAILED", now, stop=False,
                             error=f"worker {worker.id} {why} while running the job; the job was lost")
        worker.jobs.clear()
        worker.stops.clear()
        worker.stop_since.clear()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            for job in list(self._jobs.values()):
                if job.status == "IN_QUEUE" and job.ttl_s is not None and now - job.created_at > job.ttl_s:
                    self._finish(job, "TIMED_OUT", now, error=f"the job expired in the queue (ttl {job.ttl_s:g} s)")
                elif (job.status == "IN_PROGRESS" and job.execution_timeout_s is not None and job.taken_at is not None
                      and now - job.taken_at > job.execution_timeout_s):
                    self._finish(job, "TIMED_OUT", now,
                                 error=f"the job exceeded its execution timeout of {job.execution_timeout_s:g} s")
            for worker in self._workers.values():
                if worker.vanished or worker.lost:
                    continue
                if worker.jobs and now - worker.last_seen > self.worker_timeout_s:
                    self._lose_worker(worker, now, f"stopped responding (nothing heard for "
                                                   f"{now - worker.last_seen:.1f} s)")
                    continue
                for job_id, since in list(worker.stop_since.items()):
                    if now - since > 120:  # give up re-delivering a stop after two minutes
                        worker.stops.pop(job_id, None)
                        worker.stop_since.pop(job_id, None)
                        worker.jobs.discard(job_id)
                    elif now - worker.stops.get(job_id, 0.0) >= self.stop_redeliver_s:
                        self._stop_events[worker.id].set()
