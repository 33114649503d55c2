"""bench/finals_origin.py: where a recorded hpo-2 run's finals came from, and what Finale.choose picks (validation)."""

from __future__ import annotations


import optuna
import pytest

from .conftest import bench_modules


@pytest.fixture()
def finals_origin(request):
    return bench_modules(request, "finals_origin")[0]


def _trial(val, lr, **attrs):
    result = {"val_metrics": {"accuracy": val}, "details": attrs.pop("details", {})}
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    return optuna.trial.create_trial(value=val, params={"learning_rate": lr}, distributions=dist,
                                     user_attrs={"result": result, **attrs})


def _study(tmp_path, trials):
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{db}", direction="maximize")
    for t in trials:
        study.add_trial(t)
    return db


def test_a_run_of_an_older_hpo_that_trained_two_search_configurations_differs_from_choose(finals_origin, tmp_path):
    db = _study(tmp_path, [_trial(0.80, 0.001, warm_start=True), _trial(0.85, 0.01), _trial(0.84, 0.02),
                           _trial(0.90, 0.01, final_of=1), _trial(0.88, 0.02, final_of=2)])
    row = finals_origin.reread(db)
    assert row["of"] == [1, 2] and row["origin"] == ["search", "search"]
    assert row["choose"] == [1, 0] and row["differs"] is True
    assert row["start_minus_search_pp"] is None and not row["no_room"]


def test_one_final_of_each_origin_compares_their_own_validation_before_any_ensemble(finals_origin, tmp_path):
    ensemble = {"members": [4, 3], "weights": [0.5, 0.5], "alone": {"val_accuracy": 0.86}}
    db = _study(tmp_path, [_trial(0.80, 0.001, warm_start=True), _trial(0.85, 0.01), _trial(0.70, 0.02),
                           _trial(0.88, 0.01, final_of=1),
                           _trial(0.91, 0.001, final_of=0, details={"ensemble": ensemble})])
    row = finals_origin.reread(db)
    assert row["origin"] == ["search", "start"] and row["own_val"] == pytest.approx([0.88, 0.86])
    assert row["start_minus_search_pp"] == pytest.approx(-2.0)  # 0.86 alone, not its ensemble's 0.91
    assert row["choose"] == [1, 0] and row["differs"] is False
