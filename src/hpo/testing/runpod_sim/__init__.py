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

Modules: ``server`` (RunPodSimulator: lifecycle, the views tests read, faults), ``jobs`` (the job state machine),
``client_routes`` and ``worker_routes`` (the two APIs), ``processes`` (WorkerProcess, SimulatorProcess),
``fake_worker`` (FakeWorker, completed_output), ``__main__`` (the command line).
"""

from .fake_worker import FakeWorker, completed_output
from .jobs import DROPS, RATE_LIMITS, ROUTES, TERMINAL, SimJob, SimWorker
from .processes import (HANDLER_PATH, REPO_ROOT, SimulatorProcess, WorkerProcess, start_workers, stop_workers,
                        worker_environment)
from .server import RunPodSimulator

__all__ = ["RunPodSimulator", "SimulatorProcess", "SimJob", "SimWorker", "WorkerProcess", "FakeWorker",
           "completed_output", "start_workers", "stop_workers", "worker_environment", "REPO_ROOT", "HANDLER_PATH",
           "TERMINAL", "RATE_LIMITS", "ROUTES", "DROPS", "main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m hpo.testing.runpod_sim``."""
    from .__main__ import main as run

    return run(argv)
