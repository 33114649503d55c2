"""time_budget_minutes: the run ends by a time, everything included. Jobs carry the seconds left; no trial starts
that cannot fit; trials still running when the time for trials is over are cut at their epoch's end and kept
(complete at what they trained); the ETA never goes past the budget. (Whether real runs end by T is measured by
bench/time_budget.py, never by a timed test.)"""

from __future__ import annotations

import threading

import pytest

import hpo
from hpo.backends import Backend
from hpo.budget import BUDGET_CUT, TimeBudget, finish_reserve_s
from hpo.config import OptimizationConfig
from hpo.progress import ProgressTracker
from hpo.protocol import TrialResult

# the budget's own rules, without the final training (tests/test_finale.py)
FAST = dict(quiet=True, pruner="none", plot_generation="none", warm_start=False, concurrent_workers=2,
            final_training_share=0.0)


class Paced(Backend):
    """Each epoch takes ``epoch_s``; the trainer honours the job's time limit (``honour``) as hpo's does, or trains
    until cancelled: soft, it answers ``stopped`` with its best epoch's metrics; hard, with none."""

    name = "paced"

    def __init__(self, epoch_s: float, *, honour: bool = True) -> None:
        self.epoch_s, self.honour = epoch_s, honour
        self.jobs = []
        self._lock = threading.Lock()

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        import time

        with self._lock:
            self.jobs.append(job)
        started, history = time.monotonic(), []
        for epoch in range(1, job.max_epochs + 1):
            began, seconds = time.monotonic(), self.seconds(job, epoch)
            if cancel is not None and cancel.wait(seconds) and cancel.hard:
                return TrialResult(trial_id=job.trial_id, status="stopped", error=cancel.reason, executed_on="paced")
            time.sleep(max(0.0, began + seconds - time.monotonic()))  # soft: the epoch in progress ends
            acc = self.accuracy(job, epoch)
            history.append(acc)
            elapsed = time.monotonic() - started
            if on_epoch is not None:
                from hpo.protocol import EpochReport

                on_epoch(EpochReport(trial_id=job.trial_id, epoch=epoch, metrics={"val_accuracy": acc,
                                                                                   "elapsed_s": elapsed}))
            if cancel is not None and cancel.cancelled:
                return self._result(job, history, elapsed, "stopped")
            if self.honour and job.time_limit_s is not None and elapsed + 1.5 * seconds > job.time_limit_s:
                return self._result(job, history, elapsed, "completed", out_of_time=True)
        return self._result(job, history, time.monotonic() - started, "completed")

    def seconds(self, job, epoch):
        """How long ``job``'s ``epoch`` takes."""
        return self.epoch_s

    def accuracy(self, job, epoch):
        """``job``'s validation accuracy after ``epoch``: grows with epochs and the learning rate."""
        return min(0.99, 0.3 + 0.01 * epoch + job.params["learning_rate"])

    @staticmethod
    def _result(job, history, seconds, status, **details):
        best = max(history)
        return TrialResult(trial_id=job.trial_id, status=status, epochs_run=len(history),
                           best_epoch=history.index(best) + 1, val_metrics={"accuracy": best, "loss": 1 - best},
                           test_metrics={"accuracy": best}, executed_on="paced",
                           history={"val_accuracy": history}, train_seconds=seconds, details=details)


def test_jobs_carry_the_time_left_and_the_run_stops_starting_trials_that_cannot_fit(tmp_path):
    backend = Paced(0.25)
    # 40 epochs of 0.25 s: no trial can train them all in 6 s, the first ones end by their time limit
    result = hpo.optimize(dataset="synthetic_images", trials=200, max_epochs_per_trial=40, time_budget_minutes=0.1,
                          backend=backend, output_dir=str(tmp_path), run_name="b", **FAST)
    assert "time_budget_minutes=0.1" in (result.stop_reason or "") or result.stop_reason == BUDGET_CUT
    limits = [j.time_limit_s for j in backend.jobs]
    assert limits and all(limit is not None and 0 < limit <= 6.0 for limit in limits)
    assert limits == sorted(limits, reverse=True)  # the time left, at each start
    assert result.completed >= 1 and len(backend.jobs) < 200
    cut = [t for t in result.trials if (t["reason"] or "").startswith("time_budget_minutes: trained")]
    assert cut and all(t["state"] == "complete" for t in cut)  # complete at the epochs they trained, and counted
    assert result.best_value == max(t["value"] for t in result.trials if t["state"] == "complete")


