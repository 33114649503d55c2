"""The real SDK worker loop with the benchmark's sleeping trainer (no TensorFlow): prefetch and cancellation.

bench/sleep_handler.py is runpod_worker/handler.py with run_trial replaced by sleeping, so these tests exercise the
handler's concurrency modifier inside the unmodified ``runpod`` worker loop.
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
def cluster(tmp_path, request):
    prefetch = getattr(request, "param", None)
    env = {"HPO_BENCH_SLEEP_S": "2"}
    if prefetch is not None:
        env["HPO_WORKER_PREFETCH_S"] = str(prefetch)
    with RunPodSimulator(worker_timeout_s=10) as sim:
        procs = start_workers(sim, 1, handler=SLEEP_HANDLER, log_dir=tmp_path, env=env, prefix="sleeper")
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


def test_prefetch_takes_the_next_job_before_the_current_one_ends(cluster):
    sim, _ = cluster
    backend = RunPodBackend(sim.endpoint_url)
    backend.start()
    results = run_all(backend, [job(0), job(1)])
    assert [r.status for r in results] == ["completed", "completed"]
    first, second = sorted(sim.jobs(), key=lambda j: j["created_at"])
    assert second["taken_at"] < first["finished_at"]  # asked for while the first was finishing
    assert first["finished_at"] - second["taken_at"] < 2.0  # ... only near its end, not at its start
    # the second started the moment the first ended: no SDK idle second in between
    assert second["finished_at"] - first["finished_at"] < 2.0 + 0.5


@pytest.mark.parametrize("cluster", [0], indirect=True)
def test_without_prefetch_the_sdk_waits_until_the_current_job_is_done(cluster):
    sim, _ = cluster
    backend = RunPodBackend(sim.endpoint_url)
    backend.start()
    run_all(backend, [job(0), job(1)])
    first, second = sorted(sim.jobs(), key=lambda j: j["created_at"])
    assert second["taken_at"] >= first["finished_at"]


def test_a_prefetched_job_that_is_cancelled_is_stopped_when_it_starts(cluster):
    sim, procs = cluster
    backend = RunPodBackend(sim.endpoint_url)
    backend.start()
    token = CancelToken()
    results: dict[str, object] = {}
    t0 = threading.Thread(target=lambda: results.setdefault("a", backend.run(job(0, epochs=4))))
    t0.start()
    time.sleep(0.1)
    t1 = threading.Thread(target=lambda: results.setdefault("b", backend.run(job(1, epochs=200), cancel=token)))
    t1.start()
    # wait until the worker has prefetched d#1 (taken while d#0 still runs), then cancel it
    sim.wait_for(lambda s: sum(j["status"] == "IN_PROGRESS" for j in s.jobs()) == 2, 20, what="a prefetched job")
    token.cancel("pruned")
    t0.join(30)
    t1.join(30)
    assert results["a"].status == "completed" and results["b"].status == "stopped"
    cancelled = next(j for j in sim.jobs() if j["input"]["trial_id"] == "d#1")
    assert cancelled["status"] == "CANCELLED"
    # the SDK only stops jobs whose task runs; the stop signal is re-delivered until the worker lets go of it
    log = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and f"job {cancelled['id']} (d#1) cancelled; training stopped" not in log:
        time.sleep(0.2)
        log = procs[0].log_text()
    line = next(x for x in log.splitlines() if f"job {cancelled['id']} (d#1) cancelled; training stopped" in x)
    stopped_after = int(line.split("stopped after epoch ")[1].split()[0])
    assert stopped_after < 150  # 0.01 s epochs: stopped within about half a second of starting, not after 2 s
    # and the worker serves the next job
    assert backend.run(job(2, epochs=2)).status == "completed"
