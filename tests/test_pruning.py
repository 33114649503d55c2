"""Pruning is real: with pruner=hyperband on synthetic data, the local backend's epoch reports reach the pruner, some
trials end pruned before max epochs, stopped at the epoch they were judged on, recorded as pruned with their last
value. (Pruning through the RunPod simulator is tested with the RunPod backend.)"""

from __future__ import annotations

import optuna
import pytest

import hpo
from hpo.pruners import FarBehindPruner

optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_EPOCHS = 6
# A small, fast CNN; what varies (learning rate, optimizer, dropout, weight decay) makes some trials clearly worse
# than others early on, which is what a pruner acts on.
PINS = dict(conv_blocks=1, filters=16, kernel_size=3, activation="relu", batch_norm=False, global_pooling=True,
            dense_layers=0, batch_size=64, augmentation="none")


@pytest.fixture(scope="module")
def hyperband_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruning")
    result = hpo.optimize(dataset="synthetic_images", trials=8, max_epochs_per_trial=MAX_EPOCHS,
                          min_epochs_per_trial=1, early_stopping_patience=MAX_EPOCHS, data_fraction=0.5,
                          pruner="hyperband", prune_behind_in_time=1.0,  # off: training seconds vary with load
                          output_dir=str(out), run_name="hb", quiet=True,
                          plot_generation="none", **PINS)
    study = optuna.load_study(study_name="hb", storage=f"sqlite:///{out / 'hb' / 'study.db'}")
    return result, study


def test_hyperband_prunes_some_trials_before_max_epochs(hyperband_run):
    result, study = hyperband_run
    pruned = [t for t in result.trials if t["state"] == "pruned"]
    assert result.pruned == len(pruned) >= 1, [(t["number"], t["state"], t["epochs"]) for t in result.trials]
    assert result.completed >= 1 and result.failed == 0
    assert result.completed + result.pruned == 8
    assert all(t["test_accuracy"] is not None for t in result.trials if t["state"] == "completed")
    for record in pruned:
        assert record["epochs"] < MAX_EPOCHS
        assert "pruned at epoch" in record["reason"]


def test_a_pruned_trial_stops_at_the_epoch_it_was_judged_on_and_keeps_its_last_value(hyperband_run):
    result, study = hyperband_run
    by_number = {t.number: t for t in study.trials}
    for record in (t for t in result.trials if t["state"] == "pruned"):
        trial = by_number[record["number"]]
        assert trial.state == optuna.trial.TrialState.PRUNED
        last = trial.last_step
        assert record["reason"].startswith(f"pruned at epoch {last}")
        assert record["epochs"] == last  # the worker trained no further than the judged epoch
        assert trial.value == trial.intermediate_values[last]  # recorded with its last value
        assert record["value"] == trial.value
        assert record["val_accuracy"] is not None  # its best epoch was still evaluated (on validation)
        assert record["test_accuracy"] is None  # but not on test: a pruned trial is never the answer
        assert record["history"]["val_accuracy"][-1] == pytest.approx(trial.intermediate_values[last])


def test_every_epoch_of_every_trial_reached_the_pruner(hyperband_run):
    result, study = hyperband_run
    by_number = {t.number: t for t in study.trials}
    for record in result.trials:
        reported = by_number[record["number"]].intermediate_values
        assert sorted(reported) == list(range(1, record["epochs"] + 1))
        assert [reported[e] for e in sorted(reported)] == pytest.approx(record["history"]["val_accuracy"])


def test_the_best_trial_is_a_completed_one(hyperband_run):
    result, _ = hyperband_run
    best = next(t for t in result.trials if t["number"] == result.best_trial_number)
    assert best["state"] == "complete"
    assert result.best_value == max(t["value"] for t in result.trials if t["state"] == "complete")


@pytest.mark.parametrize("name, cls, resources", [
    ("hyperband", optuna.pruners.HyperbandPruner, {"_min_resource": 2, "_max_resource": 7}),
    ("median", optuna.pruners.MedianPruner, {"_n_warmup_steps": 2}),
    ("successive_halving", optuna.pruners.SuccessiveHalvingPruner, {"_min_resource": 2}),
    ("none", optuna.pruners.NopPruner, {}),
])
def test_each_pruner_uses_the_epochs_per_trial_as_its_resources(tmp_path, name, cls, resources):
    from hpo.config import OptimizationConfig
    from hpo.study import make_pruner

    margins = dict(prune_below_best=0.2, prune_behind_in_time=0.07) if name != "none" else {}
    config = OptimizationConfig(dataset="synthetic_images", pruner=name, min_epochs_per_trial=2,
                                max_epochs_per_trial=7, **margins)
    notes: list[str] = []
    pruner = make_pruner(config, notes)
    if name != "none":  # every real pruner is wrapped in the far-behind rule; pruner=none prunes nothing at all
        assert isinstance(pruner, FarBehindPruner)
        assert (pruner.margin, pruner.time_margin, pruner.min_step) == (0.2, 0.07, 2)
        pruner = pruner.wrapped
    assert isinstance(pruner, cls)
    for attr, value in resources.items():
        assert getattr(pruner, attr) == value
    assert notes == []
    pareto_notes: list[str] = []
    assert isinstance(make_pruner(config.replace(mode="pareto"), pareto_notes), optuna.pruners.NopPruner)
    assert pareto_notes == ([] if name == "none" else
                            [f"pruner={name} is off: Optuna cannot prune multi-objective (pareto) studies"])


@pytest.mark.parametrize("option", ["prune_below_best", "prune_behind_in_time"])
def test_a_pruning_margin_given_with_pruner_none_is_an_error_not_ignored(option):
    from hpo.config import OptimizationConfig
    from hpo.exceptions import ConfigError

    with pytest.raises(ConfigError, match=rf"^{option}=0.3 has no effect with pruner=none .*allowed: leave it out, or "
                                          "a pruner: hyperband, median, successive_halving") as caught:
        OptimizationConfig(dataset="synthetic_images", pruner="none", **{option: 0.3})
    assert caught.value.field == option
    for value in (1.0, OptimizationConfig.__dataclass_fields__[option].default):  # off, or the default: accepted
        config = OptimizationConfig(dataset="synthetic_images", pruner="none", **{option: value})
        assert getattr(config, option) == value
    assert OptimizationConfig(dataset="synthetic_images", pruner="median", **{option: 0.3})  # with a pruner: applies
