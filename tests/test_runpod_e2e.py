"""Acceptance: the RunPod path end to end with real TensorFlow workers.

The simulator plays RunPod's control plane on 127.0.0.1; two real ``python runpod_worker/handler.py`` processes run
the unmodified SDK worker loop against it; the CLI (``hpo optimize``, a subprocess) or ``hpo.optimize`` drives trials
through RunPodBackend. Small on purpose: synthetic_images, 1-2 epochs, a fraction of the data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from hpo.protocol import TrialJob
from hpo.testing.runpod_sim import RunPodSimulator, WorkerProcess, start_workers, stop_workers

from .conftest import BackgroundHpo, hpo_env, interruptible, run_hpo, selected

API_KEY = "rpa_FAKE_e2e_SECRET_93b1d0"
WORKERS = ("sim-worker-1", "sim-worker-2")
FAST = ["dataset=synthetic_images", "data_fraction=0.2", "plot_generation=none", "quiet=true", "pruner=none"]


class Cluster:
    def __init__(self, sim: RunPodSimulator, log_dir: Path) -> None:
        self.sim = sim
        self.log_dir = log_dir
        self.procs: dict[str, WorkerProcess] = {}

    def ensure_workers(self) -> None:
        """(Re)start any worker that is not running; wait until all have asked for a job."""
        for i, worker_id in enumerate(WORKERS, start=1):
            proc = self.procs.get(worker_id)
            if proc is None or not proc.alive():
                self.procs.update({p.worker_id: p for p in start_workers(self.sim, 1, first=i, wait=False,
                                                                         log_dir=self.log_dir)})
        self.sim.wait_for(lambda s: all(not s.workers().get(w, {"lost": True})["lost"] for w in WORKERS)
                          and all(p.alive() for p in self.procs.values()), 180, interval=0.2,
                          what="two ready workers")

    def logs(self) -> str:
        return "\n".join(p.log_text() for p in self.procs.values())

    def new_jobs(self, before: set[str]) -> list[dict]:
        return [j for j in self.sim.jobs() if j["id"] not in before]

    def job_ids(self) -> set[str]:
        return {j["id"] for j in self.sim.jobs()}


DOWN = "test_endpoint_down_from_the_start_runs_every_trial_locally"


@pytest.fixture(scope="module", autouse=True)
def down_run(request, tmp_path_factory):
    """The endpoint-down run trains locally and needs no worker: started with the module, beside the workers' start
    and the first test (a run keeps about one core busy); its test asserts on its result."""
    if not selected(request, DOWN):
        yield None
        return
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    folder = tmp_path_factory.mktemp("down")
    run = BackgroundHpo("optimize", *FAST, "trials=2", "concurrent_workers=1", "max_epochs_per_trial=1",
                        "use_runpod_service=true", f"runpod_endpoint_url=http://127.0.0.1:{port}/v2/gone",
                        f"output_dir={folder}", "run_name=down", cwd=folder, RUNPOD_API_KEY=API_KEY, timeout=300)
    try:
        yield run, port, folder
    finally:
        run.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("workers")
    # A worker is lost after 20 s without a ping (it pings every second): generous enough that a fully loaded 2-core
    # machine never delays a live worker's pings past it (3 s did, and the sim then failed a healthy job), short
    # enough that the killed-worker test sees the loss within its bounds.
    with RunPodSimulator(api_key=API_KEY, worker_timeout_s=20.0, take_hold_s=5.0) as sim:
        c = Cluster(sim, log_dir)
        try:
            c.ensure_workers()
            yield c
        finally:
            stop_workers(c.procs.values())


@pytest.fixture
def ready(cluster):
    cluster.ensure_workers()
    cluster.sim.clear_faults()
    return cluster


def remote_args(cluster: Cluster, run_name: str, out: Path, *extra: str) -> list[str]:
    return ["optimize", *FAST, "use_runpod_service=true", f"runpod_endpoint_url={cluster.sim.endpoint_url}",
            f"output_dir={out}", f"run_name={run_name}", *extra]


def stop_lines(logs: str, job_id: str) -> tuple[int, int]:
    """(epoch the cancel arrived after, epoch training stopped after) from the worker's log line."""
    for line in logs.splitlines():
        if f"job {job_id} " in line and "training stopped after epoch" in line:
            stopped = int(line.split("stopped after epoch ")[1].split()[0])
            arrived = int(line.split("cancel arrived after epoch ")[1].rstrip(")"))
            return arrived, stopped
    raise AssertionError(f"no stop line for job {job_id} in the worker logs")


