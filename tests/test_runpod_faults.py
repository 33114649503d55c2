"""Fault injection: whole runs (``hpo.optimize`` / ``hpo optimize``) against the loopback RunPod simulator while the
control plane, the network or the workers misbehave.

Faults: (a) a 429 storm with Retry-After, (b) a 5xx storm, (c) connections dropped mid-poll (closed, reset, cut off
mid-answer), (d) a job no worker takes, (e) a real SDK worker killed mid-job, (f) malformed and (g) out-of-range
COMPLETED output, (h) the orchestrator killed with SIGKILL and the run resumed.

For each: no trial is lost (every asked trial ends completed, failed or run locally, with its reason), none is counted
twice (completed + pruned + failed == the distinct trials, each number once in trials.csv), the run ends within the
scenario's timeout (``pytest.mark.timeout``: a bound on the scenario, not a speed claim), and the planted key appears
in no file of the run folder, no log record and nowhere in the result. Where training is not the point a FakeWorker
(a thread speaking the worker routes) answers jobs; (e) uses real ``runpod`` SDK worker processes running
bench/sleep_handler.py (the real handler with a sleeping trainer); (d) falls back to real local training.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hpo
from hpo.testing.runpod_sim import (REPO_ROOT, FakeWorker, RunPodSimulator, completed_output, start_workers,
                                    stop_workers)

from .conftest import hpo_env

PLANTED = "rpa_PLANTED_fault_key_5e0c2b91d7"
SLEEP_HANDLER = REPO_ROOT / "bench" / "sleep_handler.py"
COUNTED = ("complete", "pruned", "fail")


@pytest.fixture
def planted(monkeypatch, caplog):
    monkeypatch.setenv("RUNPOD_API_KEY", PLANTED)
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def sim():
    with RunPodSimulator(api_key=PLANTED, take_hold_s=1.0, worker_timeout_s=30.0) as s:
        yield s


def optimize(sim: RunPodSimulator, out: Path, name: str, **options):
    opts = dict(dataset="synthetic_images", trials=3, max_epochs_per_trial=1, data_fraction=0.2, pruner="none",
                plot_generation="none", quiet=True, use_runpod_service=True, runpod_endpoint_url=sim.endpoint_url,
                output_dir=str(out), run_name=name, concurrent_workers=1)
    opts.update(options)
    return hpo.optimize(**opts)


def trial_number(job_input: dict) -> int:
    return int(job_input["trial_id"].rsplit("#", 1)[1])


def folder_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def assert_sound(result, run_dir: Path, trials: int, logs: str = "") -> list[dict]:
    """No trial lost, none counted twice, every failure and fallback with its reason, the key nowhere."""
    records = result.trials
    numbers = [t["number"] for t in records]
    assert len(numbers) == len(set(numbers)), numbers
    counted = [t for t in records if t["state"] in COUNTED]
    assert result.completed + result.pruned + result.failed == len(counted) == trials, records
    for t in records:
        assert t["state"] in COUNTED or (t["state"] == "interrupted" and any(r.get("retry_of") == t["number"]
                                                                             for r in records)), t
        if t["state"] == "fail":
            assert t["reason"], t
        if (t["executed_on"] or "").startswith("local:"):
            assert t["fallback_reason"], t
    with open(run_dir / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["number"]) for r in rows) == sorted(numbers)  # each trial once
    assert PLANTED.encode() not in folder_bytes(run_dir)
    assert PLANTED not in logs
    assert PLANTED not in json.dumps(result.to_dict(), default=str) + repr(result)
    return records


def observed(fault: str, records: list[dict], seconds: float, limit: int) -> None:
    """One line of the closing note's table (shown with ``pytest -s``)."""
    states = [t["state"] for t in records]
    local = sum(1 for t in records if (t["executed_on"] or "").startswith("local:"))
    print(f"\nFAULT {fault}: {states.count('complete')} completed ({local} locally), {states.count('fail')} failed, "
          f"{states.count('interrupted')} interrupted+retried; {seconds:.0f} s (timeout {limit} s)")


