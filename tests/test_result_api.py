"""What a notebook user gets back: the Optuna study, a DataFrame of the trials, and the best model, from
hpo.optimize() and from hpo.load_results() alike."""

from __future__ import annotations

import pytest

import hpo


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("result")
    result = hpo.optimize(dataset="synthetic_images", trials=2, max_epochs_per_trial=1, data_fraction=0.5,
                          quiet=True, pruner="none", plot_generation="none", output_dir=str(out), run_name="nb")
    return result


@pytest.mark.parametrize("how", ["returned", "loaded"])
def test_the_result_offers_the_study_a_dataframe_and_the_best_model(run, how):
    result = run if how == "returned" else hpo.load_results(run.run_dir)
    assert result.study.best_trial.number == result.best_trial_number
    assert result.study.study_name == "nb"

    df = result.trials_dataframe()
    assert len(df) == len(result.trials) == 2
    assert {"number", "state", "value", "val_accuracy", "test_accuracy", "params_filters",
            "params_learning_rate"} <= set(df.columns)
    assert df["val_accuracy"].tolist() == [t["val_accuracy"] for t in result.trials]
    assert df["params_filters"].tolist() == [t["params"]["filters"] for t in result.trials]

    from hpo import datasets

    data = datasets.load("synthetic_images")
    model = result.load_best_model()
    evaluated = model.evaluate(data.x_test, data.y_test, batch_size=256, verbose=0, return_dict=True)
    assert evaluated["accuracy"] == pytest.approx(result.best_test_accuracy, abs=1e-6)


def test_to_dict_stays_plain_data(run):
    import json

    doc = run.to_dict()
    assert "study" not in doc and "_study" not in doc
    json.dumps(doc)  # serializable: no Optuna objects inside
    assert doc["best_trial_number"] == run.best_trial_number
