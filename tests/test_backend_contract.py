"""The Backend contract (the doc of hpo.backends.Backend), one suite run against every backend:

    local           LocalBackend: real worker processes training a tiny synthetic_images job with TensorFlow
    runpod          RunPodBackend against the loopback simulator, served by a real ``runpod`` SDK worker
                    (tests/epoch_sleep_worker.py: runpod_worker/handler.py with a trainer that sleeps EPOCH_S per
                    epoch instead of training)
    fallback        FallbackBackend(RunPod, local) while the endpoint answers: trials run remotely
    fallback-local  FallbackBackend(RunPod, local) with the endpoint down from the start: trials run locally

The contract: run() returns a TrialResult with the job's trial_id (completed for a good job, with on_epoch called once
per epoch in increasing order); a trial's own failure is a failed result, never an exception; a cancel token stops
the trial (soft: after the epoch in progress; hard: at once) with status stopped and the token's reason; timeout_s
fails the trial naming the time limit; save_model_to gets a .keras file when the trial trains here and nothing when
it ran remotely; BackendUnavailable is raised only when the backend itself cannot run (cannot start, closed);
start() and close() may be called twice; close() stops running trials; name, queue_ahead, notes and probe() have
their documented types.

Cost: each backend kind is built and started (twice: start() twice starts one worker) once per module, and the
lifecycle test, which closes it, runs last for each kind; a local worker is started again only where a test kills one
(hard cancel, time limit).
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpo.backends import Backend, CancelToken
from hpo.backends.fallback import FallbackBackend
from hpo.backends.local import LocalBackend
from hpo.backends.runpod import RunPodBackend
from hpo.exceptions import BackendUnavailable
from hpo.protocol import EpochReport, TrialJob, TrialResult
from hpo.testing.runpod_sim import RunPodSimulator, start_workers, stop_workers

SLEEP_WORKER = Path(__file__).resolve().parent / "epoch_sleep_worker.py"
#: seconds each epoch of a remote job sleeps: a short job (1-3 epochs) ends at once, a long one (200) takes 40 s and is
#: always cut short before that
EPOCH_S = 0.2
#: a hard cancel of a remote job returns within this (its long job would run for 200 * EPOCH_S)
REMOTE_PROMPT_S = 3.0
PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}
#: generous caps on waits for things that do happen (never a measure of speed)
CAP_S = 300.0


def tiny(trial_id: str, *, epochs: int = 3, patience: int = 3, params: dict | None = None) -> TrialJob:
    return TrialJob(trial_id=trial_id, dataset="synthetic_images", params=params or PARAMS, max_epochs=epochs,
                    seed=7, compute_health=False, data_fraction=0.2, patience=patience)


def dead_url() -> str:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v2/down"


@dataclass
class Case:
    """One backend kind: a factory of fresh (unstarted) backends and what is expected of it where kinds differ."""

    name: str
    make: Callable[[], Backend]
    broken: Callable[[], Backend]  # one whose every way to run is broken
    unavailable_words: str
    trains_here: bool  # trials train on this machine: model files are written
    where: str  # how executed_on starts
    long_epochs: int  # a job that runs far longer than any test waits (cut short by cancel, timeout, close)
    prompt_s: float  # a hard cancel returns within this (the long job takes far longer)
    sim: RunPodSimulator | None = None
    backend: Backend | None = None  # shared by the module's tests, started (twice)
    started: dict | None = None  # what starting it twice did (checked by the lifecycle test)
    closed: bool = False  # the lifecycle test closed the shared backend

    def long_job(self, trial_id: str) -> TrialJob:
        return tiny(trial_id, epochs=self.long_epochs, patience=self.long_epochs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The simulator and one real SDK worker (sleeping trainer) for the remote cases."""
    log_dir = tmp_path_factory.mktemp("sdk-workers")
    with RunPodSimulator(worker_timeout_s=30.0, take_hold_s=2.0) as sim:
        procs = start_workers(sim, 1, handler=SLEEP_WORKER, log_dir=log_dir, prefix="contract",
                              env={"HPO_TEST_EPOCH_S": str(EPOCH_S)})
        try:
            yield sim
        finally:
            stop_workers(procs)


