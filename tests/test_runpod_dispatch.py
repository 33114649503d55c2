"""The real SDK worker loop with the benchmark's sleeping trainer (no TensorFlow): taking jobs and cancellation.

bench/sleep_handler.py is runpod_worker/handler.py with run_trial replaced by sleeping, so these tests exercise the
handler's public-API hooks (handler, concurrency modifier, progress updates) inside the unmodified ``runpod`` worker
loop.
"""

from __future__ import annotations

import threading
import time

import pytest

from hpo.backends import CancelToken
from hpo.backends.runpod import RunPodBackend
from hpo.protocol import TrialJob
from hpo.testing.runpod_sim import REPO_ROOT, RunPodSimulator, start_workers, stop_workers

SLEEP_HANDLER = REPO_ROOT / "bench" / "sleep_handler.py"
# a valid synthetic_images configuration (the worker checks params against the search space)
PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


def job(n: int, epochs: int = 4) -> TrialJob:
    return TrialJob(trial_id=f"d#{n}", dataset="synthetic_images", params=PARAMS, max_epochs=epochs, seed=n)


@pytest.fixture
def cluster(tmp_path):
    with RunPodSimulator(worker_timeout_s=10) as sim:
        procs = start_workers(sim, 1, handler=SLEEP_HANDLER, log_dir=tmp_path, env={"HPO_BENCH_SLEEP_S": "2"},
                              prefix="sleeper")
        try:
            yield sim, procs
        finally:
            stop_workers(procs)


def run_all(backend: RunPodBackend, jobs: list[TrialJob], **kw) -> list:
    results: list = [None] * len(jobs)

    def one(i: int) -> None:
        results[i] = backend.run(jobs[i], **kw)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for i, t in enumerate(threads):
        t.start()
        time.sleep(0.05 if i == 0 else 0)  # d#0 is submitted first
    for t in threads:
        t.join(60)
    return results


def test_a_worker_takes_its_next_job_once_the_current_one_is_answered(cluster):
    """One job at a time (HPO_WORKER_CONCURRENCY=1): the SDK's loop asks for the next job only after the current one
    is answered (the handler uses no SDK internals to ask earlier), and then it runs with no job lost."""
    sim, procs = cluster
    backend = RunPodBackend(sim.endpoint_url)
    backend.start()
    results = run_all(backend, [job(0), job(1)])
    assert [r.status for r in results] == ["completed", "completed"]
    assert [[e for e in r.history["loss"]] for r in results] == [[1.0, 0.5, 1 / 3, 0.25]] * 2
    first, second = sorted(sim.jobs(), key=lambda j: j["created_at"])
    assert second["taken_at"] >= first["finished_at"]
    assert first["worker_id"] == second["worker_id"] == "sleeper-1"
    assert procs[0].log_text().count("completed after 4 epoch(s)") == 2  # the handler's line for each job


def test_a_running_job_that_is_cancelled_stops_within_an_epoch_and_the_worker_serves_the_next(cluster):
    sim, procs = cluster
    backend = RunPodBackend(sim.endpoint_url)
    backend.start()
    token = CancelToken()
    epochs: list[int] = []

    def on_epoch(report) -> None:
        epochs.append(report.epoch)
        token.cancel("pruned")

    result = backend.run(job(1, epochs=200), on_epoch=on_epoch, cancel=token)  # 0.01 s epochs, 2 s in all
    assert result.status == "stopped" and result.error == "pruned" and epochs and epochs == sorted(set(epochs))
    cancelled = next(j for j in sim.jobs() if j["input"]["trial_id"] == "d#1")
    assert cancelled["status"] == "CANCELLED"
    # the SDK stops the handler's task; the handler stops the trainer after the batch in training and says so
    done = f"job {cancelled['id']} (d#1) cancelled; training stopped"
    sim.wait_for(lambda s: done in procs[0].log_text(), 20, what="the worker's stop line")
    line = next(x for x in procs[0].log_text().splitlines() if done in x)
    stopped_after = int(line.split("stopped after epoch ")[1].split()[0])
    assert stopped_after < 150  # stopped within about half a second of the cancel, not after the job's 2 s
    # and the worker serves the next job
    assert backend.run(job(2, epochs=2)).status == "completed"
