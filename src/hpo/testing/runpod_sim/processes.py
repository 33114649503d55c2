"""Processes around the loopback RunPod simulator (import these names from :mod:`hpo.testing.runpod_sim`):

- :class:`WorkerProcess` / :func:`start_workers` / :func:`stop_workers`: real ``python runpod_worker/handler.py``
  processes (the unmodified ``runpod`` SDK worker loop), started with the simulator's webhook environment and killed
  like machines that disappear;
- :class:`SimulatorProcess`: the control plane in a process of its own (read-only view), as the real one is;
- :func:`worker_environment` and the waiting helpers both kinds of simulator share (``_Reader``).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "HANDLER_PATH", "worker_environment", "WorkerProcess", "start_workers", "stop_workers",
           "SimulatorProcess"]

REPO_ROOT = Path(__file__).resolve().parents[4]
HANDLER_PATH = REPO_ROOT / "runpod_worker" / "handler.py"


def worker_environment(endpoint_url: str, worker_key: str, worker_id: str, *,
                       ping_interval_ms: int = 1000) -> dict[str, str]:
    """The environment that makes the SDK's worker loop serve ``endpoint_url`` as ``worker_id``."""
    return {
        "RUNPOD_WEBHOOK_GET_JOB": f"{endpoint_url}/job-take/$ID?sim=1",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{endpoint_url}/job-done/$RUNPOD_POD_ID/$ID?sim=1",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{endpoint_url}/job-stream/$RUNPOD_POD_ID/$ID?sim=1",
        "RUNPOD_WEBHOOK_PING": f"{endpoint_url}/ping/$RUNPOD_POD_ID",
        "RUNPOD_PING_INTERVAL": str(max(1000, ping_interval_ms)),  # the SDK sleeps interval // 1000 seconds
        "RUNPOD_POD_ID": worker_id,
        "RUNPOD_AI_API_KEY": worker_key,
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",  # the SDK's checks probe 8.8.8.8; tests stay on loopback
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "RUNPOD_LOG_LEVEL": "INFO",
    }