def _local(tmp: Path) -> Callable[[], LocalBackend]:
    counter = iter(range(1000))
    return lambda: LocalBackend(workers=1, log_dir=tmp / f"logs-{next(counter)}")


@pytest.fixture(scope="module", params=["local", "runpod", "fallback", "fallback-local"])
def case(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    local = _local(tmp)

    def remote(url: str) -> RunPodBackend:
        return RunPodBackend(url, poll_max_s=0.5, attempts=2, backoff_s=0.05)

    def broken_local() -> LocalBackend:  # sys.executable is /bin/false in the test: the worker exits at once
        return LocalBackend(workers=1, log_dir=tmp / "broken", start_timeout_s=60)

    if request.param == "local":
        c = Case("local", local, broken_local, "failed to start", True, "local:", 5000, 60.0)
    elif request.param == "fallback-local":
        c = Case("fallback-local", lambda: FallbackBackend(remote(dead_url()), local()),
                 lambda: FallbackBackend(remote(dead_url()), broken_local()), "failed to start", True, "local:",
                 5000, 60.0)
    else:
        sim = request.getfixturevalue("cluster")
        if request.param == "runpod":
            c = Case("runpod", lambda: remote(sim.endpoint_url), lambda: remote(dead_url()), "not reachable", False,
                     "runpod:contract-1", 200, REMOTE_PROMPT_S, sim)
        else:
            c = Case("fallback", lambda: FallbackBackend(remote(sim.endpoint_url), local()),
                     lambda: FallbackBackend(remote(dead_url())), "not reachable", False, "runpod:contract-1", 200,
                     REMOTE_PROMPT_S, sim)
    c.backend = _started_twice(c)
    try:
        yield c
    finally:
        c.backend.close()


def _started_twice(c: Case) -> Backend:
    """A fresh backend, started twice; what the second start did (nothing) is noted for the lifecycle test."""
    b = c.make()
    health = c.sim.requests["health"] if c.sim is not None else 0
    b.start()
    b.start()
    c.started = {"health_checks": (c.sim.requests["health"] - health) if c.sim is not None else None,
                 "workers": len(b.worker_pids()) if isinstance(b, LocalBackend) else None,
                 "unreachable_notes": sum("unreachable at start" in n for n in b.notes)}
    return b


@pytest.fixture(autouse=True)
def _live_backend(request):
    """The lifecycle test closes the shared backend and runs last for each kind; should another test run after it
    (a reordered or selected run), that test gets a fresh one."""
    if "case" in request.fixturenames:
        c = request.getfixturevalue("case")
        if c.closed:
            c.backend, c.closed = _started_twice(c), False


class Run:
    """backend.run in a thread; ``epoch`` is set at the first epoch report."""

    def __init__(self, backend: Backend, job: TrialJob, **kw) -> None:
        self.reports: list[EpochReport] = []
        self.epoch = threading.Event()
        self.result: TrialResult | None = None
        self.error: BaseException | None = None

        def on_epoch(report: EpochReport) -> None:
            self.reports.append(report)
            self.epoch.set()

        def target() -> None:
            try:
                self.result = backend.run(job, on_epoch=on_epoch, **kw)
            except BaseException as exc:  # noqa: BLE001
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = CAP_S) -> TrialResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "backend.run did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def epochs_of(reports: list[EpochReport]) -> list[int]:
    return [r.epoch for r in reports]


# -- capabilities -----------------------------------------------------------------------------------------------------

def test_name_queue_ahead_notes_and_probe_have_the_documented_types(case):
    b = case.backend
    assert isinstance(b.name, str) and b.name in ("local", "runpod")
    assert isinstance(b.queue_ahead, int) and not isinstance(b.queue_ahead, bool) and b.queue_ahead >= 0
    assert isinstance(b.notes, list) and all(isinstance(n, str) and n for n in b.notes)
    assert b.probe() is None  # started and able to run trials
    if case.name == "fallback-local":
        assert any("unreachable at start" in n for n in b.notes)  # the summary says why trials ran locally
    else:
        assert b.notes == []


