"""FarBehindPruner: the rule hpo puts on top of every Optuna pruner, on hand-made studies with known answers."""

import optuna
import pytest

from hpo.pruners import FarBehindPruner

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Never(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return False


class Always(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def _study(curves, pruner):
    """A study whose finished trials have the given per-epoch curves."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in curves:
        trial = study.ask()
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
        study.tell(trial, max(curve))
    return study


def _judge(study, values):
    trial = study.ask()
    for epoch, value in enumerate(values, start=1):
        trial.report(value, epoch)
    return trial.should_prune(), trial.number


def test_a_trial_far_below_the_best_curve_is_pruned_even_when_the_schedule_would_keep_it():
    pruner = FarBehindPruner(Never(), margin=0.15)
    study = _study([[0.80, 0.85, 0.88], [0.60, 0.70, 0.75]], pruner)
    # epoch 2: best other trial had 0.85; 0.70 < 0.85 * 0.85 = 0.7225 -> pruned, and the reason says why
    pruned, number = _judge(study, [0.79, 0.70])
    assert pruned
    assert pruner.reasons[number].startswith("pruned at epoch 2: far behind")
    assert "0.8500" in pruner.reasons[number]
    # within the margin of the best at that epoch: the wrapped pruner decides (here: never)
    assert _judge(study, [0.79, 0.73]) == (False, 3)


def test_the_rule_waits_for_min_epochs_can_be_turned_off_and_defers_to_the_wrapped_pruner():
    study = _study([[0.9, 0.9]], FarBehindPruner(Never(), margin=0.15, min_step=2))
    assert _judge(study, [0.1])[0] is False  # epoch 1 < min_step
    off = _study([[0.9, 0.9]], FarBehindPruner(Never(), margin=1.0))
    assert _judge(off, [0.1, 0.1])[0] is False
    wrapped = FarBehindPruner(Always(), margin=0.15)
    study = _study([[0.5]], wrapped)
    pruned, number = _judge(study, [0.9])  # ahead of everyone, but the wrapped pruner says prune
    assert pruned and number not in wrapped.reasons  # the orchestrator gives its own "pruned at epoch" reason


def test_the_first_trial_has_nothing_to_be_behind():
    study = optuna.create_study(direction="maximize", pruner=FarBehindPruner(Never(), margin=0.0))
    assert _judge(study, [0.01, 0.02])[0] is False


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_the_threshold_is_relative_to_the_best(margin):
    study = _study([[0.4]], FarBehindPruner(Never(), margin=margin))
    just_below = 0.4 * (1 - margin) - 1e-6
    assert _judge(study, [just_below])[0] is True
    assert _judge(study, [0.4 * (1 - margin) + 1e-6])[0] is False


def test_a_trial_ahead_in_epochs_is_judged_against_the_others_latest_values():
    """Concurrent trials: a fast, hopeless trial at epoch 3 while the strong one has reported epoch 1 only."""
    pruner = FarBehindPruner(Never(), margin=0.15)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    strong = study.ask()
    strong.report(0.85, 1)  # still running
    pruned, number = _judge(study, [0.40, 0.45, 0.50])
    assert pruned and "0.8500" in pruner.reasons[number]
    # but a trial is never judged against another trial's *later* epochs
    late = optuna.create_study(direction="maximize", pruner=FarBehindPruner(Never(), margin=0.15))
    ahead = late.ask()
    for epoch in (1, 2, 3):
        ahead.report(0.5 + 0.15 * epoch, epoch)  # 0.95 at epoch 3
    assert _judge(late, [0.64])[0] is False  # 0.64 vs 0.65 at epoch 1: within the margin


def _timed_study(pruner):
    """One finished fast trial: 0.84, 0.87, 0.88, 0.89, 0.90 after 10, 20, ... 50 s."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    fast = study.ask()
    for epoch, value in enumerate([0.84, 0.87, 0.88, 0.89, 0.90], start=1):
        fast.report(value, epoch)
        pruner.record_time(fast.number, epoch, 10.0 * epoch)
    study.tell(fast, 0.90)
    return study


def test_a_slow_mediocre_trial_is_pruned_in_training_time():
    """Per epoch within the margin, but ten times slower: after 50 s it is far behind what the fast trial reached in
    50 s, so it stops instead of holding a worker for the rest of the run."""
    pruner = FarBehindPruner(Never(), margin=0.1)  # time_margin defaults to margin
    study = _timed_study(pruner)

    slow = study.ask()
    slow.report(0.77, 1)  # 0.77 >= 0.9 * 0.84: fine per epoch...
    pruner.record_time(slow.number, 1, 50.0)  # ...but the fast trial had 0.90 after 50 s: 0.77 < 0.81
    assert slow.should_prune()
    assert "far behind in time" in pruner.reasons[slow.number] and "after 50s" in pruner.reasons[slow.number]

    similar = study.ask()  # as slow per epoch as the fast one: judged per epoch only, and kept
    similar.report(0.80, 1)
    pruner.record_time(similar.number, 1, 11.0)
    assert not similar.should_prune()

    untimed = study.ask()  # a trainer that reports no times is judged per epoch only
    untimed.report(0.77, 1)
    assert not untimed.should_prune()


def _judge_timed(study, pruner, value, seconds):
    trial = study.ask()
    trial.report(value, 1)
    pruner.record_time(trial.number, 1, seconds)
    return trial.should_prune(), trial.number


def test_the_time_rule_has_its_own_margin():
    """A 4x slower configuration, 0.85 after its first epoch at 40 s: fine per epoch (above 0.84) and within 10 % of
    the 0.89 the fast trial had after 40 s, but 4.5 % behind it: pruned with a 4 % time margin, kept with 5 %."""
    tight = FarBehindPruner(Never(), margin=0.1, time_margin=0.04)
    pruned, number = _judge_timed(_timed_study(tight), tight, 0.85, 40.0)
    assert pruned and "far behind in time" in tight.reasons[number] and "0.8900" in tight.reasons[number]
    loose = FarBehindPruner(Never(), margin=0.1, time_margin=0.05)
    assert _judge_timed(_timed_study(loose), loose, 0.85, 40.0)[0] is False
    # as fast as the best trial and as good per epoch: the time rule keeps it however tight
    assert _judge_timed(_timed_study(tight), tight, 0.84, 10.5)[0] is False


def test_each_rule_can_be_turned_off_alone():
    no_time = FarBehindPruner(Never(), margin=0.1, time_margin=1.0)
    assert _judge_timed(_timed_study(no_time), no_time, 0.77, 50.0)[0] is False  # 0.77 < 0.9 x 0.90, untimed rule off
    only_time = FarBehindPruner(Never(), margin=1.0, time_margin=0.1)
    pruned, number = _judge_timed(_timed_study(only_time), only_time, 0.77, 50.0)
    assert pruned and "in time" in only_time.reasons[number]
    per_epoch = FarBehindPruner(Never(), margin=0.1, time_margin=1.0)
    pruned, number = _judge_timed(_timed_study(per_epoch), per_epoch, 0.70, 10.0)  # 0.70 < 0.9 x 0.84 at epoch 1
    assert pruned and "by that epoch" in per_epoch.reasons[number]


# -- composition: Optuna sees (and feeds) the real pruner -----------------------------------------------------------

def test_a_wrapped_hyperband_is_still_a_hyperband_pruner_so_samplers_learn_per_bracket():
    hb = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    pruner = FarBehindPruner(hb, margin=0.1, seed=7)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and isinstance(pruner, FarBehindPruner)
    assert pruner.wrapped is hb
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    for _ in range(12):
        t = study.ask()
        t.report(0.5, 1)
        t.should_prune()
        study.tell(t, 0.5)
    trial = study.get_trials()[-1]
    filtered = optuna.pruners._filter_study(study, trial)  # what TPE samples from: the trial's bracket only
    bracket = pruner._get_bracket_id(study, trial)
    assert len(filtered.get_trials()) == sum(pruner._get_bracket_id(study, t) == bracket for t in study.get_trials())
    assert len({pruner._get_bracket_id(study, t) for t in study.get_trials()}) > 1  # brackets really differ


def test_the_wrapped_pruner_records_its_rungs_even_when_the_far_behind_rule_prunes():
    sh = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    study = optuna.create_study(direction="maximize", pruner=FarBehindPruner(sh, margin=0.15))
    leader = study.ask()
    leader.report(0.9, 1)
    leader.should_prune()
    study.tell(leader, 0.9)
    laggard = study.ask()
    laggard.report(0.1, 1)
    assert laggard.should_prune()  # far behind (and successive halving would prune it too)
    rungs = [k for k in study.get_trials()[-1].system_attrs if k.startswith("completed_rung_")]
    assert rungs, "successive halving saw the report and recorded the rung value"


def test_seeded_brackets_do_not_depend_on_the_study_name():
    def brackets(name: str, seed: int) -> list[int]:
        pruner = FarBehindPruner(optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27), margin=0.1,
                                 seed=seed)
        study = optuna.create_study(study_name=name, direction="maximize", pruner=pruner)
        out = []
        for _ in range(20):
            t = study.ask()
            t.report(0.5, 1)
            t.should_prune()  # Hyperband builds its brackets on the first report
            out.append(pruner._get_bracket_id(study, study.get_trials()[-1]))
            study.tell(t, 0.5)
        return out

    assert brackets("run-20261203-101010", 42) == brackets("run-20261203-111111", 42)
    assert brackets("a", 42) != brackets("a", 43)
