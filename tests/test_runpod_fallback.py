"""FallbackBackend with stand-in backends: unreachable at start, infrastructure failures, the circuit and its probe."""

from __future__ import annotations

import dataclasses

import pytest

from hpo.backends import Backend, CancelToken
from hpo.backends.fallback import FallbackBackend
from hpo.exceptions import BackendUnavailable
from hpo.protocol import EpochReport, TrialJob, TrialResult

PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


def job(n: int = 0) -> TrialJob:
    return TrialJob(trial_id=f"r#{n}", dataset="synthetic_images", params=PARAMS, max_epochs=3, seed=n)


def report(trial_id: str, epoch: int) -> EpochReport:
    return EpochReport(trial_id=trial_id, epoch=epoch, metrics={"val_accuracy": 0.1 * epoch})


class Remote(Backend):
    name = "runpod"

    def __init__(self, *, start_error: str | None = None, failures: int = 0, probe_ok: bool = True,
                 epochs_before_failing: int = 0) -> None:
        self.start_error = start_error
        self.failures = failures
        self.probe_ok = probe_ok
        self.epochs_before_failing = epochs_before_failing
        self.runs: list[str] = []
        self.probes = 0

    @property
    def queue_ahead(self) -> int:
        return 2

    def start(self) -> None:
        if self.start_error:
            raise BackendUnavailable(self.start_error)

    def probe(self) -> str | None:
        self.probes += 1
        return None if self.probe_ok else "still down"

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        self.runs.append(job.trial_id)
        if self.failures > 0:
            self.failures -= 1
            for e in range(1, self.epochs_before_failing + 1):
                on_epoch(report(job.trial_id, e))
            raise BackendUnavailable("worker w1 stopped responding; the job was lost")
        for e in (1, 2, 3):
            on_epoch(report(job.trial_id, e))
        return TrialResult(trial_id=job.trial_id, status="completed", executed_on="runpod:w1")


class Local(Backend):
    name = "local"

    def __init__(self) -> None:
        self.started = 0
        self.closed = False
        self.runs: list[str] = []
        self.jobs: list[TrialJob] = []

    def start(self) -> None:
        self.started += 1

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        self.runs.append(job.trial_id)
        self.jobs.append(job)
        for e in (1, 2, 3):
            on_epoch(report(job.trial_id, e))
        return TrialResult(trial_id=job.trial_id, status="completed", executed_on="local:worker-1 (pid 1)")

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_endpoint_unreachable_at_start_runs_every_trial_locally_with_the_reason():
    remote, local = Remote(start_error="RunPod endpoint http://127.0.0.1:9/v2/x is not reachable"), Local()
    backend = FallbackBackend(remote, local)
    backend.start()
    results = [backend.run(job(i), on_epoch=lambda r: None) for i in range(3)]
    assert remote.runs == [] and local.runs == ["r#0", "r#1", "r#2"] and local.started == 1
    for r in results:
        assert r.status == "completed" and r.executed_on.startswith("local:")
        assert "unreachable at start" in r.details["fallback_reason"]
        assert "127.0.0.1:9" in r.details["fallback_reason"]
    assert any("unreachable at start" in n for n in backend.notes)
    assert any("3 trial(s) ran locally" in n for n in backend.notes)
    backend.close()
    assert local.closed


def test_without_fallback_an_unreachable_endpoint_is_a_clear_error_at_start():
    backend = FallbackBackend(Remote(start_error="RunPod endpoint http://x is not reachable: ConnectionError"))
    with pytest.raises(BackendUnavailable, match="not reachable"):
        backend.start()


def test_an_infrastructure_failure_runs_that_trial_locally_and_the_next_goes_remote_again():
    remote, local = Remote(failures=1, epochs_before_failing=2), Local()
    backend = FallbackBackend(remote, local)
    backend.start()
    epochs: list[int] = []
    first = backend.run(job(0), on_epoch=lambda r: epochs.append(r.epoch))
    assert first.executed_on.startswith("local:")
    assert "remote execution failed" in first.details["fallback_reason"]
    assert "stopped responding" in first.details["fallback_reason"]  # the worker's text is kept
    assert epochs == [1, 2, 3]  # epochs 1-2 came from the remote attempt; none was reported twice
    second = backend.run(job(1), on_epoch=lambda r: None)
    assert second.executed_on == "runpod:w1" and "fallback_reason" not in second.details
    assert local.started == 1 and remote.runs == ["r#0", "r#1"]


def test_local_workers_are_not_started_while_the_endpoint_works():
    local = Local()
    backend = FallbackBackend(Remote(), local)
    backend.start()
    assert backend.run(job(0), on_epoch=lambda r: None).executed_on == "runpod:w1"
    assert local.started == 0 and backend.notes == []
    assert backend.queue_ahead == 2  # the remote backend's wish, passed on to the orchestrator


