"""LocalBackend: persistent worker processes; a crash fails one trial; workers are recycled.

What every backend does (time limits, soft and hard cancels, close, a worker that cannot start) is checked for the
local backend by the contract suite, tests/test_backend_contract.py.
"""

import dataclasses
import os
import signal
import threading
import time

import pytest

from hpo.backends import local as local_module
from hpo.backends.local import LocalBackend
from hpo.protocol import TrialJob

from .conftest import selected

PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


def job(n: int = 0, epochs: int = 1, patience: int = 3, **kw) -> TrialJob:
    return TrialJob(trial_id=f"t#{n}", dataset="synthetic_images", params=dict(PARAMS, **kw), max_epochs=epochs,
                    seed=n, compute_health=False, data_fraction=0.2, patience=patience)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """One backend for the module's first two tests (one TensorFlow import): the persistent-worker test runs first,
    on the worker the backend started; the crash test then kills it."""
    b = LocalBackend(workers=1, log_dir=tmp_path_factory.mktemp("logs"))
    b.start()
    yield b
    b.close()


RECYCLE = "test_workers_are_recycled_and_memory_does_not_grow"


@pytest.fixture(scope="module", autouse=True)
def recycling(request, tmp_path_factory):
    """The recycling test's backend, its first worker started (in a thread) when the module starts, beside the other
    tests' worker: the two TensorFlow imports share the cores instead of following each other."""
    if not selected(request, RECYCLE):
        yield None
        return
    b = LocalBackend(workers=1, log_dir=tmp_path_factory.mktemp("recycling"), max_trials_per_worker=4)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            b.start()
        except BaseException as exc:  # noqa: BLE001 - raised in the test
            errors.append(exc)

    starting = threading.Thread(target=start, daemon=True)
    starting.start()
    try:
        yield b, starting, errors
    finally:
        starting.join(300)
        b.close()


def test_runs_jobs_in_one_persistent_worker_and_reports_epochs(backend):
    reports = []
    first = backend.run(job(0, epochs=2), on_epoch=reports.append)
    second = backend.run(job(1))
    assert first.status == second.status == "completed"
    assert [r.epoch for r in reports] == [1, 2] and all(r.trial_id == "t#0" for r in reports)
    assert first.executed_on == second.executed_on  # TensorFlow imported once: the same process ran both
    assert f"pid {backend.worker_pids()[0]}" in first.executed_on


def test_a_crashing_worker_fails_only_its_trial(backend):
    def kill_worker(report):
        os.kill(backend.worker_pids()[0], signal.SIGKILL)

    crashed = backend.run(job(0, epochs=3), on_epoch=kill_worker)
    assert crashed.status == "failed"
    assert "crashed" in crashed.error and "exit code -9" in crashed.error
    after = backend.run(job(1))
    assert after.status == "completed"  # a fresh worker replaced the dead one
    assert after.executed_on != crashed.executed_on


def test_a_cut_asked_during_an_epoch_stops_the_trial_after_the_batch_in_training(backend):
    """A cut (for the final training, or at the time budget's end) may come at any time: the worker is told at once
    and the trainer stops after its batch (before, at the epoch's end: an epoch of a minute held the worker that
    long); the trial keeps what it trained, a cut is no prune. Fashion-MNIST epochs (6,000 images: seconds) are far
    longer than the message takes."""
    from hpo.backends import CancelToken

    token = CancelToken()
    long_job = TrialJob(trial_id="t#cut", dataset="fashion_mnist", params=dict(PARAMS), max_epochs=30, seed=3,
                        compute_health=False, data_fraction=0.1, patience=30)

    def on_epoch(report):
        if report.epoch == 1:  # cut once the decision on epoch 1 ("continue") has gone: during epoch 2
            threading.Timer(0.05, token.cancel, args=("cut for the final training",)).start()

    result = backend.run(long_job, on_epoch=on_epoch, cancel=token)
    assert result.status == "stopped" and result.trial_id == "t#cut"
    cut = result.details["cut_in_epoch"]
    assert cut["epoch"] == 2 == result.epochs_run and 0 < cut["batches"] < cut["of"], cut
    assert result.test_metrics["accuracy"] is not None  # kept whole: a cut is no prune


def test_workers_are_recycled_and_memory_does_not_grow(recycling):
    backend, starting, errors = recycling  # LocalBackend(workers=1, max_trials_per_worker=4), being started
    starting.join(300)
    assert not starting.is_alive() and not errors, errors
    pids, rss = [], []
    orig_release = backend._release

    def spy(worker):
        if worker is not None:
            pids.append(worker.pid)
            rss.append(worker.rss_mb)
        orig_release(worker)

    backend._release = spy
    try:
        for n in range(7):
            trial = job(n, epochs=1, filters=32, dense_layers=1, dense_units=128)
            if n == 4:  # a job with a time limit would pay a new worker's start out of its own seconds
                trial = dataclasses.replace(trial, time_limit_s=600.0)
            assert backend.run(trial).status == "completed"
    finally:
        backend.close()
    assert len(set(pids[:5])) == 1, pids  # the 5th trial, with a time limit, kept the worn-out worker
    assert pids[5] != pids[4] and pids[6] == pids[5]  # the next one without a limit did not: recycled after 4 trials
    # after warm-up, a worker's memory stays flat from trial to trial (Keras sessions are freed)
    assert rss[3] - rss[1] < 150, rss


def test_a_worker_started_for_the_job_leaves_the_trainer_only_the_time_that_is_left(tmp_path):
    """``time_limit_s`` counts from the call to run() (time_budget_minutes): a worker process started for the job --
    here slowed by 6 s more with a sitecustomize, as a recycled worker's TensorFlow import is on a busy machine --
    leaves its trainer only what is left, so the trial still answers within its limit (the time-budgeted run's final
    was lost at the budget's end when a recycled worker took it)."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(6)\n")
    backend = LocalBackend(workers=1, log_dir=tmp_path / "logs",
                           env={"PYTHONPATH": os.pathsep.join([str(slow), local_module._SRC_DIR])})
    limit = 24.0
    try:
        called = time.monotonic()  # no worker yet: run() starts it
        result = backend.run(dataclasses.replace(job(0, epochs=500, patience=500), time_limit_s=limit))
        took = time.monotonic() - called
    finally:
        backend.close()
    assert result.status == "completed" and result.details.get("out_of_time") is True, result.error
    assert result.train_seconds <= limit - 6.0  # the trainer was told the start-up had been spent
    assert took <= limit + 4.0  # the answer came back about when the limit said (was: limit + the start-up)


def test_close_asks_idle_workers_to_exit_together_and_kills_one_that_does_not(tmp_path):
    """A run's end is inside its time budget: idle workers get EXIT_GRACE_S together (not 10 s each, one after the
    other), then they are killed; one that exits in time exits cleanly."""
    b = LocalBackend(workers=2, log_dir=tmp_path)
    b.start()
    try:
        assert b.run(job(0)).status == "completed"
        procs = {w.pid: w.proc for w in b._all}
        stuck, healthy = sorted(procs)
        os.kill(stuck, signal.SIGSTOP)  # it cannot read the exit message
        started = time.monotonic()
        b.close()
        took = time.monotonic() - started
    finally:
        b.close()
    assert procs[stuck].returncode == -signal.SIGKILL  # killed after the grace
    assert procs[healthy].returncode == 0  # exited by itself
    assert took < local_module.EXIT_GRACE_S + 5.0, took  # the old close waited 10 s for the stuck one alone
