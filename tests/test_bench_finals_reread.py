"""bench/finals_reread.py: what averaging the two finals changed in a recorded hpo-2 run."""

from __future__ import annotations


import optuna
import pytest

from .conftest import bench_modules


@pytest.fixture()
def finals_reread(request):
    return bench_modules(request, "finals_reread")[0]


def _trial(val, test, **attrs):
    result = {"val_metrics": {"accuracy": val}, "test_metrics": {"accuracy": test}, "details": attrs.pop("details", {})}
    return optuna.trial.create_trial(value=val, user_attrs={"result": result, **attrs})


@pytest.mark.parametrize("members, change", [([4, 3], 1.0), ([4, 0], 0.0)])
def test_the_change_is_the_ensemble_against_the_last_final_alone_when_it_averages_the_other(
        finals_reread, tmp_path, members, change):
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{db}", direction="maximize")
    for trial in (_trial(0.80, 0.79), _trial(0.70, 0.69), _trial(0.85, 0.84),  # search trials 0-2
                  _trial(0.88, 0.87, final_of=0),  # the first final
                  _trial(0.90, 0.88, final_of=0, details={  # the last final: an ensemble, alone worse than final 3
                      "ensemble": {"members": members, "weights": [0.5, 0.5],
                                   "alone": {"val_accuracy": 0.86, "test_accuracy": 0.85}},
                      "finals": {"waited_for": [3], "found": [3], "waited_s": 0.0}})):
        study.add_trial(trial)
    row = finals_reread.reread(db)
    assert row["finals"] == [3, 4] and row["found"] == [3] and row["result"] == 4
    assert row["averaged"] is (3 in members)
    assert row["change_pp"] == pytest.approx(change)  # without it: final 3 (0.87) is the best by validation
