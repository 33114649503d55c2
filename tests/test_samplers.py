"""Every sampler hpo offers runs a small optimization to the end, seeded: the same seed gives the same
configurations, another seed other ones."""

from __future__ import annotations

import pytest

import hpo
from hpo.backends import Backend
from hpo.protocol import TrialResult

FAST = dict(max_epochs_per_trial=2, quiet=True, pruner="none", plot_generation="none", warm_start=False)


class Instant(Backend):
    name = "instant"

    def run(self, job, **kw):
        acc = 0.4 + 0.1 * job.params["conv_blocks"] - job.params["dropout"] / 5 + job.params["learning_rate"]
        return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=1, best_epoch=1,
                           val_metrics={"accuracy": acc, "loss": 1 - acc}, test_metrics={"accuracy": acc},
                           executed_on="instant", history={"val_accuracy": [acc]})


def params_of(tmp_path, sampler, seed, name, **extra):
    result = hpo.optimize(dataset="synthetic_images", trials=6, sampler=sampler, seed=seed, backend=Instant(),
                          output_dir=str(tmp_path), run_name=name, **FAST, **extra)
    assert result.completed == 6 and result.failed == 0
    return [t["params"] for t in result.trials]


@pytest.mark.parametrize("sampler", ["cmaes", "qmc", "nsga2", "random", "tpe"])
def test_each_sampler_completes_a_run_and_is_seeded(tmp_path, sampler):
    first = params_of(tmp_path, sampler, 7, "a")
    again = params_of(tmp_path, sampler, 7, "b")
    other = params_of(tmp_path, sampler, 8, "c")
    assert first == again
    assert first != other
    assert len({tuple(sorted(p.items())) for p in first}) > 1  # it explores


def test_the_sampler_recorded_in_the_study_is_the_one_asked_for(tmp_path):
    result = hpo.optimize(dataset="synthetic_images", trials=2, sampler="cmaes", backend=Instant(),
                          output_dir=str(tmp_path), run_name="s", **FAST)
    assert type(result.study.sampler).__name__ == "CmaEsSampler"


def test_cmaes_with_pareto_is_a_clear_error(tmp_path):
    with pytest.raises(hpo.ConfigError, match="sampler=cmaes") as info:
        hpo.optimize(dataset="synthetic_images", trials=2, sampler="cmaes", mode="pareto", backend=Instant(),
                     output_dir=str(tmp_path), **FAST)
    assert info.value.field == "sampler"
    assert not any(tmp_path.iterdir())


def test_rejected_configurations_use_no_startup_slot():
    """A configuration rejected before training (too big) is told PRUNED, so TPE learns to avoid it, but TPE's random
    start-up counts only trials that trained; plain TPE would count the rejected ones and model from 2 results."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from hpo.study.sampling import StartupTPESampler

    space = {"x": FloatDistribution(0.0, 1.0)}
    sampler = StartupTPESampler(n_startup_trials=3, seed=0, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for x in (0.2, 0.4):
        study.add_trial(create_trial(params={"x": x}, distributions=space, value=x))
    for x in (0.91, 0.93, 0.95, 0.97):
        study.add_trial(create_trial(params={"x": x}, distributions=space, state=TrialState.PRUNED,
                                     user_attrs={"rejected": True, "reason": "too many parameters"}))
    trial = study.ask()
    assert sampler.sample_relative(study, trial, space) == {}  # 2 trained < 3 start-up trials: still random
    plain = optuna.samplers.TPESampler(n_startup_trials=3, seed=0, multivariate=True)
    assert plain.sample_relative(study, trial, space) != {}  # plain TPE: 6 >= 3, it models already
    study.tell(trial, 0.5)
    assert sampler.sample_relative(study, study.ask(), space) != {}  # the third trained trial ends the start-up


def test_the_default_sampler_is_the_one_that_leaves_rejected_trials_out():
    import optuna

    from hpo.config import OptimizationConfig
    from hpo.study import create_study, startup_trials
    from hpo.study.sampling import StartupTPESampler

    config = OptimizationConfig(dataset="synthetic_images", trials=12, run_name="r")
    study, created = create_study(config, optuna.storages.InMemoryStorage(), [])
    assert created and isinstance(study.sampler, StartupTPESampler)
    assert study.sampler.startup_trials == startup_trials(config) >= 1