def all_text(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


# -- end to end ---------------------------------------------------------------------------------------------------

def test_trials_run_on_the_workers_with_the_numbers_of_a_local_run(ready, tmp_path):
    before = ready.job_ids()
    proc = run_hpo(*remote_args(ready, "e2e", tmp_path, "trials=4", "concurrent_workers=2",
                                "max_epochs_per_trial=2"), cwd=tmp_path, RUNPOD_API_KEY=API_KEY, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trials: 4 completed" in proc.stdout
    run_dir = tmp_path / "e2e"

    from hpo.rundir import load_results

    result = load_results(run_dir)
    assert [t["state"] for t in result.trials] == ["complete"] * 4
    workers = {t["executed_on"] for t in result.trials}
    assert workers <= {f"runpod:{w}" for w in WORKERS}, workers  # the run folder says which worker ran each
    csv = (run_dir / "trials.csv").read_text()
    assert all(f"runpod:sim-worker" in line for line in csv.splitlines()[1:])
    jobs = ready.new_jobs(before)
    assert sorted(j["status"] for j in jobs) == ["COMPLETED"] * 4
    assert {j["worker_id"] for j in jobs} == {w.split(":", 1)[1] for w in workers}

    # The same jobs, run locally through run_trial in a fresh process, give the same numbers.
    inputs = [j["input"] for j in sorted(jobs, key=lambda j: j["input"]["trial_id"])]
    script = ("import json, sys\nfrom hpo.protocol import TrialJob\nfrom hpo.training import run_trial\n"
              "out = [run_trial(TrialJob.from_dict(j)).to_dict() for j in json.load(sys.stdin)]\n"
              "print(json.dumps(out))\n")
    local = subprocess.run([sys.executable, "-c", script], input=json.dumps(inputs), capture_output=True, text=True,
                           env=hpo_env(TF_CPP_MIN_LOG_LEVEL="2"), timeout=300, cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
    local_results = {r["trial_id"]: r for r in json.loads(local.stdout.strip().splitlines()[-1])}
    remote_results = {f"e2e#{t['number']}": t for t in result.trials}
    assert set(local_results) == set(remote_results)
    for trial_id, mine in local_results.items():
        theirs = remote_results[trial_id]
        assert mine["status"] == "completed"
        assert theirs["val_accuracy"] == pytest.approx(mine["val_metrics"]["accuracy"], abs=1e-6)
        assert theirs["val_loss"] == pytest.approx(mine["val_metrics"]["loss"], abs=1e-6)
        assert theirs["test_accuracy"] == pytest.approx(mine["test_metrics"]["accuracy"], abs=1e-6)
        assert theirs["test_loss"] == pytest.approx(mine["test_metrics"]["loss"], abs=1e-6)
        for key, values in mine["history"].items():
            assert theirs["history"][key] == pytest.approx(values, abs=1e-6), (trial_id, key)

    # The API key went to the endpoint as a Bearer token and nowhere else.
    assert ready.sim.authorization_seen == {"Bearer"} and ready.sim.auth_failures == 0
    secret = API_KEY.encode()
    assert secret not in all_text(run_dir)
    assert API_KEY not in proc.stdout + proc.stderr
    assert API_KEY not in ready.logs()


def test_endpoint_down_from_the_start_runs_every_trial_locally(down_run):
    run, port, tmp_path = down_run  # hpo optimize ... use_runpod_service=true runpod_endpoint_url=<nothing listens>
    proc = run.result()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trials: 2 completed" in proc.stdout
    assert "unreachable at start" in proc.stdout  # the summary says why
    from hpo.rundir import load_results

    trials = load_results(tmp_path / "down").trials
    assert all(t["executed_on"].startswith("local:") for t in trials)
    assert all("unreachable at start" in t["fallback_reason"] and f"127.0.0.1:{port}" in t["fallback_reason"]
               for t in trials)
    assert "fallback_reason" in (tmp_path / "down" / "trials.csv").read_text().splitlines()[0]
    assert API_KEY.encode() not in all_text(tmp_path / "down")
    assert API_KEY not in proc.stdout + proc.stderr


def test_endpoint_down_without_fallback_is_a_clear_error(tmp_path):
    proc = run_hpo("optimize", *FAST, "trials=1", "use_runpod_service=true", "runpod_fallback_local=false",
                   "runpod_endpoint_url=http://127.0.0.1:9/v2/gone", f"output_dir={tmp_path}", cwd=tmp_path,
                   RUNPOD_API_KEY=API_KEY, timeout=120)
    assert proc.returncode == 1
    assert "backend is unavailable" in proc.stderr and "127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr and API_KEY not in proc.stderr


# -- the worker --------------------------------------------------------------------------------------------------

def submit(cluster: Cluster, payload: object) -> str:
    r = requests.post(f"{cluster.sim.endpoint_url}/run", json={"input": payload},
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    r.raise_for_status()
    return r.json()["id"]


def finished(cluster: Cluster, job_id: str, timeout: float = 120) -> dict:
    cluster.sim.wait_for(lambda s: s.job(job_id)["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"),
                         timeout, what=f"job {job_id} finished")
    return cluster.sim.job(job_id)


def test_bad_inputs_get_an_error_and_the_worker_serves_the_next_job(ready):
    good = TrialJob(trial_id="bad#ok", dataset="synthetic_images", max_epochs=1, seed=3, data_fraction=0.2,
                    compute_health=False, params={"conv_blocks": 1, "filters": 16, "kernel_size": 3,
                                                  "activation": "relu", "batch_norm": False,
                                                  "global_pooling": True, "dense_layers": 0, "dropout": 0.0,
                                                  "learning_rate": 0.005, "optimizer": "adam", "batch_size": 64,
                                                  "weight_decay": 1e-5, "augmentation": "none"}).to_dict()
    missing = {k: v for k, v in good.items() if k != "params"}
    bad = {
        "missing": (missing, "missing required field 'params'"),
        "dataset": (dict(good, dataset="imagenet"), "unknown dataset 'imagenet'"),
        "types": (dict(good, max_epochs="2"), "field 'max_epochs' must be integer"),
        "huge": (dict(good, blob="x" * (2 * 2**20)), "at most"),
    }
    ids = {name: submit(ready, payload) for name, (payload, _) in bad.items()}
    for name, (_, words) in bad.items():
        job = finished(ready, ids[name])
        assert job["status"] == "FAILED", (name, job)
        assert words in job["error"] and "Traceback" not in job["error"], (name, job["error"])
    job = finished(ready, submit(ready, good), timeout=300)
    assert job["status"] == "COMPLETED", f"the good job ended {job['status']}: {job.get('error')!r}"
    assert job["output"]["trial_result"]["status"] == "completed", job["output"]
    assert job["output"]["trial_result"]["executed_on"] == f"runpod:{job['worker_id']}"
    health = finished(ready, submit(ready, {"command": "health"}))
    info = health["output"]["health"]
    assert info["tensorflow"].startswith("2.") and info["gpus"] == [] and info["worker_id"] == health["worker_id"]
    assert info["datasets"]["synthetic_images"] == "generated" and set(info["datasets"]) >= {"mnist", "cifar10"}
    assert all(p.alive() for p in ready.procs.values())


def test_429_responses_are_retried_and_the_trials_complete(ready, tmp_path, monkeypatch):
    import hpo

    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    ready.sim.inject("run", 429, count=3)
    ready.sim.inject("status", 429, count=6)
    ready.sim.inject("health", 429, count=1)
    before_429 = ready.sim.responses[("run", 429)], ready.sim.responses[("status", 429)]
    result = hpo.optimize(dataset="synthetic_images", trials=2, concurrent_workers=2, max_epochs_per_trial=1,
                          data_fraction=0.2, pruner="none", plot_generation="none", quiet=True,
                          use_runpod_service=True, runpod_endpoint_url=ready.sim.endpoint_url,
                          runpod_fallback_local=False, output_dir=str(tmp_path), run_name="r429")
    assert result.completed == 2
    assert all(t["executed_on"].startswith("runpod:sim-worker") for t in result.trials)
    assert ready.sim.responses[("run", 429)] - before_429[0] == 3
    assert ready.sim.responses[("status", 429)] - before_429[1] == 6


# -- cancellation --------------------------------------------------------------------------------------------------

LONG = ["max_epochs_per_trial=400", "early_stopping_patience=400"]


def test_a_trial_past_its_time_limit_is_cancelled_and_the_worker_stops_within_an_epoch(ready, tmp_path):
    before = ready.job_ids()
    proc = run_hpo(*remote_args(ready, "limit", tmp_path, "trials=1", "concurrent_workers=1",
                                "trial_timeout_minutes=0.08", *LONG), cwd=tmp_path, RUNPOD_API_KEY=API_KEY,
                   timeout=300)
    assert "trials: 0 completed, 0 pruned, 1 failed" in proc.stdout, proc.stdout + proc.stderr
    from hpo.rundir import load_results

    trial = load_results(tmp_path / "limit").trials[0]
    assert "time limit of 4.8 s" in trial["reason"] and trial["epochs"] >= 1
    jobs = ready.new_jobs(before)
    cancelled = [j for j in jobs if j["status"] == "CANCELLED"]
    assert len(cancelled) == 1 and cancelled[0]["taken_at"] is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            arrived, stopped = stop_lines(ready.logs(), cancelled[0]["id"])
            break
        except AssertionError:
            time.sleep(0.2)
    else:
        arrived, stopped = stop_lines(ready.logs(), cancelled[0]["id"])
    assert stopped <= arrived + 1 < 400


def test_ctrl_c_cancels_the_remote_jobs_and_the_workers_stop_within_an_epoch(ready, tmp_path):
    before = ready.job_ids()
    cmd = [sys.executable, "-m", "hpo", *remote_args(ready, "sigint", tmp_path, "trials=6", "concurrent_workers=2",
                                                     *LONG)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=hpo_env(RUNPOD_API_KEY=API_KEY), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        def two_training(s) -> bool:
            running = [j for j in s.jobs() if j["id"] not in before and j["status"] == "IN_PROGRESS"]
            return len(running) == 2 and all(j["progress_posts"] for j in running)

        ready.sim.wait_for(two_training, 120, interval=0.1, what="two trials training")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted" in out + err
    jobs = ready.new_jobs(before)
    assert jobs and all(j["status"] == "CANCELLED" for j in jobs), [j["status"] for j in jobs]
    started = [j for j in jobs if j["taken_at"] is not None]
    assert len(started) == 2
    deadline = time.monotonic() + 30
    for job in started:
        while True:
            try:
                arrived, stopped = stop_lines(ready.logs(), job["id"])
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert stopped <= arrived + 1
    assert API_KEY not in out + err


def test_a_worker_killed_mid_trial_loses_no_trial(ready, tmp_path):
    before = ready.job_ids()
    cmd = [sys.executable, "-m", "hpo", *remote_args(ready, "killed", tmp_path, "trials=3", "concurrent_workers=2",
                                                     "max_epochs_per_trial=6")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=hpo_env(RUNPOD_API_KEY=API_KEY), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def training(s) -> list[dict]:
            return [j for j in s.jobs() if j["id"] not in before and j["status"] == "IN_PROGRESS"
                    and j["progress_posts"]]

        ready.sim.wait_for(lambda s: bool(training(s)), 120, interval=0.05, what="a trial training")
        victim_job = training(ready.sim)[0]
        victim = victim_job["worker_id"]
        ready.procs[victim].kill()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert "trials: 3 completed" in out
    lost = ready.sim.job(victim_job["id"])
    assert lost["status"] == "FAILED" and f"worker {victim} stopped responding" in lost["error"]
    from hpo.rundir import load_results

    trials = load_results(tmp_path / "killed").trials
    assert len(trials) == 3 and all(t["state"] == "complete" for t in trials)
    redone = next(t for t in trials if f"killed#{t['number']}" == victim_job["input"]["trial_id"])
    # retried on the surviving worker, or run locally with the reason recorded
    assert redone["executed_on"] != f"runpod:{victim}"
    if redone["executed_on"].startswith("local:"):
        assert "stopped responding" in redone["fallback_reason"]
