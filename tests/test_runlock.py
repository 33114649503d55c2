"""One run folder, one writer; stale trials judged by liveness, never by "RUNNING when I started".

- A second `hpo optimize` on a folder in use exits 2 at once naming the holder; the first run is untouched.
- A `kill -9`ed holder's lock is taken over by the next run, which resumes: the trial that was running is shown as
  interrupted (never as failed) and retried once.
- Two processes sharing one study through one storage never fail each other's running trials (heartbeats).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpo.runlock import HOLDER_FILE, RunLock, RunLocked, holder_of

from .conftest import hpo_env, interruptible, run_hpo

TINY = ["dataset=synthetic_images", "data_fraction=0.2", "plot_generation=none", "quiet=true", "pruner=none"]
#: a trial that trains until it is stopped (the test ends it)
ENDLESS = ["max_epochs_per_trial=1000", "early_stopping_patience=1000"]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, env=hpo_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible)


def study_states(storage: str, name: str) -> dict[int, tuple[str, dict]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except Exception:  # noqa: BLE001 - not created yet (or locked for a moment): nothing to report
        return {}
    return {t.number: (t.state.name, dict(t.user_attrs)) for t in study.get_trials(deepcopy=False)}


def running(storage: str, name: str) -> list[int]:
    return [n for n, (state, _) in study_states(storage, name).items() if state == "RUNNING"]


# -- the lock itself -------------------------------------------------------------------------------------------------

def test_a_second_lock_on_a_folder_is_refused_with_the_holder_named_and_freed_on_release(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    assert holder_of(tmp_path / "run")["pid"] == os.getpid()
    with pytest.raises(RunLocked, match=rf"in use by process {os.getpid()} on host"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / HOLDER_FILE).exists()
    with RunLock(tmp_path / "run") as again:
        assert again.held


# -- two processes on one run folder ---------------------------------------------------------------------------------

def test_a_second_run_on_a_folder_in_use_exits_2_at_once_and_the_first_finishes_untouched(tmp_path):
    args = ["optimize", *TINY, "trials=3", "max_epochs_per_trial=2", f"output_dir={tmp_path}", "run_name=busy"]
    first = start(args, tmp_path)
    storage = f"sqlite:///{tmp_path / 'busy' / 'study.db'}"
    try:
        wait_for(lambda: bool(running(storage, "busy")), 240, "the first run's first trial", first)
        second = run_hpo(*args, cwd=tmp_path, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by process {first.pid} on host" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out + err
    assert "trials: 3 completed, 0 pruned, 0 failed" in out, out + err
    states = study_states(storage, "busy")
    assert sorted(s for s, _ in states.values()) == ["COMPLETE"] * 3, states


def test_a_killed_holders_lock_is_taken_over_and_the_run_resumes_with_its_trial_interrupted_and_retried(tmp_path):
    args = ["optimize", *TINY, "trials=2", "max_epochs_per_trial=3", f"output_dir={tmp_path}", "run_name=crash"]
    storage = f"sqlite:///{tmp_path / 'crash' / 'study.db'}"
    victim = start(["optimize", *TINY, "trials=2", *ENDLESS, f"output_dir={tmp_path}", "run_name=crash"], tmp_path)
    try:
        wait_for(lambda: bool(running(storage, "crash")), 240, "a running trial", victim)
        [lost] = running(storage, "crash")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    resumed = run_hpo(*args, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"trial {lost} was left running" in resumed.stdout
    # the crash is no failure: 2 completed, nothing failed, done never above total
    assert "trials: 2 completed, 0 pruned, 0 failed" in resumed.stdout, resumed.stdout
    from hpo.rundir import load_results

    result = load_results(tmp_path / "crash")
    by_number = {t["number"]: t for t in result.trials}
    assert by_number[lost]["state"] == "interrupted"
    retries = [t for t in result.trials if t["retry_of"] == lost]
    assert len(retries) == 1 and retries[0]["state"] == "complete", result.trials
    assert retries[0]["params"] == by_number[lost]["params"]
    assert result.failed == 0 and result.completed == 2


# -- two processes sharing one study -----------------------------------------------------------------------------------

def test_a_process_joining_a_shared_study_never_fails_the_running_trial_of_a_live_one(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    common = [*TINY, f"storage={storage}", "run_name=shared"]
    a = start(["optimize", *common, "trials=1", *ENDLESS, f"output_dir={tmp_path / 'a'}"], tmp_path)
    try:
        wait_for(lambda: bool(running(storage, "shared")), 240, "process A's trial", a)
        [a_trial] = running(storage, "shared")
        # trials is the study's total: A's running trial is one of B's 2
        b = run_hpo("optimize", *common, "trials=2", "max_epochs_per_trial=1", f"output_dir={tmp_path / 'b'}",
                    cwd=tmp_path, timeout=600)
        assert b.returncode == 0, b.stdout + b.stderr
        assert "left running" not in b.stdout
        states = study_states(storage, "shared")
        assert states[a_trial][0] == "RUNNING", states  # B left A's live trial alone
        a.send_signal(signal.SIGINT)
        out, err = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 130, out + err  # A stopped on our Ctrl-C, not on an error from B's doing
    assert "UpdateFinishedTrialError" not in out + err
    states = study_states(storage, "shared")
    assert states[a_trial][1].get("interrupted") is True, (states[a_trial], out, err)  # recorded by A itself
    # B's trials that trained: a configuration B rejected before training (over max_params: B's sampler stream is
    # its own, salted with its process id, so now and then it draws one) is not a trial of the run
    b_trials = [n for n in states if n != a_trial and not states[n][1].get("rejected")]
    brief = {n: (state, {k: attrs.get(k) for k in ("reason", "rejected", "retry_of", "process", "interrupted")})
             for n, (state, attrs) in states.items()}  # on a failure: what each trial was, not the jobs' contents
    assert b_trials and all(states[n][0] == "COMPLETE" for n in b_trials), (brief, b.stdout[-2000:], out[-2000:])
