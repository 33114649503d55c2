"""LocalBackend: trials run in persistent worker subprocesses (``hpo.backends._worker``).

Why processes, not threads: Keras/TensorFlow graphs are not safe to build concurrently from threads, and a process
gives every trial a clean session. TensorFlow is imported once per worker; a worker is recycled after
``max_trials_per_worker`` trials (twice that many before a job with a time limit, which would pay the new worker's
start out of its own seconds) or when its memory passes ``max_worker_rss_mb``, so memory does not grow over a long
run. A trial that crashes its worker or runs past its time limit fails alone; the worker is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..exceptions import BackendUnavailable
from ..protocol import EpochReport, TrialJob, TrialResult
from ._base import Backend, CancelToken, EpochHandler, started_late

__all__ = ["LocalBackend", "EXIT_GRACE_S"]

#: seconds idle workers get to exit when the backend closes, all together; then they are killed
EXIT_GRACE_S = 2.0

log = logging.getLogger(__name__)

_SRC_DIR = str(Path(__file__).resolve().parents[2])  # the folder holding the `hpo` package


class _WorkerProcess:
    """One trainer subprocess plus a thread that turns its stdout lines into messages."""

    def __init__(self, index: int, log_path: Path, env: dict[str, str]) -> None:
        self.index = index
        self.log_path = log_path
        self.trials_done = 0
        self.rss_mb = 0.0
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed in kill()/close()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "hpo.backends._worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, env=env, text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"hpo-local-worker-{index}", daemon=True)
        self._reader.start()
        self.pid = self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                try:
                    self.messages.put(json.loads(line))
                except json.JSONDecodeError:
                    log.debug("worker %s wrote a non-protocol line: %r", self.index, line[:200])
        except (OSError, ValueError):  # the pipe was closed under us (the worker was killed)
            pass
        finally:
            self.messages.put({"type": "eof"})

    def send(self, message: dict[str, Any]) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float) -> None:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise BackendUnavailable(f"local worker did not start within {timeout:.0f} s; see {self.log_path}") from None
        if message.get("type") != "ready":
            self.kill()
            raise BackendUnavailable(f"local worker failed to start (exit code {self.proc.poll()}): "
                                     f"{self.log_tail()}; full log: {self.log_path}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def kill(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._close_pipes()

    def close(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.send({"type": "exit"})
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        self._log.close()


class LocalBackend(Backend):
    """Runs each trial in one of ``workers`` persistent subprocesses."""

    name = "local"

    def __init__(self, workers: int = 1, *, log_dir: str | os.PathLike[str] | None = None,
                 max_trials_per_worker: int = 25, max_worker_rss_mb: float = 6000.0,
                 stop_grace_s: float = 120.0, start_timeout_s: float = 180.0,
                 tf_threads: int | None = None, env: dict[str, str] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="hpo-workers-"))
        self.max_trials_per_worker = max_trials_per_worker
        self.max_worker_rss_mb = max_worker_rss_mb
        self.stop_grace_s = stop_grace_s
        self.start_timeout_s = start_timeout_s
        self._env = self._child_env(tf_threads, env)
        self._idle: queue.Queue[_WorkerProcess | None] = queue.Queue()
        self._all: set[_WorkerProcess] = set()
        self._busy: set[_WorkerProcess] = set()  # running a trial now
        self._lock = threading.Lock()
        self._counter = 0
        self._started = False
        self._closed = False

    @staticmethod
    def _child_env(tf_threads: int | None, extra: dict[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC_DIR, env.get("PYTHONPATH", "")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        if tf_threads:
            env["HPO_TF_THREADS"] = str(tf_threads)
        env.update(extra or {})
        return env

    # -- pool --------------------------------------------------------------------------------------------------------
    def _spawn(self) -> _WorkerProcess:
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the local backend is closed")
            self._counter += 1
            index = self._counter
        self.log_dir.mkdir(parents=True, exist_ok=True)
        worker = _WorkerProcess(index, self.log_dir / f"worker-{index}.log", self._env)
        with self._lock:
            self._all.add(worker)
        worker.wait_ready(self.start_timeout_s)
        return worker

    def _retire(self, worker: _WorkerProcess, *, kill: bool) -> None:
        worker.kill() if kill else worker.close()
        with self._lock:
            self._all.discard(worker)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for _ in range(self.workers):
            self._idle.put(None)  # a slot; the worker process is started on first use
        # start the workers in parallel now, so the first trials do not each wait for a TensorFlow import
        errors: list[BaseException] = []

        def warm() -> None:
            try:
                self._idle.put(self._spawn())
                self._idle.get_nowait()  # take one empty slot out for the live worker we put in
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=warm, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.close()
            raise errors[0]

    def _acquire(self, job: TrialJob | None = None) -> _WorkerProcess:
        if self._closed:
            raise BackendUnavailable("the local backend is closed")
        if not self._started:
            self.start()
        while True:
            slot = self._idle.get()
            if slot is not None and slot.alive() and self._worn_out(slot, job):
                log.info("recycling local worker %s after %s trials", slot.index, slot.trials_done)
                self._retire(slot, kill=False)
                slot = None
            if slot is not None and slot.alive():
                return slot
            if slot is not None:
                self._retire(slot, kill=True)
            try:
                return self._spawn()
            except BaseException:
                self._idle.put(None)
                raise

    def _worn_out(self, worker: _WorkerProcess, job: TrialJob | None) -> bool:
        """Recycle ``worker`` before it runs ``job``? After ``max_trials_per_worker`` trials; a job with a time limit
        (time_budget_minutes) would pay the new worker's start (a TensorFlow import) out of its own seconds, so it
        keeps the worker up to twice that many (memory stays bounded by ``max_worker_rss_mb`` at every release)."""
        limit = self.max_trials_per_worker * (2 if job is not None and job.time_limit_s is not None else 1)
        return worker.trials_done >= limit

    def _release(self, worker: _WorkerProcess | None) -> None:
        if worker is not None and worker.rss_mb > self.max_worker_rss_mb:
            log.info("recycling local worker %s after %s trials (%.0f MB)", worker.index, worker.trials_done,
                     worker.rss_mb)
            self._retire(worker, kill=False)
            worker = None
        self._idle.put(worker)  # one worn out by its trial count is recycled when the next job is known (_acquire)

    # -- trials ------------------------------------------------------------------------------------------------------
    def run(self, job: TrialJob, *, on_epoch: EpochHandler | None = None, cancel: CancelToken | None = None,
            timeout_s: float | None = None, save_model_to: str | None = None) -> TrialResult:
        called = time.monotonic()
        worker = self._acquire(job)  # may start a worker process (a TensorFlow import: seconds of the trial's limit)
        with self._lock:
            self._busy.add(worker)
        try:
            return self._run_on(worker, started_late(job, called), on_epoch, cancel, timeout_s, save_model_to)
        finally:
            with self._lock:
                self._busy.discard(worker)

    def _run_on(self, worker: _WorkerProcess, job: TrialJob, on_epoch: EpochHandler | None,
                cancel: CancelToken | None, timeout_s: float | None, save_model_to: str | None) -> TrialResult:
        started = time.monotonic()
        where = f"local:worker-{worker.index} (pid {worker.pid})"
        if not worker.send({"type": "run", "job": job.to_dict(), "save_model_to": save_model_to,
                            "executed_on": where}):
            self._retire(worker, kill=True)
            self._release(None)
            return TrialResult(trial_id=job.trial_id, status="failed", executed_on=where,
                               error=f"local worker {worker.index} died before the trial started")
        stop_sent_at: float | None = None
        try:
            while True:
                try:
                    message: dict[str, Any] | None = worker.messages.get(timeout=0.1)
                except queue.Empty:
                    message = None
                now = time.monotonic()
                kind = message.get("type") if message else None
                if kind == "epoch":
                    report = EpochReport.from_dict(message["report"])  # type: ignore[index]
                    if on_epoch is not None:
                        try:
                            on_epoch(report)
                        except Exception:  # noqa: BLE001 - a faulty listener must not lose the trial
                            log.exception("epoch listener failed for %s", job.trial_id)
                    stop = cancel is not None and cancel.cancelled
                    worker.send({"type": "stop" if stop else "continue", "trial_id": job.trial_id,
                                 "epoch": report.epoch, "discard": stop and cancel.discard})  # type: ignore[union-attr]
                    if stop and stop_sent_at is None:
                        stop_sent_at = now
                elif kind == "result":
                    worker.trials_done += 1
                    worker.rss_mb = float(message.get("rss_mb") or 0.0)  # type: ignore[union-attr]
                    self._release(worker)
                    return TrialResult.from_dict(message["result"])  # type: ignore[index]
                elif kind == "eof":
                    code = worker.proc.wait()
                    tail = worker.log_tail()
                    self._retire(worker, kill=True)
                    self._release(None)
                    if cancel is not None and cancel.cancelled:
                        return self._stopped(job, where, started, cancel.reason or "cancelled")
                    if self._closed:  # close() stopped it
                        return self._stopped(job, where, started, "the local backend was closed")
                    return TrialResult(
                        trial_id=job.trial_id, status="failed", executed_on=where, train_seconds=now - started,
                        error=f"the worker process crashed during the trial (exit code {code}); "
                              f"last log lines: {tail}; full log: {worker.log_path}")
                if timeout_s is not None and now - started > timeout_s:
                    self._retire(worker, kill=True)
                    self._release(None)
                    return TrialResult(trial_id=job.trial_id, status="failed", executed_on=where,
                                       train_seconds=now - started,
                                       error=f"the trial ran past its time limit of {timeout_s:g} s and was stopped")
                if cancel is not None and cancel.cancelled:
                    # soft: the worker stops after the batch in training (told now) or at its next epoch decision;
                    # hard, or past the grace: kill it now
                    if stop_sent_at is None:
                        stop_sent_at = now
                        worker.send({"type": "stop", "trial_id": job.trial_id, "now": True,
                                     "discard": cancel.discard})
                    if cancel.hard or now - stop_sent_at > self.stop_grace_s:
                        self._retire(worker, kill=True)
                        self._release(None)
                        return self._stopped(job, where, started, cancel.reason or "cancelled")
        except BaseException:
            self._retire(worker, kill=True)
            self._release(None)
            raise

    @staticmethod
    def _stopped(job: TrialJob, where: str, started: float, reason: str) -> TrialResult:
        return TrialResult(trial_id=job.trial_id, status="stopped", executed_on=where,
                           train_seconds=time.monotonic() - started, error=reason)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(w.pid for w in self._all if w.alive())

    def probe(self) -> str | None:
        return "the local backend is closed" if self._closed else None

    def close(self) -> None:
        """Trials still running are stopped at once (their ``run`` returns ``stopped``); idle workers are asked to
        exit all at once and killed after :data:`EXIT_GRACE_S` (an idle worker holds nothing unsaved; one that ran
        many trials takes seconds to tear TensorFlow down, and a run's end is inside its time budget)."""
        with self._lock:
            self._closed = True
            workers, busy = list(self._all), set(self._busy)
        idle = [w for w in workers if w not in busy and w.alive()]
        for worker in workers:
            if worker not in idle:
                self._retire(worker, kill=True)
        for worker in idle:
            worker.send({"type": "exit"})
        until = time.monotonic() + EXIT_GRACE_S
        for worker in idle:
            try:
                worker.proc.wait(timeout=max(0.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._retire(worker, kill=True)  # kill() leaves an exited worker alone and closes its pipes