# -- one trial --------------------------------------------------------------------------------------------------------

def test_a_good_job_completes_with_every_epoch_once_in_order_and_the_model_where_it_trained(case, tmp_path):
    model = tmp_path / "model.keras"
    reports: list[EpochReport] = []
    result = case.backend.run(tiny("c#good"), on_epoch=reports.append, save_model_to=str(model))
    assert isinstance(result, TrialResult) and result.status == "completed", result.error
    assert result.trial_id == "c#good" and result.epochs_run == 3
    assert epochs_of(reports) == [1, 2, 3] and all(r.trial_id == "c#good" for r in reports)
    assert result.val_accuracy is not None and 0.0 <= result.val_accuracy <= 1.0
    assert result.executed_on.startswith(case.where)
    if case.trains_here:  # the best model, saved where asked (a .keras file is a zip archive)
        assert model.is_file() and model.read_bytes()[:2] == b"PK"
    else:  # a remote trial's model is not brought back: nothing is written there
        assert not model.exists()


def test_a_trials_own_failure_is_a_failed_result_not_an_exception(case):
    bad = tiny("c#bad", params=dict(PARAMS, learning_rate=-1))  # outside the search space: the worker refuses it
    reports: list[EpochReport] = []
    result = case.backend.run(bad, on_epoch=reports.append)
    assert result.status == "failed" and result.trial_id == "c#bad" and reports == []
    assert "params.learning_rate=-1" in result.error and "out of range" in result.error
    assert result.epochs_run == 0


def test_a_soft_cancel_stops_after_the_epoch_in_progress(case):
    token = CancelToken()
    seen: list[int] = []

    def on_epoch(report: EpochReport) -> None:
        seen.append(report.epoch)
        token.cancel(f"pruned at epoch {report.epoch}")

    result = case.backend.run(case.long_job("c#soft"), on_epoch=on_epoch, cancel=token)
    assert result.status == "stopped" and result.trial_id == "c#soft"
    assert result.error in (None, f"pruned at epoch {seen[0]}")  # the reason is the token's (a result may repeat it)
    assert seen == sorted(set(seen)) and result.epochs_run <= seen[-1] + 1 < case.long_epochs
    if case.trains_here:  # the worker waits for the decision on each epoch: it stops exactly at the first one
        assert seen == [1] and result.epochs_run == 1
    if case.sim is not None:  # the remote job was cancelled on the endpoint
        assert case.sim.jobs()[-1]["status"] == "CANCELLED"


def test_the_first_cancel_decides_whether_the_trial_is_discarded():
    pruned, cut = CancelToken(), CancelToken()
    pruned.cancel("pruned at epoch 1", discard=True)
    pruned.cancel("cut for the final training")
    cut.cancel("cut for the final training")
    cut.cancel("pruned at epoch 1", discard=True)
    assert (pruned.reason, pruned.discard) == ("pruned at epoch 1", True)
    assert (cut.reason, cut.discard) == ("cut for the final training", False)
    assert not CancelToken().discard


def test_a_hard_cancel_stops_at_once_and_the_backend_serves_the_next_trial(case):
    token = CancelToken()
    run = Run(case.backend, case.long_job("c#hard"), cancel=token)
    assert run.epoch.wait(CAP_S), "no epoch reported"
    cancelled = time.monotonic()
    token.cancel("interrupted", hard=True)
    result = run.wait()
    assert time.monotonic() - cancelled < case.prompt_s  # the long job would have run far longer
    assert result.status == "stopped" and result.error == "interrupted" and result.trial_id == "c#hard"
    token = CancelToken()
    token.cancel("interrupted", hard=True)  # cancelled before it starts: nothing is trained
    early = case.backend.run(case.long_job("c#early"), cancel=token)
    assert early.status == "stopped" and early.error == "interrupted" and early.epochs_run == 0
    assert case.backend.run(tiny("c#next", epochs=1)).status == "completed"


