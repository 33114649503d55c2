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
