"""The timed cosine: a job with a time limit (a final of final_training_share, the last trials of time_budget_minutes)
ends its learning-rate schedule where its training ends, however far its epochs' pace strays from the estimate its
epochs were counted with."""

import math

import pytest

from hpo.training import TimedCosine, run_trial

from .test_training import CNN, job


def test_unplanned_it_is_the_step_cosine():
    s = TimedCosine(0.01, 100)
    assert s.rate(0) == pytest.approx(0.01)
    assert s.rate(50) == pytest.approx(0.005)
    assert s.rate(100) == pytest.approx(0.0, abs=1e-12) and s.rate(150) == pytest.approx(0.0, abs=1e-12)
    assert s.end() == 100


def test_replanned_shorter_it_stays_continuous_and_reaches_zero_at_the_new_end():
    s = TimedCosine(0.01, 1000)
    before = s.rate(200)
    s.replan(200, 300)  # the time left fits 300 more steps, not 800
    assert s.rate(200) == pytest.approx(before)  # no jump
    assert s.end() == 500
    assert s.rate(499) > 0 and s.rate(500) == pytest.approx(0.0, abs=1e-12)
    assert s.progress(350) == pytest.approx(0.2 + 0.5 * 0.8)


def test_replanned_longer_again_it_never_passes_the_planned_steps():
    s = TimedCosine(0.01, 1000)
    s.replan(100, 100)  # a slow first epoch (tracing) made it look short
    at = s.rate(150)
    s.replan(150, 10_000)  # the pace recovered: aim at the planned end again, not beyond
    assert s.rate(150) == pytest.approx(at) and s.end() == 1000
    assert 0 < s.rate(999) < s.rate(150) and s.rate(1000) == pytest.approx(0.0, abs=1e-12)
    # monotone: the rate never rises
    rates = [s.rate(k) for k in range(150, 1001, 10)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_a_time_limited_trial_ends_its_schedule_where_the_time_ends():
    """A job planned for far more epochs than fit: the rate at its last epoch has decayed nearly to 0 (a step cosine
    cut there would still be near its start), and the trial is complete at the epochs it trained."""
    run_trial(job(max_epochs=1))  # TensorFlow imported and warm: the time limit is for training
    result = run_trial(job(max_epochs=400, patience=400, schedule_epochs=400, lr_schedule="cosine",
                           time_limit_s=8.0))
    assert result.status == "completed", result.error
    assert result.details.get("out_of_time") is True and result.epochs_run < 400
    lr = result.history["learning_rate"]
    step_cosine_then = 0.5 * (1 + math.cos(math.pi * result.epochs_run / 400))  # what CosineDecay would be at
    assert step_cosine_then > 0.9  # the step schedule would have barely begun
    assert lr[-1] < 0.1 * CNN["learning_rate"], lr
    assert all(a >= b - 1e-9 for a, b in zip(lr, lr[1:])), lr  # it only falls


def test_without_a_time_limit_the_step_schedule_is_unchanged():
    result = run_trial(job(lr_schedule="cosine", max_epochs=2, schedule_epochs=4, patience=4))
    assert result.history["learning_rate"][1] == pytest.approx(CNN["learning_rate"] / 2, rel=0.02)