class _Reader:
    """Waiting helpers shared by the in-process simulator and SimulatorProcess."""

    endpoint_url: str
    worker_key: str
    take_hold_s: float = 10.0  # how long a job-take long poll is held

    def jobs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def workers(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        return dict(collections.Counter(j["status"] for j in self.jobs()))

    def worker_env(self, worker_id: str, *, ping_interval_ms: int = 1000) -> dict[str, str]:
        return worker_environment(self.endpoint_url, self.worker_key, worker_id, ping_interval_ms=ping_interval_ms)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 60.0, interval: float = 0.05,
                 what: str = "the condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(interval)
        raise TimeoutError(f"the simulator did not reach {what} within {timeout:g} s; jobs: {self.counts()}, "
                           f"workers: {sorted(self.workers())}")

    def wait_workers(self, n: int, timeout: float = 120.0) -> None:
        """Wait until ``n`` live workers have asked for jobs."""
        self.wait_for(lambda s: sum(1 for w in s.workers().values() if not w["lost"] and not w["vanished"]) >= n,
                      timeout, what=f"{n} ready workers")


class WorkerProcess:
    """One real worker: ``python <handler>`` with the SDK's webhook environment pointing at a simulator."""

    def __init__(self, sim: _Reader, worker_id: str, *, handler: str | os.PathLike[str] = HANDLER_PATH,
                 log_path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
                 ping_interval_ms: int = 1000) -> None:
        self.worker_id = worker_id
        self.handler = Path(handler)
        self.log_path = Path(log_path) if log_path else None
        full_env = dict(os.environ)
        for var in ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID"):  # the user's secrets never reach a worker
            full_env.pop(var, None)
        src = str(REPO_ROOT / "src")
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (src, full_env.get("PYTHONPATH", "")) if p)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        full_env.update(sim.worker_env(worker_id, ping_interval_ms=ping_interval_ms))
        full_env.update(env or {})
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-u", str(self.handler)], cwd=str(self.handler.parent),
                                     env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the worker and its children (the SDK's ping process) at once, like a machine that disappears."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to shut down (SIGTERM, as a container stop would), then kill what is left."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=max(0.01, timeout))
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                pass
        self.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the ping process, if the worker left it behind
        except (ProcessLookupError, PermissionError):
            pass
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def start_workers(sim: _Reader, n: int, *, log_dir: str | os.PathLike[str] | None = None,
                  handler: str | os.PathLike[str] = HANDLER_PATH, env: dict[str, str] | None = None,
                  prefix: str = "sim-worker", wait: bool = True, timeout: float = 180.0,
                  first: int = 1, ping_interval_ms: int = 1000) -> list[WorkerProcess]:
    """Start ``n`` worker processes named ``<prefix>-<i>`` and (by default) wait until each has asked for a job."""
    procs = []
    for i in range(first, first + n):
        worker_id = f"{prefix}-{i}"
        log_path = Path(log_dir) / f"{worker_id}.log" if log_dir else None
        procs.append(WorkerProcess(sim, worker_id, handler=handler, log_path=log_path, env=env,
                                   ping_interval_ms=ping_interval_ms))
    if wait:
        ids = {p.worker_id for p in procs}
        try:
            sim.wait_for(lambda s: ids <= {w for w, d in s.workers().items() if not d["lost"]} or
                         any(not p.alive() for p in procs), timeout, interval=0.2, what=f"{n} ready workers")
        except TimeoutError:
            stop_workers(procs)
            raise
        dead = [p for p in procs if not p.alive()]
        if dead:
            tail = dead[0].log_text()[-2000:]
            stop_workers(procs)
            raise RuntimeError(f"worker {dead[0].worker_id} exited with code {dead[0].proc.returncode}: {tail}")
    return procs


def stop_workers(procs: Iterable[WorkerProcess], grace_s: float = 1.0) -> None:
    """SIGTERM to every worker, then SIGKILL to whatever still runs after ``grace_s`` (the SDK loop can sit in a long
    poll for several seconds before it notices a shutdown)."""
    procs = list(procs)
    for p in procs:
        if p.alive():
            try:
                os.killpg(p.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.stop(timeout=max(0.0, deadline - time.monotonic()))


class SimulatorProcess(_Reader):
    """The simulator in a process of its own, as the real control plane is: it does not share the client's
    interpreter (the dispatch benchmark uses this). Read-only view: jobs(), workers(), counts(), responses()."""

    def __init__(self, *, endpoint_id: str = "sim", api_key: str | None = None, worker_timeout_s: float = 5.0,
                 take_hold_s: float = 10.0, lost_jobs: str = "fail", rate_limits: bool = True,
                 start_timeout_s: float = 60.0) -> None:
        self.take_hold_s = take_hold_s
        args = [sys.executable, "-m", "hpo.testing.runpod_sim", "--port", "0", "--json", "--endpoint-id", endpoint_id,
                "--worker-timeout", str(worker_timeout_s), "--take-hold", str(take_hold_s), "--lost-jobs", lost_jobs]
        if not rate_limits:
            args.append("--no-rate-limits")
        env = dict(os.environ)
        if api_key:
            env["HPO_SIM_API_KEY"] = api_key  # not on the command line, where `ps` would show it
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = ""
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline and not line.startswith("{"):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"the simulator process exited with code {self.proc.returncode}")
        info = json.loads(line)
        self.url, self.endpoint_url, self.worker_key = info["url"], info["endpoint_url"], info["worker_key"]
        self.endpoint_id = endpoint_id
        import requests

        self._session = requests.Session()

    def _state(self) -> dict[str, Any]:
        return self._session.get(f"{self.endpoint_url}/_sim/state", timeout=30).json()

    def jobs(self) -> list[dict[str, Any]]:
        return self._state()["jobs"]

    def workers(self) -> dict[str, dict[str, Any]]:
        return self._state()["workers"]

    def responses(self) -> dict[tuple[str, int], int]:
        return {(route, status): n for route, status, n in self._state()["responses"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._session.close()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
