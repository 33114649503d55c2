"""RunPodBackend (the HTTP client) against the simulator, with a scripted worker speaking the SDK's worker API.

Covers the client's contract: statuses mapped to results that keep the worker's text, progress forwarded once per
epoch, cancel and time limits, retries of 429 / 5xx, resubmission after a lost worker, adaptive polling, and a key
that never shows up in messages or logs. Hardening (issue 13): the key goes only to the configured endpoint (redirects
are not followed, job ids cannot steer requests), every wait is bounded on the client side (queue deadline, unusable
/status answers, Retry-After honoured up to a cap without spending attempts, waits that end on cancel / close), and a
COMPLETED result is range-checked before it is believed (``hpo.backends._checks.check_result``).
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
PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


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


def _held_submission(b):
    """The backend's submissions reach the endpoint (the job exists there) and their answer is held back until
    ``release`` is set: close() then runs while a job id is on its way."""
    submitted, release = threading.Event(), threading.Event()
    real = b._submit

    def held(*args, **kwargs):
        job_id = real(*args, **kwargs)
        submitted.set()
        release.wait(10)
        return job_id

    b._submit = held
    return submitted, release


@pytest.mark.parametrize("answer_after_s, close_wait_s", [(0.3, 5.0), (0.5, 0.1)])
def test_close_cancels_a_job_whose_submission_was_under_way(sim, answer_after_s, close_wait_s):
    """Before close() returns it waits for submissions under way and cancels the jobs they created; a job id that
    comes back after close() stopped waiting (close_wait_s) is cancelled by its own thread."""
    b = backend(sim)
    b.close_wait_s = close_wait_s
    submitted, release = _held_submission(b)
    run = Run(b, job(13))
    assert submitted.wait(10) and sim.jobs()[0]["status"] == "IN_QUEUE"
    threading.Timer(answer_after_s, release.set).start()
    b.close()
    if close_wait_s > answer_after_s:  # close() waited for the answer: the job is cancelled when close() returns
        assert sim.jobs()[0]["status"] == "CANCELLED"
    result = run.wait()
    assert sim.jobs()[0]["status"] == "CANCELLED"
    assert result.status == "stopped" and result.error


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


def test_make_runpod_backend_takes_the_client_side_bounds_from_the_config(tmp_path):
    config = OptimizationConfig(dataset="synthetic_images", use_runpod_service=True,
                                runpod_endpoint_url="http://127.0.0.1:9/v2/x", runpod_queue_timeout_s=42.0,
                                runpod_retry_after_max_s=7.0)
    remote = make_runpod_backend(config, env_file=tmp_path / ".env").remote
    assert remote.queue_timeout_s == 42.0 and remote.http.retry_after_max_s == 7.0
    assert OptimizationConfig(dataset="synthetic_images").runpod_retry_after_max_s >= 60  # the documented default


# -- the key goes only to the configured endpoint ---------------------------------------------------------------------

class Listener:
    """A loopback HTTP server that records every request (path, Authorization) and answers as ``answer`` says:
    ``answer(method, path) -> (status, headers, body)``."""

    def __init__(self, answer) -> None:
        import http.server

        self.seen: list[tuple[str, str, str]] = []  # (method, path, Authorization header)
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                listener.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
                status, headers, body = answer(self.command, self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                data = body.encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listeners():
    made: list[Listener] = []

    def make(answer) -> Listener:
        made.append(Listener(answer))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


@pytest.mark.parametrize("redirected", ["health", "run", "status"])
@pytest.mark.parametrize("code, to", [(302, "another port"), (307, "another port"), (302, "this host")])
def test_redirects_are_not_followed_so_the_key_never_reaches_another_host(listeners, caplog, redirected, code, to):
    caplog.set_level(logging.DEBUG)
    other = listeners(lambda method, path: (200, {"Content-Type": "application/json"}, '{"id": "stolen-1"}'))
    ok = {"health": '{"workers": {}}', "run": '{"id": "job-1", "status": "IN_QUEUE"}',
          "status": '{"id": "job-1", "status": "IN_QUEUE"}'}

    def answer(method: str, path: str):
        route = path.split("/")[3]
        if route == redirected:
            return code, {"Location": f"{other.url}{path}" if to == "another port" else "/v2/x/elsewhere"}, ""
        return 200, {"Content-Type": "application/json"}, ok.get(route, "{}")

    endpoint = listeners(answer)
    b = RunPodBackend(f"{endpoint.url}/v2/x", KEY, backoff_s=0.01, resubmits=1)
    with pytest.raises(BackendUnavailable) as info:
        b.start()
        b.run(job(20))
    text = str(info.value)
    port = other.port if to == "another port" else endpoint.port
    assert f"HTTP {code} redirect to http://127.0.0.1:{port} not followed" in text
    assert other.seen == []  # the second listener saw no request at all, so certainly not the key
    assert endpoint.seen and all(auth == f"Bearer {KEY}" for _, _, auth in endpoint.seen)
    assert not any("elsewhere" in path for _, path, _ in endpoint.seen)  # not followed on the same host either
    assert KEY not in text + caplog.text


def test_job_ids_cannot_steer_requests_off_the_endpoint(listeners):
    other = listeners(lambda method, path: (200, {}, "{}"))
    evil = f"../../../x?u={other.url}/steal"

    def answer(method: str, path: str):
        if path.endswith("/run"):
            return 200, {"Content-Type": "application/json"}, json.dumps({"id": evil, "status": "IN_QUEUE"})
        return 200, {"Content-Type": "application/json"}, '{"workers": {}}'

    endpoint = listeners(answer)
    b = RunPodBackend(f"{endpoint.url}/v2/x", KEY)
    b.start()
    with pytest.raises(BackendUnavailable, match="without a usable job id"):
        b.run(job(21))
    assert other.seen == [] and [p for _, p, _ in endpoint.seen] == ["/v2/x/health", "/v2/x/run"]
    assert b.http.url("status", "a/../../b?c") == f"{endpoint.url}/v2/x/status/a%2F..%2F..%2Fb%3Fc"


def test_an_echoed_key_in_an_error_answer_is_masked(sim, caplog):
    caplog.set_level(logging.DEBUG)
    b = backend(sim)
    sim.inject("run", 400, body=json.dumps({"error": f"bad header: Bearer {KEY} (key {KEY})"}))
    with pytest.raises(BackendUnavailable) as info:
        b.run(job(22))
    assert "HTTP 400" in str(info.value) and KEY not in str(info.value) + caplog.text


# -- every wait has an end -------------------------------------------------------------------------------------------

def test_a_job_nobody_takes_is_cancelled_at_the_queue_deadline_and_not_resubmitted(sim):
    b = backend(sim, queue_timeout_s=0.6, resubmits=2)
    with pytest.raises(BackendUnavailable) as info:
        b.run(job(23))
    assert "no worker took it within 0.6 s (runpod_queue_timeout_s)" in str(info.value)
    assert "the job was cancelled" in str(info.value)
    assert [j["status"] for j in sim.jobs()] == ["CANCELLED"]  # cancelled on the endpoint, submitted once
    assert sim.jobs()[0]["ttl_s"] < 0.6 + 3600.0 + 61  # the endpoint's own expiry follows the client's deadline


def test_the_queue_deadline_does_not_cut_a_running_trial(sim):
    b = backend(sim, queue_timeout_s=0.6)
    run = Run(b, job(24))
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    taken, polls = time.monotonic(), sim.requests["status"]
    # the client keeps polling a running job past twice the queue deadline
    sim.wait_for(lambda s: time.monotonic() - taken > 1.2 and s.requests["status"] >= polls + 3, 30,
                 what="polls past the queue deadline")
    assert sim.job(sdk_job["id"])["status"] == "IN_PROGRESS"
    worker.complete(sdk_job)
    assert run.wait().status == "completed"


UNUSABLE = {
    "a list": "[1, 2]",
    "not JSON": "<html>gateway</html>",
    "no status": '{"id": "x"}',
    "an unknown status": '{"status": "WEIRD"}',
    "another job": '{"id": "someone-else", "status": "IN_PROGRESS"}',
}


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_unusable_status_answers_are_tolerated_a_bounded_number_of_times(sim, kind):
    b = backend(sim, max_bad_answers=4, poll_max_s=0.2)
    sim.inject("status", 200, count=3, body=UNUSABLE[kind])  # fewer than the bound: tolerated
    run = Run(b, job(25))
    worker = ScriptedWorker(sim)
    sim.wait_for(lambda s: s.responses[("status", 200)] >= 4, 20, what="three bad answers and a good one")
    worker.complete(worker.take())
    assert run.wait().status == "completed"

    sim.inject("status", 200, count=None, body=UNUSABLE[kind])  # for good: the trial ends with the reason
    with pytest.raises(BackendUnavailable) as info:
        b.run(job(26))
    assert "4 unusable /status answers in a row" in str(info.value) and "the job was cancelled" in str(info.value)
    assert sim.jobs()[-1]["status"] == "CANCELLED" and len(sim.jobs()) == 2  # not resubmitted


def test_retry_after_is_honoured_up_to_the_cap_without_spending_attempts(sim):
    b = backend(sim, attempts=2, retry_after_max_s=0.3)
    sim.inject("run", 429, count=5, retry_after="0.25")
    sim.inject("status", 503, count=3, retry_after="3600")  # asks for an hour: capped at 0.3 s
    run = Run(b, job(27))
    worker = ScriptedWorker(sim)
    worker.complete(worker.take())
    assert run.wait(60).status == "completed"  # 8 rate-limited answers with attempts=2: none was spent
    waits = list(b.http.retry_waits)
    assert [w for w in waits if w[0] == "run"] == [("run", 0.25, "rate limited")] * 5
    assert [w for w in waits if w[0] == "status"] == [("status", 0.3, "rate limited")] * 3


def test_server_errors_spend_attempts_and_end_the_trial(sim):
    b = backend(sim, attempts=3)
    sim.inject("run", 503, count=None, retry_after=None)  # a 503 without Retry-After is a failure, not a rate limit
    with pytest.raises(BackendUnavailable, match=r"HTTP 503.*after 3 attempts"):
        b.run(job(28))
    assert [kind for _, _, kind in b.http.retry_waits] == ["attempt", "attempt"]


def test_rate_limiting_beyond_the_budget_ends_the_trial_with_the_reason(sim):
    b = backend(sim, retry_after_max_s=0.2, rate_limit_budget_s=1.0)
    sim.inject("run", 429, count=None, retry_after="0.2")
    with pytest.raises(BackendUnavailable) as info:
        b.run(job(29))
    assert "still rate limited after waiting 1 s" in str(info.value) and "at most 1 s" in str(info.value)
    assert sum(seconds for _, seconds, _ in b.http.retry_waits) <= 1.0 + 1e-9


def test_a_retry_after_wait_ends_at_once_on_cancel(sim):
    b = backend(sim, retry_after_max_s=600)
    sim.inject("run", 429, count=None, retry_after="600")
    token = CancelToken()
    run = Run(b, job(30), cancel=token)
    sim.wait_for(lambda s: s.responses[("run", 429)] >= 1, 20, what="a rate-limited submission")
    token.cancel("pruned while rate limited")
    result = run.wait(30)  # far less than the 600 s asked for
    assert result.status == "stopped" and result.error == "pruned while rate limited"
    assert sim.jobs() == []


def test_a_status_wait_ends_at_once_on_close(sim):
    b = backend(sim, retry_after_max_s=600)
    run = Run(b, job(31))
    sim.wait_for(lambda s: len(s.jobs()) == 1, 10, what="a submitted job")
    sim.inject("status", 429, count=None, retry_after="600")
    sim.wait_for(lambda s: s.responses[("status", 429)] >= 1, 20, what="a rate-limited poll")
    b.close()
    assert run.wait(30).status == "stopped"
    assert sim.jobs()[0]["status"] == "CANCELLED"


@pytest.mark.parametrize("value, seconds", [("2", 2.0), ("0", 0.0), ("-5", 0.0), ("nan", None), ("soon", None),
                                            (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0)])
def test_retry_after_values(value, seconds):
    from email.utils import parsedate_to_datetime

    from hpo.backends._http import parse_retry_after

    now = parsedate_to_datetime("Wed, 21 Oct 2015 07:27:30 GMT").timestamp()
    assert parse_retry_after(value, now=now) == seconds


# -- a completed result is believed only when its numbers are in range -------------------------------------------------

def good_result(epochs: int = 3, **changes) -> TrialResult:
    fields = dict(trial_id="run#0", status="completed", epochs_run=epochs, best_epoch=epochs,
                  history={"loss": [1.0] * epochs, "val_accuracy": [0.5] * epochs},
                  val_metrics={"accuracy": 0.5, "loss": 0.7}, test_metrics={"accuracy": 0.4, "loss": 0.8},
                  health={"overall_health": 0.6}, param_count=10, train_seconds=1.0)
    fields.update(changes)
    return TrialResult(**fields)


BAD_RESULTS = {
    "val_metrics.accuracy = 7.5 is not in [0, 1]": dict(val_metrics={"accuracy": 7.5}),
    "test_metrics.accuracy = -0.1 is not in [0, 1]": dict(test_metrics={"accuracy": -0.1}),
    "val_metrics.loss = inf is not finite": dict(val_metrics={"accuracy": 0.5, "loss": float("inf")}),
    "test_metrics.loss = nan is not finite": dict(test_metrics={"loss": float("nan")}),
    "epochs_run = -3 is not in [0, 3]": dict(epochs_run=-3),
    "epochs_run = 4 is not in [0, 3]": dict(epochs_run=4, history={}),
    "best_epoch = 5 is not in [1, 3]": dict(best_epoch=5),
    "history.loss has 2 entries, but epochs_run = 3": dict(history={"loss": [1.0, 1.0]}),
    "history.val_accuracy[1] = 2.0 is not in [0, 1]": dict(history={"val_accuracy": [0.5, 2.0, 0.5]}),
    "history.loss[0] = -inf is not finite": dict(history={"loss": [float("-inf"), 1.0, 1.0]}),
    "health.overall_health = 1.5 is not in [0, 1]": dict(health={"overall_health": 1.5}),
    "train_seconds = -1.0 is not a finite number >= 0": dict(train_seconds=-1.0),
    "param_count = -10 is not an integer >= 0": dict(param_count=-10),
}


@pytest.mark.parametrize("reason", sorted(BAD_RESULTS))
def test_check_result_names_the_bad_field(reason):
    from hpo.backends._checks import check_result
    from hpo.exceptions import TrialFailed

    with pytest.raises(TrialFailed) as info:
        check_result(good_result(**BAD_RESULTS[reason]), job(0, epochs=3))
    assert str(info.value).startswith(reason)


def test_check_result_accepts_a_good_result_and_missing_values():
    from hpo.backends._checks import check_result

    check_result(good_result(), job(0, epochs=3))
    check_result(good_result(val_metrics={"accuracy": None, "loss": None}, history={"val_loss": [None, 1.0, 1.0]},
                             health={"overall_health": None}, param_count=None, best_epoch=None), job(0, epochs=3))
    check_result(TrialResult(trial_id="run#0", status="failed", error="diverged"), job(0, epochs=3))


@pytest.mark.parametrize("changes, field", [(dict(val_metrics={"accuracy": 7.5}), "val_metrics.accuracy = 7.5"),
                                            (dict(epochs_run=-3), "epochs_run = -3"),
                                            (dict(history={"loss": [1.0]}), "history.loss has 1 entries")])
def test_an_out_of_range_completed_result_fails_the_trial_naming_the_field(sim, changes, field):
    b = backend(sim)
    run = Run(b, job(32, epochs=3))
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    worker.progress(sdk_job, 1)
    sim.wait_for(lambda s: len(run.epochs) == 1, 10, what="epoch 1 forwarded")
    bad = good_result(trial_id=sdk_job["input"]["trial_id"], **changes)
    worker.post(sdk_job["id"], {"output": {"trial_result": bad.to_dict()}})
    result = run.wait()
    assert result.status == "failed" and field in result.error and "its numbers were discarded" in result.error
    assert result.val_accuracy == pytest.approx(0.1)  # what the epochs said, not the worker's claim
    assert [r.epoch for r in run.epochs] == [1]


def test_out_of_range_epoch_reports_are_not_forwarded(sim):
    b = backend(sim)
    run = Run(b, job(33, epochs=3))
    worker = ScriptedWorker(sim)
    sdk_job = worker.take()
    trial_id = sdk_job["input"]["trial_id"]
    reports = [EpochReport(trial_id=trial_id, epoch=1, metrics={"val_accuracy": 9.0}).to_dict(),
               EpochReport(trial_id=trial_id, epoch=7, metrics={"val_accuracy": 0.5}).to_dict()]
    worker.post(sdk_job["id"], {"status": "IN_PROGRESS", "output": {"hpo_progress": {
        "trial_id": trial_id, "epochs": reports, "elapsed_s": 1.0}}})
    polls = sim.requests["status"]
    sim.wait_for(lambda s: s.requests["status"] >= polls + 2, 10, what="the progress polled")
    worker.complete(sdk_job, epochs=3)
    assert run.wait().status == "completed"
    assert [(r.epoch, r.metrics["val_accuracy"]) for r in run.epochs] == [(1, 0.1), (2, pytest.approx(0.2)),
                                                                           (3, pytest.approx(0.3))]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/v2/x", "127.0.0.1:8000/v2/x", "http:///v2/x"])
def test_an_endpoint_url_that_is_not_http_is_a_config_error_naming_the_field(url):
    from hpo.exceptions import ConfigError

    with pytest.raises(ConfigError, match="runpod_endpoint_url must be an http"):
        RunPodBackend(url, KEY)