# -- (a) ------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_a_429_storm_with_retry_after_is_waited_out_without_falling_back(sim, planted, tmp_path):
    sim.inject("health", 429, count=2, retry_after="0.2")
    # 16 > 3 trials x 5: some trial's submission sees more 429s than its 6 attempts; each asks for an hour (capped)
    sim.inject("run", 429, count=16, retry_after="3600")
    sim.inject("status", 429, count=12, retry_after="0.3")
    started = time.monotonic()
    with FakeWorker(sim):
        result = optimize(sim, tmp_path, "a429", runpod_retry_after_max_s=0.3)
    records = assert_sound(result, tmp_path / "a429", 3, planted.text)
    assert result.completed == 3
    assert all(t["executed_on"] == "runpod:fake-1" and not t["fallback_reason"] for t in records)
    assert sim.responses[("run", 429)] == 16 and sim.responses[("status", 429)] == 12
    assert sim.counts() == {"COMPLETED": 3}
    observed("a 429 storm + Retry-After 3600 (cap 0.3 s)", records, time.monotonic() - started, 180)


# -- (b) ------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_b_a_5xx_storm_is_retried_and_an_endless_one_fails_the_trials_with_the_reason(sim, planted, tmp_path):
    sim.inject("run", 503, count=4, retry_after=None)  # fewer than the 6 attempts, whichever trial gets them
    sim.inject("status", 500, count=15)
    sim.inject("status", 502, rate=0.2)
    started = time.monotonic()
    with FakeWorker(sim):
        result = optimize(sim, tmp_path, "b5xx", runpod_fallback_local=False)
        records = assert_sound(result, tmp_path / "b5xx", 3, planted.text)
        assert result.completed == 3 and all(t["executed_on"] == "runpod:fake-1" for t in records)
        assert sim.responses[("run", 503)] == 4 and sim.responses[("status", 500)] == 15
        sim.clear_faults()
        sim.inject("run", 500, count=None)  # the endpoint stops accepting jobs
        endless = optimize(sim, tmp_path, "b5xx-endless", trials=2, runpod_fallback_local=False)
    records += assert_sound(endless, tmp_path / "b5xx-endless", 2, planted.text)
    assert endless.failed == 2
    assert all("HTTP 500" in t["reason"] and "after 6 attempts" in t["reason"] for t in endless.trials)
    assert sim.counts() == {"COMPLETED": 3}  # no job of the endless storm reached the queue
    observed("b 5xx storm / endless 5xx on /run", records, time.monotonic() - started, 180)


# -- (c) ------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_c_connections_dropped_mid_poll_lose_no_trial(sim, planted, tmp_path):
    for how in ("close", "reset", "truncate"):
        sim.inject("status", how, count=4)
    sim.inject("status", how, rate=0.15)
    sim.inject("run", "reset", count=2)
    sim.inject("status", 200, count=2, body="<html>proxy error</html>")  # and a malformed answer or two
    started = time.monotonic()
    with FakeWorker(sim):
        result = optimize(sim, tmp_path, "cdrop", runpod_fallback_local=False)
    records = assert_sound(result, tmp_path / "cdrop", 3, planted.text)
    assert result.completed == 3 and all(t["executed_on"] == "runpod:fake-1" for t in records)
    assert all(sim.responses[("status", how)] >= 4 for how in ("close", "reset", "truncate"))
    assert sim.responses[("run", "reset")] == 2
    assert sim.counts() == {"COMPLETED": 3}  # a dropped /run was not submitted twice
    observed("c connections closed / reset / truncated", records, time.monotonic() - started, 180)


# -- (d) ------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_d_a_job_no_worker_takes_is_cancelled_then_fails_or_runs_locally(sim, planted, tmp_path):
    started = time.monotonic()
    failed = optimize(sim, tmp_path, "dqueue", trials=2, runpod_queue_timeout_s=1.5, runpod_fallback_local=False)
    records = assert_sound(failed, tmp_path / "dqueue", 2, planted.text)
    assert failed.failed == 2
    assert all("no worker took it within 1.5 s (runpod_queue_timeout_s)" in t["reason"] for t in records)
    assert sim.counts() == {"CANCELLED": 2}  # cancelled on the endpoint, not left to its TTL
    local = optimize(sim, tmp_path, "dlocal", trials=2, runpod_queue_timeout_s=1.5)
    more = assert_sound(local, tmp_path / "dlocal", 2, planted.text)
    assert local.completed == 2
    assert all(t["executed_on"].startswith("local:") and "runpod_queue_timeout_s" in t["fallback_reason"]
               for t in more)
    assert sim.counts() == {"CANCELLED": 4}
    observed("d stuck in queue (fail / fall back)", records + more, time.monotonic() - started, 300)


