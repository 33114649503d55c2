"""The simulator's client API, under ``/v2/<endpoint id>``: what RunPodBackend talks to (run, status, stream, cancel,
health, purge-queue, and the simulator's own ``_sim/state``)."""

from __future__ import annotations

import collections
import json
import time
import uuid
from typing import Any

from .jobs import TERMINAL, SimJob

__all__ = ["ClientRoutes"]


class ClientRoutes:
    """Request handlers of the client API (a mixin of RunPodSimulator)."""

    _jobs: dict[str, SimJob]
    _queue: collections.deque[str]
    _workers: dict[str, Any]
    requests: collections.Counter[str]
    responses: collections.Counter[tuple[str, int | str]]

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