def test_trials_still_running_when_the_time_is_over_are_cut_at_their_epoch_and_kept(tmp_path):
    backend = Paced(0.2, honour=False)  # a trainer that ignores the time limit: the dispatcher cuts it
    result = hpo.optimize(dataset="synthetic_images", trials=10, max_epochs_per_trial=500, min_epochs_per_trial=1,
                          time_budget_minutes=0.05, backend=backend, output_dir=str(tmp_path), run_name="c", **FAST)
    assert result.stop_reason == BUDGET_CUT
    assert len(backend.jobs) == 2  # the two first trials, both cut
    for t in result.trials:
        assert t["state"] == "complete", t
        assert t["reason"] == f"time_budget_minutes: trained {t['epochs']} epochs" and 1 <= t["epochs"] < 500
    assert result.completed == 2 and result.failed == 0 and result.best_trial_number is not None


def test_a_budget_too_short_for_the_next_trial_stops_the_run_with_the_reason():
    config = OptimizationConfig(dataset="synthetic_images", time_budget_minutes=1.0, min_epochs_per_trial=2)
    budget = TimeBudget(config, started=0.0)  # began long ago (time.monotonic() is far past 60 s)
    assert budget.time_left() < 0
    assert budget.fits() == (False, budget.fits()[1]) and "time_budget_minutes=1" in budget.fits()[1]
    fresh = TimeBudget(config)
    assert fresh.fits()[0]  # nothing measured yet: a trial may start
    fresh.record(TrialResult(trial_id="t", status="completed", epochs_run=4, train_seconds=40.0))
    assert fresh.trial_needs_s() == pytest.approx(10.0 * 2.5)  # 2 epochs and the evaluation at 10 s per epoch
    assert fresh.fits()[0] and fresh.time_left() == pytest.approx(60 - finish_reserve_s(config, 60), abs=1.0)
    assert not TimeBudget(OptimizationConfig(dataset="synthetic_images")).active


def test_the_finishing_reserve_is_kept_for_plots_and_never_more_than_a_quarter():
    plots = OptimizationConfig(dataset="synthetic_images", plot_generation="all")
    none = OptimizationConfig(dataset="synthetic_images", plot_generation="none")
    assert finish_reserve_s(plots, 3600) > finish_reserve_s(none, 3600) > 0
    assert finish_reserve_s(plots, 40) == 10.0


def test_the_eta_never_goes_past_the_budget():
    now = [100.0]
    tracker = ProgressTracker(total=50, clock=lambda: now[0])
    tracker.end_by = 160.0
    for n in range(2):
        tracker.trial_started(n, max_epochs=10)
    now[0] = 130.0
    tracker.trial_finished(0, "completed", value=0.5)
    snap = tracker.snapshot()
    assert snap["eta_limit"] == "budget" and snap["eta_s"] == pytest.approx(30.0)
    tracker.end_by = None
    assert tracker.snapshot()["eta_s"] > 30.0  # 49 trials of 30 s on one slot: the trial count alone is far longer


def test_a_budget_of_zero_or_less_is_refused_by_the_cli_with_exit_2(capsys):
    from hpo.cli import main

    assert main(["optimize", "dataset=synthetic_images", "time_budget_minutes=0"]) == 2
    err = capsys.readouterr().err
    assert "time_budget_minutes" in err and "Traceback" not in err


def test_a_budget_that_ends_before_any_trial_completes_says_so_and_how_to_mend_it(tmp_path, capsys):
    """A budget too short for one trial (the workers' start-up alone takes seconds): the run ends by it, exit 1 (the
    run happened, nothing completed), and the message names the option, its seconds and the remedy."""
    from hpo.cli import main

    code = main(["optimize", "dataset=synthetic_images", "time_budget_minutes=0.02", "plot_generation=none",
                 f"output_dir={tmp_path}", "concurrent_workers=1"])
    out, err = capsys.readouterr()
    assert code == 1 and "0 completed" in out
    assert "no trial completed within time_budget_minutes=0.02 (1 s" in err and "give the run more time" in err
    assert "Traceback" not in err