# -- (e) ------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(360)
def test_e_a_real_sdk_worker_killed_mid_job_loses_no_trial(planted, tmp_path):
    # A worker is lost after 20 s without pings (it pings every second, from a process of its own): a loaded 2-core
    # machine does not delay a live worker's pings that long.
    with RunPodSimulator(api_key=PLANTED, worker_timeout_s=20.0, take_hold_s=2.0) as sim:
        procs = start_workers(sim, 2, handler=SLEEP_HANDLER, log_dir=tmp_path, env={"HPO_BENCH_SLEEP_S": "6"},
                              prefix="sdk", timeout=180)
        killed: dict[str, object] = {}

        def kill_one() -> None:
            try:
                sim.wait_for(lambda s: any(j["status"] == "IN_PROGRESS" for j in s.jobs()), 120, interval=0.05,
                             what="a job running on an SDK worker")
            except TimeoutError as exc:
                killed["error"] = str(exc)
                return
            job = next(j for j in sim.jobs() if j["status"] == "IN_PROGRESS")
            next(p for p in procs if p.worker_id == job["worker_id"]).kill()
            killed["job"] = job

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        started = time.monotonic()
        try:
            result = optimize(sim, tmp_path, "ekill", trials=2, concurrent_workers=2, runpod_fallback_local=False)
            killer.join(10)
            jobs = sim.jobs()
        finally:
            stop_workers(procs)
    assert "job" in killed, killed.get("error")
    records = assert_sound(result, tmp_path / "ekill", 2, planted.text)
    victim_job, victim = killed["job"], killed["job"]["worker_id"]  # type: ignore[index]
    assert result.completed == 2
    lost = next(j for j in jobs if j["id"] == victim_job["id"])
    assert lost["status"] == "FAILED" and f"worker {victim} stopped responding" in lost["error"]
    redone = next(t for t in records if f"ekill#{t['number']}" == victim_job["input"]["trial_id"])
    assert redone["executed_on"].startswith("runpod:sdk-") and redone["executed_on"] != f"runpod:{victim}"
    assert len(jobs) == 3 and sorted(j["status"] for j in jobs) == ["COMPLETED", "COMPLETED", "FAILED"]
    observed("e SDK worker killed mid-job (resubmitted)", records, time.monotonic() - started, 360)


# -- (f) and (g) ------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_f_malformed_completed_output_fails_the_trial_with_the_reason(sim, planted, tmp_path):
    def rewrite(job_input, output):
        n = trial_number(job_input)
        result = dict(output["trial_result"])
        return [["not", "an", "object"], {"no_trial_result": True},
                {"trial_result": dict(result, bogus=1)}][n % 3]

    sim.set_output_filter(rewrite)
    started = time.monotonic()
    with FakeWorker(sim):
        result = optimize(sim, tmp_path, "fbad")
    records = assert_sound(result, tmp_path / "fbad", 3, planted.text)
    assert result.failed == 3 and not any(t["fallback_reason"] for t in records)  # the worker answered: no rerun
    reasons = {t["number"] % 3: t["reason"] for t in records}
    assert "completed without a trial result" in reasons[0] and "completed without a trial result" in reasons[1]
    assert "invalid trial result" in reasons[2] and "unknown field(s) bogus" in reasons[2]
    assert sim.counts() == {"COMPLETED": 3}
    observed("f malformed COMPLETED output", records, time.monotonic() - started, 120)