def test_a_trial_past_its_time_limit_fails_alone(case):
    result = case.backend.run(case.long_job("c#slow"), timeout_s=3)
    assert result.status == "failed" and result.trial_id == "c#slow"
    assert "time limit of 3 s" in result.error
    if case.sim is not None:
        assert case.sim.jobs()[-1]["status"] == "CANCELLED"  # cut on the endpoint too
    assert case.backend.run(tiny("c#after", epochs=1)).status == "completed"


def test_a_job_that_waited_in_the_queue_trains_only_what_is_left_of_its_time_limit(cluster):
    """``time_limit_s`` counts from the call to run(): a RunPod job queued behind a busy worker carries its deadline
    (``deadline_unix``, the client's clock) and the worker takes the wait off (TrialJob.by_deadline), so it still
    answers completed, at the epochs that fit in what was left, instead of running past the run's time budget."""
    backend = RunPodBackend(cluster.endpoint_url, poll_max_s=0.5, attempts=2, backoff_s=0.05)
    backend.start()
    try:
        free = CancelToken()
        busy = Run(backend, tiny("q#busy", epochs=200, patience=200), cancel=free)
        assert busy.epoch.wait(CAP_S), "the busy job never started"
        limit = 8.0  # room for a slow machine: the wait must stay under it for the check below
        late = Run(backend, dataclasses.replace(tiny("q#late", epochs=200, patience=200), time_limit_s=limit))
        cluster.wait_for(lambda s: any(j["input"].get("trial_id") == "q#late" for j in s.jobs()), CAP_S,
                         what="the second job in the endpoint's queue")
        time.sleep(2.0)  # the only worker is busy: the job waits in the queue
        free.cancel("the test frees the worker")
        result = late.wait()
        assert busy.wait().status == "stopped"
    finally:
        backend.close()
    job = next(j for j in cluster.jobs() if j["input"].get("trial_id") == "q#late")
    waited = job["taken_at"] - job["created_at"]
    assert waited >= 2.0
    assert job["input"]["deadline_unix"] == pytest.approx(job["created_at"] + limit, abs=1.0)
    assert job["input"]["time_limit_s"] == limit  # sent as given; the worker takes the wait off
    assert result.status == "completed" and result.epochs_run >= 1, result
    # the worker's limit was at most limit - waited (+ rounding); without the deadline it trained limit / EPOCH_S
    assert result.epochs_run * EPOCH_S <= limit - waited + 0.06, (result.epochs_run, waited)


# -- lifecycle --------------------------------------------------------------------------------------------------------

def test_backend_unavailable_only_when_the_backend_itself_cannot_run(case, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a local worker exits at once, never ready
    b = case.broken()
    try:
        with pytest.raises(BackendUnavailable, match=case.unavailable_words):
            b.start()
            b.run(tiny("c#never", epochs=1))  # a fallback may start (to run locally) and fail here
    finally:
        b.close()


def test_start_and_close_twice_and_close_stops_running_trials(case):
    """Runs last for each backend kind: it closes the module's backend (started twice by the fixture)."""
    b = case.make()
    b.close()  # closing a backend that never started is fine too
    b = case.backend  # fresh when the fixture started it twice
    if case.sim is not None:
        assert case.started["health_checks"] == 1  # the endpoint was checked once
    if isinstance(b, LocalBackend):
        assert case.started["workers"] == 1  # one worker, not two
    if case.name == "fallback-local":
        assert case.started["unreachable_notes"] == 1
    run = Run(b, case.long_job("c#closed"))
    assert run.epoch.wait(CAP_S), "no epoch reported"
    case.closed = True
    b.close()
    result = run.wait()
    assert result.status == "stopped" and result.trial_id == "c#closed" and "clos" in result.error
    b.close()
    assert isinstance(b.probe(), str)  # closed: it says so
    with pytest.raises(BackendUnavailable, match="closed"):
        b.run(tiny("c#late", epochs=1))
    if case.sim is not None:
        assert case.sim.jobs()[-1]["status"] == "CANCELLED"
