"""FakeWorker: a worker played by a thread through the simulator's worker routes (job-take, job-done, ping), for
tests where training is not the point; :func:`completed_output`: the body of a completed trial with in-range numbers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from .processes import _Reader

__all__ = ["FakeWorker", "completed_output"]


def completed_output(job_input: dict[str, Any], *, worker: str = "fake", **changes: Any) -> dict[str, Any]:
    """The /job-done body of a completed trial for ``job_input`` (a TrialJob dict): in-range numbers for every epoch
    of its ``max_epochs``; ``changes`` replace TrialResult fields (e.g. ``val_metrics={"accuracy": 7.5}``)."""
    from ...protocol import TrialResult

    epochs = int(job_input.get("max_epochs", 1)) if isinstance(job_input, dict) else 1
    base = 0.5 + (int(job_input.get("seed", 0)) % 17) / 100.0 if isinstance(job_input, dict) else 0.5
    history = {"loss": [1.0 / e for e in range(1, epochs + 1)],
               "accuracy": [base + 0.01 * e for e in range(1, epochs + 1)],
               "val_loss": [1.1 / e for e in range(1, epochs + 1)],
               "val_accuracy": [base + 0.005 * e for e in range(1, epochs + 1)]}
    fields: dict[str, Any] = dict(
        trial_id=str(job_input.get("trial_id", "?")) if isinstance(job_input, dict) else "?", status="completed",
        history=history, epochs_run=epochs, best_epoch=epochs,
        val_metrics={"accuracy": history["val_accuracy"][-1], "loss": history["val_loss"][-1]},
        test_metrics={"accuracy": history["val_accuracy"][-1], "loss": history["val_loss"][-1]},
        param_count=1000, train_seconds=0.01, executed_on=f"runpod:{worker}", device="fake")
    fields.update(changes)
    return {"output": {"trial_result": TrialResult(**fields).to_dict()}}


class FakeWorker:
    """A worker played by a thread through the simulator's worker routes: it long-polls ``job-take``, calls
    ``answer(job_input)`` for each job and posts what that returns to ``job-done`` (``{"output": ...}`` completes the
    job, ``{"error": ...}`` fails it). ``answer`` returning None holds the job (the worker keeps pinging, so the
    control plane sees it alive) until :meth:`release`. Takes jobs without limit; :meth:`stop` ends the thread."""

    def __init__(self, sim: _Reader, worker_id: str = "fake-1",
                 answer: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None, *,
                 ping_s: float = 0.5) -> None:
        import requests

        self.sim, self.worker_id, self.ping_s = sim, worker_id, ping_s
        self.answer = answer or (lambda job_input: completed_output(job_input, worker=worker_id))
        self.base = sim.endpoint_url
        self.http = requests.Session()
        self.http.headers["Authorization"] = sim.worker_key
        self.taken: list[dict[str, Any]] = []  # every job taken, in order
        self.held: dict[str, dict[str, Any]] = {}  # job id -> job, held until release()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._takes = threading.Thread(target=self._take_loop, name=f"{worker_id}-take", daemon=True)
        self._pings = threading.Thread(target=self._ping_loop, name=f"{worker_id}-ping", daemon=True)
        self._takes.start()
        self._pings.start()

    def _url(self, route: str) -> str:
        return f"{self.base}/{route}"

    def _take_loop(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.http.get(self._url(f"job-take/{self.worker_id}?sim=1&job_in_progress=0"), timeout=60)
            except Exception as exc:  # noqa: BLE001 - the simulator stopped, or a fault: try again
                self.errors.append(f"take: {type(exc).__name__}")
                self._stop.wait(0.2)
                continue
            if r.status_code != 200:
                if r.status_code != 204:
                    self._stop.wait(0.1)
                continue
            job = r.json()
            with self._lock:
                self.taken.append(job)
            body = self.answer(job["input"])
            if body is None:
                with self._lock:
                    self.held[job["id"]] = job
            else:
                self.post(job["id"], body)

    def _ping_loop(self) -> None:
        while not self._stop.wait(self.ping_s):
            with self._lock:
                ids = ",".join(self.held)
            try:
                self.http.get(self._url(f"ping/{self.worker_id}?job_id={ids}&runpod_version=fake"), timeout=10)
            except Exception:  # noqa: BLE001
                pass

    def post(self, job_id: str, body: dict[str, Any]) -> None:
        """Answer a job (a result, an error, or a progress update ``{"status": "IN_PROGRESS", "output": ...}``)."""
        try:
            self.http.post(self._url(f"job-done/{self.worker_id}/{job_id}?sim=1&isStream=false"),
                           data=json.dumps(body), timeout=30)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"post: {type(exc).__name__}")

    def release(self, answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
        """Answer every held job (with ``answer``, default: the worker's ``answer`` or a completed result)."""
        with self._lock:
            held, self.held = self.held, {}
        for job_id, job in held.items():
            body = (answer or self.answer)(job["input"]) or completed_output(job["input"], worker=self.worker_id)
            self.post(job_id, body)
        return len(held)

    def stop(self) -> None:
        self._stop.set()
        self._takes.join(timeout=max(15.0, self.sim.take_hold_s + 5))
        self._pings.join(timeout=5)
        self.http.close()

    def __enter__(self) -> FakeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
