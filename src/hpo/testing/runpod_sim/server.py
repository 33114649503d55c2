"""RunPodSimulator: the control plane served from a background thread on 127.0.0.1 (aiohttp), its lifecycle, the
thread-safe views tests read, and fault injection. The routes and the job state machine are mixins: client_routes,
worker_routes, jobs."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from .client_routes import ClientRoutes
from .jobs import DROPS, RATE_LIMITS, ROUTES, Fault, JobStateMachine, SimJob, SimWorker, Taker
from .processes import _Reader
from .worker_routes import WorkerRoutes

__all__ = ["RunPodSimulator"]


class RunPodSimulator(JobStateMachine, ClientRoutes, WorkerRoutes, _Reader):
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
        self._takers: collections.deque[Taker] = collections.deque()
        self._stop_events: dict[str, asyncio.Event] = {}
        self._faults: list[Fault] = []
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
        self._call(self._faults.append, Fault(route, status, count, rate, text, header))

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

    # -- plumbing (event loop thread) -------------------------------------------------------------------------
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
