"""Several orchestrator processes on one study in a real PostgreSQL 15 (a throw-away cluster on a loopback port).

The processes run the real session/search/dispatch path with a stand-in trainer (each epoch sleeps, then reports a
known accuracy), so what is tested is the sharing: schema creation by processes starting at the same instant, the
study's trials and epoch budget held across processes, the warm start once per study, a killed process's trial
retried exactly once by another (heartbeats), and a rejoining process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from .conftest import hpo_env, run_hpo
from hpo.testing.postgres import postgres_cluster

WORKER = r"""
import json, sys, time
from pathlib import Path
import hpo
from hpo.backends import Backend
from hpo.protocol import EpochReport, TrialResult

args = json.loads(sys.argv[1])
go = Path(args.pop("go"))
while not go.exists():  # every process starts at the same instant
    time.sleep(0.01)

class Sleepy(Backend):
    name = "sleepy"
    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        acc = 0.5 + 0.05 * job.params["conv_blocks"] - job.params["dropout"] / 10
        slow = args.get("slow_marker") and Path(args["slow_marker"]).exists()
        for epoch in range(1, job.max_epochs + 1):
            if cancel is not None and cancel.wait(args["epoch_s"] * (50 if slow else 1)):
                return TrialResult(trial_id=job.trial_id, status="stopped", epochs_run=epoch - 1)
            if on_epoch:
                on_epoch(EpochReport(trial_id=job.trial_id, epoch=epoch, metrics={"val_accuracy": acc}))
        return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=job.max_epochs, best_epoch=1,
                           val_metrics={"accuracy": acc, "loss": 1 - acc}, test_metrics={"accuracy": acc},
                           history={"val_accuracy": [acc] * job.max_epochs}, executed_on="sleepy")

options = {k: v for k, v in args.items() if k not in ("epoch_s", "slow_marker")}
result = hpo.optimize(dataset="synthetic_images", backend=Sleepy(), quiet=True, plot_generation="none",
                      pruner="none", **options)
print("RESULT", json.dumps({"completed": result.completed, "failed": result.failed,
                            "stop_reason": result.stop_reason}), flush=True)
"""


@pytest.fixture(scope="module")
def pg():
    with postgres_cluster() as cluster:
        yield cluster


def start(tmp_path: Path, name: str, go: Path, **options) -> subprocess.Popen:
    args = {"go": str(go), "output_dir": str(tmp_path / name), "epoch_s": 0.15, **options}
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)], cwd=tmp_path, env=hpo_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


@pytest.mark.parametrize("limit", ["trials", "epoch_budget"])
def test_three_processes_started_together_share_the_trials_and_the_budget(tmp_path, pg, limit):
    go = tmp_path / "go"
    name = f"shared-{limit}"
    common = dict(storage=pg["url"], run_name=name, max_epochs_per_trial=3, concurrent_workers=2)
    common.update(trials=9) if limit == "trials" else common.update(trials=50, epoch_budget=24)
    procs = [start(tmp_path, f"p{i}", go, **common) for i in range(3)]
    go.touch()
    outputs = [finish(p) for p in procs]  # all three joined the empty database (no schema race) and ended well
    every = trials_of(pg["url"], name)
    # rejected before training (a slot another process took meanwhile, or too big): PRUNED with why, never counted
    rejected = [t for t in every if t.user_attrs.get("rejected")]
    assert all(t.state.name == "PRUNED" and t.user_attrs["reason"] for t in rejected)
    trials = [t for t in every if t not in rejected]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    epochs = sum(t.user_attrs["epochs_trained"] for t in trials)
    # the study's limits held across processes: at most one trial over per process (docs: README, Scale out)
    if limit == "trials":
        assert 9 <= len(done) <= 9 + 3, [t.state.name for t in trials]
    else:
        assert 24 - 3 <= epochs <= 24 + 3 * 3, epochs
    assert len({t.number for t in done}) == len(done)  # each trial finished once
    assert not [t for t in trials if t.state.name in ("RUNNING", "FAIL", "WAITING")]
    assert sum(bool(t.user_attrs.get("warm_start")) for t in trials) == 1  # the warm start ran once per study
    by_process = {t.user_attrs["process"] for t in done}
    assert len(by_process) == 3, by_process  # each process ran some trials
    assert all("RESULT" in out for out in outputs)


def test_a_killed_process_trial_is_retried_once_by_another_and_the_process_rejoins(tmp_path, pg):
    go, slow = tmp_path / "go", tmp_path / "slow"
    common = dict(storage=pg["url"], run_name="killed", trials=8, max_epochs_per_trial=2, concurrent_workers=1,
                  heartbeat_grace_s=3)
    slow.touch()  # the victim's trials hang until it is killed
    victim = start(tmp_path, "victim", go, slow_marker=str(slow), **common)
    go.touch()
    deadline = time.monotonic() + 120
    while True:
        mine = [t for t in trials_of(pg["url"], "killed")
                if t.state.name == "RUNNING" and t.user_attrs.get("process", "").endswith(f":{victim.pid}")
                and "job" in t.user_attrs]  # dispatched: its params are all drawn
        if mine:
            break
        assert time.monotonic() < deadline and victim.poll() is None, victim.communicate()
        time.sleep(0.1)
    lost = mine[0].number
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    slow.unlink()
    time.sleep(common["heartbeat_grace_s"] + 1)  # its last heartbeat is now older than the grace period: stale
    others = [start(tmp_path, f"o{i}", go, **common) for i in range(2)]
    for p in others:
        finish(p)
    trials = trials_of(pg["url"], "killed")
    by_number = {t.number: t for t in trials}
    assert by_number[lost].state.name == "FAIL" and not by_number[lost].user_attrs.get("counted")  # interrupted
    retries = [t for t in trials if t.user_attrs.get("retry_of") == lost]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"  # retried exactly once
    assert retries[0].params == by_number[lost].params
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 8
    assert not [t for t in trials if t.state.name == "RUNNING"]

    # the killed process, restarted later, rejoins (its folder's lock died with it) and finds the study done
    again = start(tmp_path, "victim", go, **dict(common, trials=9))
    out = finish(again)
    assert json.loads(out.split("RESULT", 1)[1])["failed"] == 0
    assert sum(t.state.name == "COMPLETE" for t in trials_of(pg["url"], "killed")) >= 9

    shown = run_hpo("show", f"storage={pg['url']}", "run_name=killed", cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "processes: " in shown.stdout and pg["password"] not in shown.stdout + shown.stderr


def test_a_process_with_other_study_options_exits_2_naming_them(tmp_path, pg):
    # the first process defines the study (the stand-in trainer: what is tested is the second process's refusal)
    go = tmp_path / "go"
    go.touch()
    finish(start(tmp_path, "a", go, storage=pg["url"], run_name="defined", trials=1, max_epochs_per_trial=1,
                 data_fraction=0.2))
    assert len(trials_of(pg["url"], "defined")) == 1
    other = run_hpo("optimize", "dataset=synthetic_images", "trials=1", "max_epochs_per_trial=1",
                    "data_fraction=0.5", "activation=elu", "quiet=true", f"storage={pg['url']}", "run_name=defined",
                    f"output_dir={tmp_path / 'b'}", cwd=tmp_path, timeout=300)
    assert other.returncode == 2, other.stdout + other.stderr
    assert "data_fraction" in other.stderr and "pins" in other.stderr and "Traceback" not in other.stderr
    assert pg["password"] not in other.stderr
    assert len(trials_of(pg["url"], "defined")) == 1  # nothing was added by the refused process
