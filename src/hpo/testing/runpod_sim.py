"""A loopback emulation of RunPod's serverless control plane, both sides of it, for tests and benchmarks.

Client side (what :class:`hpo.backends.runpod.RunPodBackend` talks to), under ``/v2/<endpoint id>``::

    POST /run               {"input": {...}, "policy": {"executionTimeout": ms, "ttl": ms}}
                            -> {"id", "status": "IN_QUEUE"}
    GET|POST /status/<id>   {"id", "status", "delayTime", "executionTime", "workerId", "output"?, "error"?}
    GET|POST /stream/<id>   {"id", "status", "stream": [{"output": ...}, ...]}   (new stream items since the last call)
    POST /cancel/<id>       {"id", "status"}
    GET /health             {"jobs": {"completed", "failed", "inProgress", "inQueue", "retried"}, "workers": {...}}
    POST /purge-queue       {"removed": n, "status": "completed"}

Worker side (what the *unmodified* ``runpod`` SDK worker loop talks to when ``RUNPOD_WEBHOOK_GET_JOB`` is set; see
``runpod/serverless/modules/rp_job.py``, ``rp_http.py``, ``rp_ping.py``; :meth:`RunPodSimulator.worker_env` gives the
environment)::

    GET  /job-take/<worker>?...&job_in_progress=0|1         long poll: a job {"id", "input"} as soon as one is queued,
    GET  /job-take-batch/<worker>?...&batch_size=n          204 after ``take_hold_s``; batch: a list of jobs
    GET  /job-stop/<worker>?...                             long poll: {"jobsToStop": [ids]}, or 204 after
                                                            ``stop_hold_s``
    POST /job-done/<worker>/<job>?...&isStream=false        the result {"output"?, "error"?}, or a progress update
                                                            {"status": "IN_PROGRESS", "output": ...}
    POST /job-stream/<worker>/<job>?...                     a streamed output item
    GET  /ping/<worker>?job_id=a,b&runpod_version=...       heartbeat with the ids the worker holds

Behaviour that tests rely on: a FIFO queue handed to long-polling workers in the order they asked; statuses IN_QUEUE ->
IN_PROGRESS -> COMPLETED / FAILED / CANCELLED / TIMED_OUT; ``executionTimeout`` (the job is TIMED_OUT and its worker
told to stop) and ``ttl`` (a job still queued past it expires as TIMED_OUT); progress output visible in /status while
the job runs; a cancelled job's stop signal is re-delivered (every ``stop_redeliver_s``) for as long as the worker's
pings still list the job, because the SDK only stops jobs whose task already runs; results of finished jobs that
arrive late are recorded and ignored; RunPod's rate limits (/run 1000, /status 2000, /cancel 100 per 10 s) answer 429.
A worker that stops sending pings and polls for ``worker_timeout_s`` is lost: its running jobs are FAILED with an
error saying so (``lost_jobs="fail"``) or put back in the queue (``lost_jobs="requeue"``).

Faults for tests: :meth:`~RunPodSimulator.inject` (answer a route with 429 + Retry-After / 5xx / a malformed 200, or
drop its connections -- closed, reset, cut off mid-answer -- a number of times or at a rate),
:meth:`~RunPodSimulator.set_output_filter` (rewrite the results workers post: malformed or out-of-range output),
:meth:`~RunPodSimulator.vanish_worker` (a worker whose traffic the control plane no longer sees),
:class:`WorkerProcess` to start and kill real ``python runpod_worker/handler.py`` processes, and :class:`FakeWorker`
(a thread that answers jobs through the worker routes as a test says, or holds them).

Run it by hand: ``python -m hpo.testing.runpod_sim --port 8000`` prints the endpoint URL and a worker environment.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ._sim_workers import (HANDLER_PATH, REPO_ROOT, FakeWorker, SimulatorProcess, WorkerProcess, _Reader,
                           completed_output, start_workers, stop_workers, worker_environment)

__all__ = ["RunPodSimulator", "SimulatorProcess", "SimJob", "SimWorker", "WorkerProcess", "FakeWorker",
           "completed_output", "start_workers", "stop_workers", "worker_environment", "REPO_ROOT", "HANDLER_PATH"]

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
class _Fault:
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
class _Taker:
    worker: SimWorker
    future: asyncio.Future
    batch: int
    request: Any


class RunPodSimulator(_Reader):
    """The control plane, served from a background thread on 127.0.0.1. Use as a context manager or start()/stop()."""

    def __init__(self, *, endpoint_id: str = "sim", api_key: str | None = None, worker_key: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, take_hold_s: float = 10.0, stop_hold_s: float = 10.0,
                 worker_timeout_s: float = 5.0, lost_jobs: str = "fail", rate_limits: bool = True,
                 stop_redeliver_s: float = 0.5, seed: int = 0) -> None:
        if lost_jobs not in ("fail", "requeue"):
            raise ValueError("lost_jobs must be 'fail' or 'requeue'")
        self.endpoint_id = endpoint_id
        self.api_key = api_key
        self.worker_key = worker_key or secrets.token_hex(8)
        self.host = host
        self.port = port
        self.take_hold_s = take_hold_s
        self.stop_hold_s = stop_hold_s
        self.worker_timeout_s = worker_timeout_s
        self.lost_jobs = lost_jobs
        self.rate_limits = rate_limits
        self.stop_redeliver_s = stop_redeliver_s
        self._rng = random.Random(seed)
        self._jobs: dict[str, SimJob] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._workers: dict[str, SimWorker] = {}
        self._takers: collections.deque[_Taker] = collections.deque()
        self._stop_events: dict[str, asyncio.Event] = {}
        self._faults: list[_Fault] = []
        self._output_filter: Callable[[Any, Any], Any] | None = None
        self._windows: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.requests: collections.Counter[str] = collections.Counter()
        self.responses: collections.Counter[tuple[str, int | str]] = collections.Counter()  # (route, status)
        self.auth_failures = 0
        self.authorization_seen: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._ticker: asyncio.Task | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint_url(self) -> str:
        """The base URL a client uses (``runpod_endpoint_url``)."""
        return f"{self.url}/v2/{self.endpoint_id}"

    def start(self) -> RunPodSimulator:
        self._thread = threading.Thread(target=self._serve, name="runpod-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the RunPod simulator did not start within 30 s")
        if self._startup_error is not None:
            raise RuntimeError(f"the RunPod simulator failed to start: {self._startup_error}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(15)
        except Exception:  # noqa: BLE001 - stopping is best effort
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(15)

    def __enter__(self) -> RunPodSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _startup(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 2**20)
        base = f"/v2/{self.endpoint_id}"
        app.router.add_post(f"{base}/run", self._h_run)
        app.router.add_route("*", f"{base}/status/{{job_id}}", self._h_status)
        app.router.add_route("*", f"{base}/stream/{{job_id}}", self._h_stream)
        app.router.add_post(f"{base}/cancel/{{job_id}}", self._h_cancel)
        app.router.add_get(f"{base}/health", self._h_health)
        app.router.add_post(f"{base}/purge-queue", self._h_purge)
        app.router.add_get(f"{base}/job-take/{{worker_id}}", self._h_take)
        app.router.add_get(f"{base}/job-take-batch/{{worker_id}}", self._h_take)
        app.router.add_get(f"{base}/job-stop/{{worker_id}}", self._h_stop)
        app.router.add_post(f"{base}/job-done/{{worker_id}}/{{job_id}}", self._h_done)
        app.router.add_post(f"{base}/job-stream/{{worker_id}}/{{job_id}}", self._h_stream_post)
        app.router.add_get(f"{base}/ping/{{worker_id}}", self._h_ping)
        app.router.add_get(f"{base}/_sim/state", self._h_state)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to learn the port chosen for port 0
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _shutdown(self) -> None:
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        while self._takers:
            taker = self._takers.popleft()
            if not taker.future.done():
                taker.future.set_result([])
        for event in self._stop_events.values():
            event.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- thread-safe access for tests -------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(15)

    def jobs(self) -> list[dict[str, Any]]:
        """Snapshots of every job, in submission order."""
        return self._call(lambda: [j.snapshot() for j in self._jobs.values()])

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call(lambda: self._jobs[job_id].snapshot())

    def workers(self) -> dict[str, dict[str, Any]]:
        return self._call(lambda: {w.id: w.snapshot() for w in self._workers.values()})

    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        return self._call(lambda: dict(collections.Counter(j.status for j in self._jobs.values())))

    def inject(self, route: str, status: int | str, count: int | None = 1, *, rate: float | None = None,
               body: str | None = None, retry_after: str | float | None = "") -> None:
        """Answer ``route`` (one of ROUTES) with ``status``: the next ``count`` requests (None: all), or each request
        with probability ``rate``. ``status`` is an HTTP status (a 200 with ``body`` plays a malformed answer), or
        one of DROPS: "close" (the connection is closed without an answer), "reset" (TCP reset), "truncate" (a 200
        cut off mid-body). ``retry_after``: the Retry-After header (default: "0.2" on 429, none otherwise; None:
        none)."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; routes: {', '.join(ROUTES)}")
        if isinstance(status, str) and status not in DROPS:
            raise ValueError(f"unknown fault {status!r}; an HTTP status or one of {', '.join(DROPS)}")
        text = body if body is not None else json.dumps({"error": f"injected HTTP {status}"})
        if retry_after == "":
            retry_after = "0.2" if status == 429 else None
        header = None if retry_after is None else (retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        self._call(self._faults.append, _Fault(route, status, count, rate, text, header))

    def set_output_filter(self, rewrite: Callable[[Any, Any], Any] | None) -> None:
        """Rewrite every result a worker posts before it is stored: ``rewrite(job_input, output) -> output`` (a
        COMPLETED job's output; progress updates and errors are left alone). None: results are stored as posted."""
        self._output_filter = rewrite

    def clear_faults(self) -> None:
        self._call(self._faults.clear)

    def vanish_worker(self, worker_id: str) -> None:
        """The worker drops off the control plane's view: its jobs are lost now and it is never given another."""
        def vanish() -> None:
            worker = self._worker(worker_id)
            worker.vanished = True
            self._lose_worker(worker, time.time(), "vanished")

        self._call(vanish)

    # -- helpers (event loop thread) ----------------------------------------------------------------------------
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

    def _json(self, route: str, data: Any, status: int = 200) -> Any:
        from aiohttp import web

        self.responses[(route, status)] += 1
        return web.json_response(data, status=status)

    def _fault(self, route: str, request: Any = None) -> Any:
        from aiohttp import web

        self.requests[route] += 1
        for fault in list(self._faults):
            if fault.route != route:
                continue
            if fault.rate is not None and self._rng.random() >= fault.rate:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            self.responses[(route, fault.status)] += 1
            if isinstance(fault.status, str):
                self._drop(request, fault.status)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return web.Response(status=fault.status, text=fault.body, content_type="application/json",
                                headers=headers)
        limit = RATE_LIMITS.get(route)
        if self.rate_limits and limit is not None:
            window = self._windows[route]
            now = time.monotonic()
            while window and now - window[0] > 10.0:
                window.popleft()
            if len(window) >= limit:
                self.responses[(route, 429)] += 1
                return web.Response(status=429, text=json.dumps({"error": "rate limit exceeded"}),
                                    content_type="application/json")
            window.append(now)
        return None

    @staticmethod
    def _drop(request: Any, how: str) -> None:
        """End the request's connection without an HTTP answer (see DROPS); raises CancelledError to end the
        handler."""
        import socket
        import struct

        transport = request.transport if request is not None else None
        if transport is not None:
            if how == "reset":
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                if how == "truncate":
                    transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n"
                                    b"\r\n{\"id\": \"")
                transport.close()
        raise asyncio.CancelledError()

    def _auth(self, request: Any, route: str) -> Any:
        header = request.headers.get("Authorization", "")
        self.authorization_seen.add(header.split(" ", 1)[0] if header else "")
        if self.api_key is not None and header != f"Bearer {self.api_key}":
            self.auth_failures += 1
            return self._json(route, {"error": "Unauthorized"}, 401)
        return None

    def _worker_auth(self, request: Any, route: str) -> Any:
        if request.headers.get("Authorization", "") != self.worker_key:
            self.auth_failures += 1
            return self._json(route, {"error": "Unauthorized worker"}, 401)
        return None

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

    # -- client API ---------------------------------------------------------------------------------------------
    async def _h_run(self, request: Any) -> Any:
        if (resp := self._fault("run", request)) is not None or (resp := self._auth(request, "run")) is not None:
            return resp
        try:
            body = json.loads(await request.text())
        except ValueError:
            return self._json("run", {"error": "the request body is not JSON"}, 400)
        if not isinstance(body, dict) or "input" not in body:
            return self._json("run", {"error": "the request body needs an 'input'"}, 400)
        policy = body.get("policy") or {}
        now = time.time()
        job = SimJob(id=f"{uuid.uuid4()}-u1", input=body["input"], created_at=now)
        job.history.append((now, "IN_QUEUE"))
        if isinstance(policy.get("executionTimeout"), (int, float)) and policy["executionTimeout"] > 0:
            job.execution_timeout_s = policy["executionTimeout"] / 1000.0
        if isinstance(policy.get("ttl"), (int, float)) and policy["ttl"] > 0:
            job.ttl_s = policy["ttl"] / 1000.0
        self._jobs[job.id] = job
        self._enqueue(job)
        return self._json("run", {"id": job.id, "status": "IN_QUEUE"})  # as submitted, even if taken at once

    def _lookup(self, request: Any, route: str) -> tuple[SimJob | None, Any]:
        job = self._jobs.get(request.match_info["job_id"])
        if job is None:
            return None, self._json(route, {"error": "job not found"}, 404)
        return job, None

    async def _h_status(self, request: Any) -> Any:
        if (resp := self._fault("status", request)) is not None or (resp := self._auth(request, "status")) is not None:
            return resp
        job, resp = self._lookup(request, "status")
        return resp if job is None else self._json("status", self._status_doc(job))

    async def _h_stream(self, request: Any) -> Any:
        if (resp := self._fault("stream", request)) is not None or (resp := self._auth(request, "stream")) is not None:
            return resp
        job, resp = self._lookup(request, "stream")
        if job is None:
            return resp
        items = job.stream[job.stream_sent:]
        job.stream_sent = len(job.stream)
        return self._json("stream", {"id": job.id, "status": job.status, "stream": [{"output": i} for i in items]})

    async def _h_cancel(self, request: Any) -> Any:
        if (resp := self._fault("cancel", request)) is not None or (resp := self._auth(request, "cancel")) is not None:
            return resp
        job, resp = self._lookup(request, "cancel")
        if job is None:
            return resp
        if job.status not in TERMINAL:
            now = time.time()
            job.cancelled_at = now
            self._finish(job, "CANCELLED", now)
        return self._json("cancel", {"id": job.id, "status": job.status})

    async def _h_health(self, request: Any) -> Any:
        if (resp := self._fault("health", request)) is not None or (resp := self._auth(request, "health")) is not None:
            return resp
        counts = collections.Counter(j.status for j in self._jobs.values())
        live = [w for w in self._workers.values() if not w.lost and not w.vanished]
        running = sum(1 for w in live if any(self._jobs[j].status == "IN_PROGRESS" for j in w.jobs))
        return self._json("health", {
            "jobs": {"completed": counts["COMPLETED"], "failed": counts["FAILED"] + counts["TIMED_OUT"],
                     "inProgress": counts["IN_PROGRESS"], "inQueue": counts["IN_QUEUE"],
                     "retried": sum(j.retries for j in self._jobs.values())},
            "workers": {"idle": len(live) - running, "running": running, "ready": len(live),
                        "initializing": 0, "throttled": 0,
                        "unhealthy": sum(1 for w in self._workers.values() if w.lost or w.vanished)}})

    async def _h_purge(self, request: Any) -> Any:
        if ((resp := self._fault("purge-queue", request)) is not None
                or (resp := self._auth(request, "purge-queue")) is not None):
            return resp
        now, removed = time.time(), 0
        for job_id in list(self._queue):
            self._finish(self._jobs[job_id], "CANCELLED", now)
            removed += 1
        return self._json("purge-queue", {"removed": removed, "status": "completed"})

    async def _h_state(self, request: Any) -> Any:
        return self._json("state", {"jobs": [j.snapshot() for j in self._jobs.values()],
                                    "workers": {w.id: w.snapshot() for w in self._workers.values()},
                                    "responses": [[route, status, n] for (route, status), n in self.responses.items()],
                                    "requests": dict(self.requests)})

    # -- worker API ---------------------------------------------------------------------------------------------
    async def _h_take(self, request: Any) -> Any:
        from aiohttp import web

        if ((resp := self._fault("job-take", request)) is not None
                or (resp := self._worker_auth(request, "job-take")) is not None):
            return resp
        worker = self._seen(request.match_info["worker_id"])
        batch_route = "/job-take-batch/" in request.path
        try:
            batch = max(1, int(request.query.get("batch_size", "1"))) if batch_route else 1
        except ValueError:
            batch = 1
        jobs: list[SimJob] = [] if worker.vanished else self._pop(worker, batch)
        if not jobs and not self._closing:
            future = asyncio.get_running_loop().create_future()
            taker = _Taker(worker, future, batch, request)
            if not worker.vanished:
                self._takers.append(taker)
            worker.polls_open += 1
            deadline = time.monotonic() + self.take_hold_s
            try:
                while not future.done() and time.monotonic() < deadline:
                    await asyncio.wait({future}, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                    if request.transport is not None and not worker.vanished:
                        worker.last_seen = time.time()  # a long poll held open is a sign of life
            finally:
                worker.polls_open -= 1
                if future.done():
                    jobs = future.result()
                else:
                    future.set_result([])  # closed: _dispatch skips it
                    jobs = []
            if not worker.vanished:
                self._seen(worker.id)
        if not jobs:
            self.responses[("job-take", 204)] += 1
            return web.Response(status=204)
        docs = [{"id": j.id, "input": j.input} for j in jobs]
        return self._json("job-take", docs if batch_route else docs[0])

    async def _h_stop(self, request: Any) -> Any:
        from aiohttp import web

        if ((resp := self._fault("job-stop", request)) is not None
                or (resp := self._worker_auth(request, "job-stop")) is not None):
            return resp
        worker = self._seen(request.match_info["worker_id"])
        event = self._stop_events[worker.id]
        deadline = time.monotonic() + self.stop_hold_s
        while not self._closing:
            now = time.time()
            due = [job_id for job_id, delivered in worker.stops.items()
                   if job_id in worker.jobs and now - delivered >= self.stop_redeliver_s]
            if due and not worker.vanished:
                for job_id in due:
                    worker.stops[job_id] = now
                self._seen(worker.id)
                return self._json("job-stop", {"jobsToStop": due})
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass
            if request.transport is not None and not worker.vanished:
                worker.last_seen = time.time()
        self.responses[("job-stop", 204)] += 1
        return web.Response(status=204)

    async def _h_done(self, request: Any) -> Any:
        from aiohttp import web

        if ((resp := self._fault("job-done", request)) is not None
                or (resp := self._worker_auth(request, "job-done")) is not None):
            return resp
        worker = self._seen(request.match_info["worker_id"])
        job = self._jobs.get(request.match_info["job_id"])
        try:
            body = json.loads(await request.text())
        except ValueError:
            return self._json("job-done", {"error": "the body is not JSON"}, 400)
        if job is None:
            return self._json("job-done", {"error": "job not found"}, 404)
        now = time.time()
        progress = isinstance(body, dict) and body.get("status") == "IN_PROGRESS"
        current = job.status == "IN_PROGRESS" and job.worker_id == worker.id and not worker.vanished
        if not current:
            job.late_posts.append((now, "progress" if progress else "result", body))
            if not progress:
                worker.jobs.discard(job.id)
                worker.stops.pop(job.id, None)
                worker.stop_since.pop(job.id, None)
        elif progress:
            job.progress = body.get("output")
            job.progress_posts.append((now, body.get("output")))
        else:
            body = body if isinstance(body, dict) else {"output": body}
            job.output = body.get("output")
            if self._output_filter is not None and not body.get("error"):
                job.output = self._output_filter(job.input, job.output)
            if body.get("error"):
                self._finish(job, "FAILED", now, error=str(body["error"]), stop=False)
            else:
                self._finish(job, "COMPLETED", now, stop=False)
        self.responses[("job-done", 200)] += 1
        return web.Response(text="OK")

    async def _h_stream_post(self, request: Any) -> Any:
        from aiohttp import web

        if ((resp := self._fault("job-stream", request)) is not None
                or (resp := self._worker_auth(request, "job-stream")) is not None):
            return resp
        self._seen(request.match_info["worker_id"])
        job = self._jobs.get(request.match_info["job_id"])
        if job is None:
            return self._json("job-stream", {"error": "job not found"}, 404)
        try:
            body = json.loads(await request.text())
        except ValueError:
            return self._json("job-stream", {"error": "the body is not JSON"}, 400)
        if job.status == "IN_PROGRESS":
            job.stream.append(body.get("output") if isinstance(body, dict) else body)
        return web.Response(text="OK")

    async def _h_ping(self, request: Any) -> Any:
        from aiohttp import web

        if ((resp := self._fault("ping", request)) is not None
                or (resp := self._worker_auth(request, "ping")) is not None):
            return resp
        worker = self._seen(request.match_info["worker_id"])
        worker.pings += 1
        listed = {j for j in (request.query.get("job_id") or "").split(",") if j}
        worker.pinged_jobs = listed
        for job_id, delivered in list(worker.stops.items()):
            if delivered and job_id not in listed:  # the worker has let go of a job it was told to stop
                worker.stops.pop(job_id, None)
                worker.stop_since.pop(job_id, None)
                worker.jobs.discard(job_id)
        return web.Response(text="OK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpo.testing.runpod_sim", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--endpoint-id", default="sim")
    parser.add_argument("--worker-timeout", type=float, default=5.0, help="seconds of silence before a worker is lost")
    parser.add_argument("--take-hold", type=float, default=10.0, help="seconds a job-take long poll is held")
    parser.add_argument("--lost-jobs", choices=("fail", "requeue"), default="fail")
    parser.add_argument("--no-rate-limits", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON line with the URLs and the worker key")
    parser.add_argument("--workers", type=int, default=0, help="also start this many handler.py workers")
    args = parser.parse_args(argv)
    sim = RunPodSimulator(endpoint_id=args.endpoint_id, api_key=os.environ.get("HPO_SIM_API_KEY") or None,
                          port=args.port, worker_timeout_s=args.worker_timeout, take_hold_s=args.take_hold,
                          lost_jobs=args.lost_jobs, rate_limits=not args.no_rate_limits).start()
    if args.json:
        print(json.dumps({"url": sim.url, "endpoint_url": sim.endpoint_url, "worker_key": sim.worker_key,
                          "pid": os.getpid()}), flush=True)
    else:
        print(f"endpoint: {sim.endpoint_url}", flush=True)
        print("worker environment:", flush=True)
        for key, value in sim.worker_env("sim-worker-1").items():
            print(f"  {key}={value}", flush=True)
    procs = start_workers(sim, args.workers, wait=False) if args.workers else []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(procs)
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
