"""The simulator's worker API: what the unmodified ``runpod`` SDK worker loop talks to when
``RUNPOD_WEBHOOK_GET_JOB`` points at the simulator (job-take long polls, job-stop, job-done, job-stream, ping)."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any

from .jobs import SimJob, Taker

__all__ = ["WorkerRoutes"]


class WorkerRoutes:
    """Request handlers of the worker API (a mixin of RunPodSimulator)."""

    take_hold_s: float
    stop_hold_s: float
    stop_redeliver_s: float
    _closing: bool
    _jobs: dict[str, SimJob]
    _takers: collections.deque[Taker]
    _stop_events: dict[str, asyncio.Event]
    _output_filter: Any
    responses: collections.Counter[tuple[str, int | str]]

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
            taker = Taker(worker, future, batch, request)
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