@pytest.mark.timeout(120)
def test_g_out_of_range_completed_output_fails_the_trial_naming_the_field(sim, planted, tmp_path):
    def answer(job_input):
        n = trial_number(job_input)
        body = completed_output(job_input, worker="fake-1")
        result = body["output"]["trial_result"]
        if n % 3 == 0:
            result["val_metrics"]["accuracy"] = 7.5
        elif n % 3 == 1:
            result["epochs_run"] = -3
        else:
            result["val_metrics"]["loss"] = float("inf")  # sent as the JSON token Infinity
        return body

    started = time.monotonic()
    with FakeWorker(sim, answer=answer):
        result = optimize(sim, tmp_path, "grange")
    records = assert_sound(result, tmp_path / "grange", 3, planted.text)
    assert result.failed == 3 and result.best_value is None
    reasons = {t["number"] % 3: t["reason"] for t in records}
    assert "val_metrics.accuracy = 7.5 is not in [0, 1]" in reasons[0]
    assert "epochs_run = -3 is not in [0, 1]" in reasons[1]
    assert "val_metrics.loss = inf is not finite" in reasons[2]
    assert all(t["val_accuracy"] != 7.5 and t["epochs"] != -3 for t in records)  # none of it was believed
    observed("g out-of-range COMPLETED output", records, time.monotonic() - started, 120)


# -- (h) ------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(420)
def test_h_orchestrator_killed_while_a_trial_runs_resumes_and_retries_it_once(sim, planted, tmp_path):
    held = threading.Event()
    first_run = {"on": True}

    def answer(job_input):
        if first_run["on"] and trial_number(job_input) == 1:
            held.set()
            return None  # trial 1 stays IN_PROGRESS on the endpoint until the orchestrator is killed
        return completed_output(job_input, worker="fake-1")

    args = [sys.executable, "-m", "hpo", "optimize", "dataset=synthetic_images", "trials=3", "max_epochs_per_trial=1",
            "data_fraction=0.2", "pruner=none", "plot_generation=none", "quiet=true", "concurrent_workers=1",
            "use_runpod_service=true", f"runpod_endpoint_url={sim.endpoint_url}", "runpod_fallback_local=false",
            f"output_dir={tmp_path}", "run_name=hkill"]
    env = hpo_env(RUNPOD_API_KEY=PLANTED)
    run_dir = tmp_path / "hkill"

    def completed_rows() -> int:
        try:
            with open(run_dir / "trials.csv", newline="") as fh:
                return sum(1 for r in csv.DictReader(fh) if r["state"] == "complete")
        except (OSError, KeyError):
            return 0

    started = time.monotonic()
    with FakeWorker(sim, answer=answer) as worker:
        first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        try:
            sim.wait_for(lambda s: held.is_set() and completed_rows() >= 2 and first.poll() is None, 180,
                         interval=0.1, what="trials 0 and 2 recorded while trial 1 runs")
            os.kill(first.pid, signal.SIGKILL)
            out1, err1 = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == -signal.SIGKILL
        first_run["on"] = False
        second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        worker.release()  # the orphaned job of the killed run ends (nobody reads it)
    output = out1 + err1 + second.stdout + second.stderr
    assert second.returncode == 0, (f"the resumed run failed (orchestrator side: run lock takeover / recovery of "
                                    f"the trial left RUNNING):\n{second.stdout}\n{second.stderr}")
    result = hpo.load_results(run_dir)
    records = assert_sound(result, run_dir, 3, planted.text + output)
    by_number = {t["number"]: t for t in records}
    assert by_number[1]["state"] == "interrupted", (f"trial 1, running when the orchestrator was killed, should "
                                                    f"be shown as interrupted, not {by_number[1]['state']!r}")
    retries = [t for t in records if t.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0]["state"] == "complete", records  # retried once, with its params
    assert retries[0]["params"] == by_number[1]["params"]
    assert by_number[0]["state"] == by_number[2]["state"] == "complete"  # finished trials were not run again
    ran = [j["input"]["params"] for j in sim.jobs()]
    assert ran.count(by_number[1]["params"]) == 2 and ran.count(by_number[0]["params"]) == 1
    assert PLANTED not in output
    observed("h orchestrator kill -9 + resume", records, time.monotonic() - started, 420)