def test_consecutive_failures_open_the_circuit_until_a_health_probe_succeeds():
    clock = Clock()
    remote, local = Remote(failures=3, probe_ok=False), Local()
    backend = FallbackBackend(remote, local, failure_threshold=3, probe_interval_s=30, clock=clock)
    backend.start()
    for i in range(3):
        backend.run(job(i), on_epoch=lambda r: None)
    assert remote.runs == ["r#0", "r#1", "r#2"] and backend.remote_down is not None
    assert "3 remote trials in a row failed" in backend.remote_down
    fourth = backend.run(job(3), on_epoch=lambda r: None)  # straight to local: the remote is not tried
    assert remote.runs == ["r#0", "r#1", "r#2"] and "3 remote trials in a row" in fourth.details["fallback_reason"]
    assert remote.probes == 0  # not before the probe interval
    clock.now += 31
    backend.run(job(4), on_epoch=lambda r: None)
    assert remote.probes == 1 and remote.runs == ["r#0", "r#1", "r#2"]  # probe failed: still local
    remote.probe_ok = True
    clock.now += 31
    back = backend.run(job(5), on_epoch=lambda r: None)
    assert remote.probes == 2 and back.executed_on == "runpod:w1" and backend.remote_down is None
    assert any("answered a health probe again" in n for n in backend.notes)


class Minimal(Backend):
    """A remote backend that overrides nothing but ``run``: the base contract's defaults (queue_ahead 0, probe None)."""

    name = "minimal"

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.fail = True

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        self.runs.append(job.trial_id)
        if self.fail:
            raise BackendUnavailable("minimal is down")
        return TrialResult(trial_id=job.trial_id, status="completed", executed_on="minimal")


def test_the_remote_is_used_through_the_backend_contract_only():
    """No probing for capabilities: queue_ahead and probe() come from the remote's Backend contract (defaults
    included), so a remote that keeps the default probe is probed and trusted again."""
    clock = Clock()
    remote, local = Minimal(), Local()
    backend = FallbackBackend(remote, local, failure_threshold=1, probe_interval_s=30, clock=clock)
    backend.start()
    assert backend.queue_ahead == 0 and backend.name == "minimal" and backend.probe() is None
    assert backend.run(job(0), on_epoch=lambda r: None).executed_on.startswith("local:")
    assert backend.remote_down and "minimal is down" in backend.remote_down
    remote.fail = False
    clock.now += 31
    assert backend.run(job(1), on_epoch=lambda r: None).executed_on == "minimal"  # the default probe said "up"
    assert remote.runs == ["r#0", "r#1"] and backend.remote_down is None


def test_without_fallback_a_remote_failure_propagates():
    backend = FallbackBackend(Remote(failures=1))
    backend.start()
    with pytest.raises(BackendUnavailable, match="stopped responding"):
        backend.run(job(0), on_epoch=lambda r: None)


def test_a_cancelled_trial_is_not_rerun_locally():
    remote, local = Remote(failures=1), Local()
    backend = FallbackBackend(remote, local)
    token = CancelToken()
    token.cancel("interrupted", hard=True)
    result = backend.run(job(0), on_epoch=lambda r: None, cancel=token)
    assert result.status == "stopped" and local.runs == []


# -- with the real RunPod client: its client-side deadlines end in a local run or a clear error ------------------------

def test_a_trial_no_worker_takes_runs_locally_after_the_queue_deadline():
    from hpo.backends.runpod import RunPodBackend
    from hpo.testing.runpod_sim import RunPodSimulator

    with RunPodSimulator(take_hold_s=1.0) as sim:
        local = Local()
        backend = FallbackBackend(RunPodBackend(sim.endpoint_url, queue_timeout_s=0.5), local)
        backend.start()
        result = backend.run(dataclasses.replace(job(0), time_limit_s=60.0), on_epoch=lambda r: None)
        assert result.executed_on.startswith("local:") and local.runs == ["r#0"]
        assert "no worker took it within 0.5 s (runpod_queue_timeout_s)" in result.details["fallback_reason"]
        assert sim.counts() == {"CANCELLED": 1}  # cancelled on the endpoint before the local run
        # the job's time limit counts from the call: the seconds spent waiting on the endpoint are not the trainer's
        assert local.jobs[0].time_limit_s <= 59.5
        backend.close()


def test_without_fallback_a_queue_deadline_is_a_clear_error():
    from hpo.backends.runpod import RunPodBackend
    from hpo.testing.runpod_sim import RunPodSimulator

    with RunPodSimulator(take_hold_s=1.0) as sim:
        backend = FallbackBackend(RunPodBackend(sim.endpoint_url, queue_timeout_s=0.5))
        backend.start()
        with pytest.raises(BackendUnavailable, match=r"no worker took it within 0\.5 s.*the job was cancelled"):
            backend.run(job(0), on_epoch=lambda r: None)
        assert sim.counts() == {"CANCELLED": 1}
        backend.close()


def test_endless_rate_limiting_runs_the_trial_locally_with_the_reason():
    from hpo.backends.runpod import RunPodBackend
    from hpo.testing.runpod_sim import RunPodSimulator

    with RunPodSimulator(take_hold_s=1.0) as sim:
        local = Local()
        remote = RunPodBackend(sim.endpoint_url, retry_after_max_s=0.2, rate_limit_budget_s=0.6)
        backend = FallbackBackend(remote, local)
        backend.start()
        sim.inject("run", 429, count=None, retry_after="0.2")
        result = backend.run(job(0), on_epoch=lambda r: None)
        assert local.runs == ["r#0"] and "still rate limited" in result.details["fallback_reason"]
        assert sim.jobs() == []
        backend.close()
