"""RunPodBackend (the HTTP client) against the simulator, with a scripted worker speaking the SDK's worker API.

Covers the client's contract: statuses mapped to results that keep the worker's text, progress forwarded once per
epoch, cancel and time limits, retries of 429 / 5xx, resubmission after a lost worker, adaptive polling, and a key
that never shows up in messages or logs.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time

import pytest
import requests

from hpo.backends import CancelToken
from hpo.backends.runpod import RunPodBackend, make_runpod_backend
from hpo.config import OptimizationConfig
from hpo.exceptions import BackendUnavailable
from hpo.protocol import EpochReport, TrialJob, TrialResult
from hpo.testing.runpod_sim import RunPodSimulator

KEY = "rpa_TESTKEY_do_not_log_7c1f"
PARAMS = {"filters": 8}


@pytest.fixture
def sim():
    with RunPodSimulator(api_key=KEY, take_hold_s=2.0, worker_timeout_s=3.0) as s:
        yield s


def job(n: int = 0, epochs: int = 3) -> TrialJob:
    return TrialJob(trial_id=f"run#{n}", dataset="synthetic_images", params=PARAMS, max_epochs=epochs, seed=n)


def backend(sim, **kw) -> RunPodBackend:
    kw.setdefault("backoff_s", 0.02)
    b = RunPodBackend(sim.endpoint_url, KEY, **kw)
    b.start()
    return b


class ScriptedWorker:
    """Plays the worker side of the protocol by hand (the real SDK loop is in test_runpod_dispatch/e2e)."""

    def __init__(self, sim: RunPodSimulator, worker_id: str = "scripted-1") -> None:
        self.sim, self.worker_id = sim, worker_id
        self.http = requests.Session()
        self.http.headers["Authorization"] = sim.worker_key
        self.base = sim.endpoint_url
        self.taken: dict[str, float] = {}

    def take(self, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.http.get(f"{self.base}/job-take/{self.worker_id}?sim=1&job_in_progress=0", timeout=30)
            if r.status_code == 200:
                sdk_job = r.json()
                self.taken[sdk_job["id"]] = time.monotonic()
                return sdk_job
        raise AssertionError("no job to take")

    def post(self, job_id: str, body: dict) -> None:
        r = self.http.post(f"{self.base}/job-done/{self.worker_id}/{job_id}?sim=1&isStream=false",
                           data=json.dumps(body), timeout=10)
        r.raise_for_status()

    def progress(self, sdk_job: dict, epochs: int, eta_s: float = 5.0) -> None:
        trial = sdk_job["input"]
        reports = [EpochReport(trial_id=trial["trial_id"], epoch=e, metrics={"val_accuracy": 0.1 * e}).to_dict()
                   for e in range(1, epochs + 1)]
        self.post(sdk_job["id"], {"status": "IN_PROGRESS", "output": {"hpo_progress": {
            "trial_id": trial["trial_id"], "worker": f"runpod:{self.worker_id}", "epochs": reports,
            "elapsed_s": time.monotonic() - self.taken[sdk_job["id"]], "eta_s": eta_s, "training_done": False}}})

    def complete(self, sdk_job: dict, *, trial_id: str | None = None, epochs: int = 3) -> None:
        trial = sdk_job["input"]
        result = TrialResult(trial_id=trial_id or trial["trial_id"], status="completed",
                             history={"val_accuracy": [0.1 * e for e in range(1, epochs + 1)]}, epochs_run=epochs,
                             best_epoch=epochs, val_metrics={"accuracy": 0.1 * epochs},
                             executed_on=f"runpod:{self.worker_id}")
        self.post(sdk_job["id"], {"output": {"trial_result": result.to_dict()}})

    def stop_signals(self) -> list[str]:
        r = self.http.get(f"{self.base}/job-stop/{self.worker_id}?sim=1", timeout=30)
        return r.json()["jobsToStop"] if r.status_code == 200 else []


class Run:
    """backend.run in a thread, so the test can play the worker meanwhile."""

    def __init__(self, b: RunPodBackend, trial: TrialJob, **kw) -> None:
        self.epochs: list[EpochReport] = []
        self.result: TrialResult | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = b.run(trial, on_epoch=self.epochs.append, **kw)
            except BaseException as exc:  # noqa: BLE001
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = 30.0) -> TrialResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "backend.run did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def test_a_completed_job_gives_the_workers_result_and_every_epoch_once(sim):
    b = backend(sim)
    run = Run(b, job(0, epochs=4))
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    assert sdk_job["input"] == job(0, epochs=4).to_dict()
    worker.progress(sdk_job, 1)
    time.sleep(0.4)
    worker.progress(sdk_job, 2)  # cumulative: epochs 1 and 2
    time.sleep(0.4)
    worker.progress(sdk_job, 2)  # the same again: nothing new
    worker.complete(sdk_job, epochs=4)  # epochs 3-4 only in the result's history
    result = run.wait()
    assert result.status == "completed" and result.trial_id == "run#0"
    assert result.executed_on == "runpod:scripted-1"
    assert result.details["runpod"]["job_id"] == sdk_job["id"]
    assert [r.epoch for r in run.epochs] == [1, 2, 3, 4]
    status = sim.job(sdk_job["id"])
    assert status["status"] == "COMPLETED"
    body = sim.jobs()[0]
    assert body["execution_timeout_s"] == pytest.approx(3600.0)  # the executionTimeout policy was sent


def test_a_result_for_another_trial_is_never_credited(sim):
    b = backend(sim, resubmits=0)
    run = Run(b, job(1))
    worker = ScriptedWorker(sim)
    worker.complete(worker.take(), trial_id="run#0")
    result = run.wait()
    assert result.status == "failed" and "answered for trial 'run#0'" in result.error


def test_a_rejected_job_is_a_failed_trial_with_the_workers_text(sim):
    b = backend(sim)
    run = Run(b, job(2))
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    worker.post(sdk_job["id"], {"error": "invalid TrialJob: field 'seed' must be integer", "output":
                                {"error_kind": "invalid_input"}})
    result = run.wait()
    assert result.status == "failed" and "field 'seed' must be integer" in result.error
    assert len(sim.jobs()) == 1  # not resubmitted: it would fail again


def test_a_handler_exception_is_a_failed_trial_with_type_and_message(sim):
    b = backend(sim)
    run = Run(b, job(3))
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    error = json.dumps({"error_type": "<class 'MemoryError'>", "error_message": "CUDA out of memory",
                        "error_traceback": "Traceback...\n  File x\nMemoryError: CUDA out of memory"})
    worker.post(sdk_job["id"], {"error": error})
    result = run.wait()
    assert result.status == "failed" and "MemoryError: CUDA out of memory" in result.error


def test_a_lost_worker_is_resubmitted_then_reported_unavailable(sim):
    b = backend(sim, resubmits=1)
    run = Run(b, job(4))
    worker = ScriptedWorker(sim, "doomed")
    first = worker.take()
    worker.progress(first, 1)
    sim.wait_for(lambda s: len(run.epochs) == 1, 10, what="epoch 1 forwarded")
    sim.vanish_worker("doomed")
    other = ScriptedWorker(sim, "healthy")
    second = other.take()
    assert second["id"] != first["id"] and second["input"] == first["input"]
    sim.vanish_worker("healthy")
    with pytest.raises(BackendUnavailable) as info:
        run.wait()
    assert "doomed vanished" in str(info.value) and "healthy vanished" in str(info.value)
    assert [r.epoch for r in run.epochs] == [1]


def test_a_lost_worker_then_a_good_one_completes_the_trial(sim):
    b = backend(sim, resubmits=1)
    run = Run(b, job(5))
    ScriptedWorker(sim, "doomed").take()
    sim.vanish_worker("doomed")
    other = ScriptedWorker(sim, "healthy")
    other.complete(other.take())
    result = run.wait()
    assert result.status == "completed" and result.executed_on == "runpod:healthy"
    assert [j["status"] for j in sim.jobs()] == ["FAILED", "COMPLETED"]


def test_the_endpoints_execution_timeout_fails_the_trial_and_stops_the_worker(sim):
    b = backend(sim, execution_timeout_s=1.0)
    run = Run(b, job(6))
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    assert sdk_job["id"] in worker.stop_signals()  # held until the timeout, then the worker is told to stop
    result = run.wait()
    assert result.status == "failed" and "timed out" in result.error and "execution timeout" in result.error


def test_a_job_that_expires_in_the_queue_is_an_infrastructure_failure(sim):
    b = backend(sim, execution_timeout_s=0.3, queue_ttl_s=0.3, resubmits=0)
    with pytest.raises(BackendUnavailable, match="never picked up"):
        b.run(job(7))


def test_cancel_token_cancels_the_remote_job_and_keeps_the_epochs(sim):
    b = backend(sim)
    token = CancelToken()
    run = Run(b, job(8, epochs=10), cancel=token)
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    worker.progress(sdk_job, 2)
    sim.wait_for(lambda s: len(run.epochs) == 2, 10, what="two epochs forwarded")
    token.cancel("pruned at epoch 2")
    result = run.wait()
    assert result.status == "stopped" and result.error == "pruned at epoch 2"
    assert result.epochs_run == 2 and result.val_accuracy == pytest.approx(0.2)
    assert sim.job(sdk_job["id"])["status"] == "CANCELLED"
    assert sdk_job["id"] in worker.stop_signals()


def test_the_trial_time_limit_cancels_the_remote_job(sim):
    b = backend(sim)
    run = Run(b, job(9), timeout_s=1.0)
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    result = run.wait()
    assert result.status == "failed" and "time limit of 1 s" in result.error
    assert sim.job(sdk_job["id"])["status"] == "CANCELLED"
    assert sim.jobs()[0]["execution_timeout_s"] == pytest.approx(61.0)  # the endpoint's backstop


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_rate_limits_and_server_errors_are_retried(sim, status):
    b = backend(sim)
    sim.inject("run", status, count=2)
    sim.inject("status", status, count=3)
    global_random = random.getstate()
    run = Run(b, job(10))
    worker = ScriptedWorker(sim)
    worker.complete(worker.take())
    assert run.wait().status == "completed"
    assert sim.responses[("run", status)] == 2 and sim.responses[("status", status)] == 3
    assert b.retried_requests["run"] == 2 and b.retried_requests["status"] >= 2
    # the jittered back-off never advances the global random state (Keras seeds weight init from it)
    assert random.getstate() == global_random


def test_an_unreachable_endpoint_raises_at_start_without_the_key(caplog):
    caplog.set_level(logging.DEBUG)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    b = RunPodBackend(f"http://127.0.0.1:{port}/v2/down", KEY, backoff_s=0.01)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        b.start()
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(info.value) and "not reachable" in str(info.value)
    assert KEY not in str(info.value) and KEY not in caplog.text and KEY not in repr(b)


def test_a_wrong_key_is_refused_with_a_hint_and_is_not_echoed(sim, caplog):
    caplog.set_level(logging.DEBUG)
    b = RunPodBackend(sim.endpoint_url, "rpa_WRONG_secret_value")
    with pytest.raises(BackendUnavailable) as info:
        b.start()
    assert "401" in str(info.value) and "RUNPOD_API_KEY" in str(info.value)
    assert "rpa_WRONG_secret_value" not in str(info.value) + caplog.text
    assert sim.authorization_seen == {"Bearer"}


def test_polling_backs_off_while_queued_and_is_fast_near_the_expected_end(sim):
    b = backend(sim, record_timeline=True)
    run = Run(b, job(11, epochs=3))
    time.sleep(5.0)  # queued: nobody takes it
    queued_polls = sim.requests["status"]
    assert 4 <= queued_polls <= 12  # fast first (0.1 s), then at most every 1.5 s
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    worker.progress(sdk_job, 2, eta_s=1.5)
    time.sleep(1.5)
    worker.complete(sdk_job)
    finished = time.time()
    run.wait()
    noticed = b.timeline[-1]["noticed_at"]
    assert noticed - finished < 0.5  # noticed promptly, although the poll interval had reached 1.5 s


def test_close_cancels_jobs_still_in_flight(sim):
    b = backend(sim)
    Run(b, job(12))
    sim.wait_for(lambda s: len(s.jobs()) == 1, 10, what="a submitted job")
    b.close()
    assert sim.jobs()[0]["status"] == "CANCELLED"


def test_make_runpod_backend_uses_the_endpoint_id_and_the_key_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    config = OptimizationConfig(dataset="synthetic_images", use_runpod_service=True, runpod_endpoint_id="abc123",
                                concurrent_workers=6)
    backend_ = make_runpod_backend(config, env_file=tmp_path / ".env")
    remote = backend_.remote
    assert remote.base_url == "https://api.runpod.ai/v2/abc123" and remote.queue_ahead == 2
    with pytest.raises(BackendUnavailable, match="RUNPOD_API_KEY is not set"):
        backend_.start()  # no fallback: a clear error, and no request went out
    (tmp_path / ".env").write_text(f"RUNPOD_API_KEY={KEY}\n")
    remote = make_runpod_backend(config, env_file=tmp_path / ".env").remote
    assert remote._key == KEY and KEY not in repr(remote)
