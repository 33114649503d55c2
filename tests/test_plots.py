"""Plots: each plot's extracted data checked against the study and best.json; PNGs exist, open, have their size."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from hpo import plots, report, search_space
from hpo.config import OptimizationConfig
from hpo.plots import PlotSkipped
from hpo.protocol import TrialResult
from hpo.results import trial_records, write_best
from hpo.rundir import write_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

T0 = dt.datetime(2025, 1, 1, 12, 0, 0)
INPUT_SHAPE = (16, 16, 3)

#: (state, val_accuracy, overall_health) per trial; health None where the trial did not measure it
TRIALS = [
    ("complete", 0.50, 0.60), ("complete", 0.62, 0.40), ("pruned", 0.30, None), ("complete", 0.58, 0.90),
    ("fail", None, None), ("complete", 0.71, 0.55), ("complete", 0.66, 0.80), ("complete", 0.71, 0.35),
]
HEALTH_WEIGHT = 0.3


def _objective(mode, acc, health):
    if mode == "simple":
        return [acc]
    if mode == "health":
        return [(1 - HEALTH_WEIGHT) * acc + HEALTH_WEIGHT * health]
    return [acc, health]


def make_run(tmp_path, *, mode="simple", trials=TRIALS, details=None, name="run"):
    """A run folder as the orchestrator leaves it: config.json, a sqlite study whose trials carry their TrialResult
    in user attrs 'result', best.json. Trial i runs on worker i % 2 + 1 from 10 * (i // 2) + 3 * (i % 2) seconds for
    9 seconds, so two trials overlap at a time."""
    config = OptimizationConfig(dataset="synthetic_images", trials=len(trials), mode=mode, health_weight=HEALTH_WEIGHT,
                                concurrent_workers=2, output_dir=str(tmp_path), run_name=name)
    run_dir = tmp_path / name
    run_dir.mkdir()
    storage = f"sqlite:///{run_dir / 'study.db'}"
    directions = ["maximize", "maximize"] if mode == "pareto" else ["maximize"]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    write_config(run_dir, config)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for i, (state, acc, health) in enumerate(trials):
        asked = sampler_study.ask()
        search_space.suggest(asked, "image", input_shape=INPUT_SHAPE)
        epochs = 4 if state != "pruned" else 2
        hist_val = [None if acc is None else acc * (k + 1) / epochs for k in range(epochs)]
        history = {"accuracy": [0.3 + 0.1 * k for k in range(epochs)], "loss": [1.5 - 0.2 * k for k in range(epochs)],
                   "val_accuracy": hist_val, "val_loss": [1.6 - 0.15 * k for k in range(epochs)]}
        hdict = {}
        if mode != "simple" and health is not None:
            hdict = {"neuron_utilization": 0.9, "gradient_health": health, "generalization": None,
                     "training_stability": 0.7, "convergence": 0.5, "efficiency": 0.3, "overall_health": health}
        result = TrialResult(
            trial_id=f"{name}#{i}", status="failed" if state == "fail" else "completed", history=history,
            epochs_run=epochs, best_epoch=epochs, val_metrics={"accuracy": acc, "loss": 1.0},
            test_metrics={"accuracy": None if acc is None else acc - 0.01, "loss": 1.1}, health=hdict,
            param_count=1000 + i, train_seconds=9.0, executed_on=f"local:worker-{i % 2 + 1} (pid {100 + i % 2})",
            device="CPU", error="boom" if state == "fail" else None, details=(details or {}).get(i, {}))
        start = T0 + dt.timedelta(seconds=10 * (i // 2) + 3 * (i % 2))
        values = _objective(mode, acc, health) if state == "complete" else None
        study.add_trial(FrozenTrial(
            number=i, trial_id=i, state={"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
                                         "fail": TrialState.FAIL}[state],
            value=None, values=values, datetime_start=start, datetime_complete=start + dt.timedelta(seconds=9),
            params=dict(asked.params), distributions=dict(asked.distributions),
            user_attrs={"result": result.to_dict(), "counted": True, **({"reason": "pruned at epoch 2"}
                                                                        if state == "pruned" else {})},
            system_attrs={}, intermediate_values={}))
    write_best(run_dir, study, trial_records(study), mode)
    return run_dir, study


def _best_json(run_dir):
    return json.loads((run_dir / "best.json").read_text())


@pytest.mark.parametrize("mode", ["simple", "health", "pareto"])
def test_history_best_so_far_is_monotonic_and_matches_best_json(tmp_path, mode):
    run_dir, study = make_run(tmp_path, mode=mode)
    run = plots.load_run(run_dir, study=study)
    data = plots.history_data(run.records, mode)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert data["numbers"] == [t.number for t in complete]
    assert data["values"] == [t.values[0] for t in complete]
    assert all(b >= a for a, b in zip(data["best_so_far"], data["best_so_far"][1:]))
    assert data["best_so_far"] == [max(data["values"][:k + 1]) for k in range(len(data["values"]))]
    best = _best_json(run_dir)
    if mode == "pareto":  # best.json: the front member with the highest validation accuracy
        assert data["best_value"] == best["val_accuracy"]
    else:
        assert data["best_value"] == best["value"] == data["best_so_far"][-1]
        assert data["best_number"] == best["number"]
    assert data["failed"] == [4]
    assert data["pruned"] == ([(2, 0.30)] if mode == "simple" else [])


def test_importances_need_two_completed_trials(tmp_path):
    run_dir, study = make_run(tmp_path, trials=[("complete", 0.5, None), ("pruned", 0.4, None)])
    with pytest.raises(PlotSkipped, match="at least 2 completed trials"):
        plots.importance_data(study, "simple")
    outcomes = plots.generate_plots(run_dir, study=study)
    by = {o.name: o for o in outcomes}
    assert by["importance"].path is None and "at least 2" in by["importance"].note
    assert not (run_dir / "plots" / "importance.png").exists()
    assert by["history"].path is not None  # the others still come


def test_importances_cover_the_searched_params(tmp_path):
    run_dir, study = make_run(tmp_path)
    data = plots.importance_data(study, "simple")
    assert data["n_trials"] == 6
    assert set(data["params"]) <= set(study.trials[0].params) | {"dense_units"}
    assert data["importances"] == sorted(data["importances"], reverse=True)
    assert sum(data["importances"]) == pytest.approx(1.0, abs=1e-6)


def test_parallel_coordinates_rows_are_the_completed_trials(tmp_path):
    run_dir, study = make_run(tmp_path)
    run = plots.load_run(run_dir, study=study)
    data = plots.parallel_data(run.records, "simple", plots.param_distributions(study))
    complete = {t.number: t for t in study.trials if t.state == TrialState.COMPLETE}
    assert [r["number"] for r in data["rows"]] == sorted(complete)
    assert data["axes"][-1]["name"] == "objective"
    assert data["best_number"] == _best_json(run_dir)["number"]
    for r in data["rows"]:
        assert r["value"] == complete[r["number"]].value
        assert all(math.isnan(c) or -1e-9 <= c <= 1 + 1e-9 for c in r["coords"])
    objective = [r["coords"][-1] for r in data["rows"]]
    order = np.argsort([r["value"] for r in data["rows"]], kind="stable")
    assert np.all(np.diff(np.array(objective)[order]) >= 0)  # the objective axis keeps the order
    names = [a["name"] for a in data["axes"][:-1]]
    for name in names:  # only parameters that vary
        assert len({json.dumps(t.params.get(name)) for t in complete.values()}) > 1
    lr = next(a for a in data["axes"] if a["name"] == "learning_rate")
    assert lr["log"] is True and lr["kind"] == "numeric"


def test_timeline_shows_each_trial_on_its_worker_and_the_concurrency(tmp_path):
    run_dir, study = make_run(tmp_path)
    run = plots.load_run(run_dir, study=study)
    data = plots.timeline_data(study, run.records)
    assert data["workers"] == ["local:worker-1", "local:worker-2"]
    assert sorted(b["number"] for b in data["bars"]) == list(range(len(TRIALS)))
    for b in data["bars"]:
        i = b["number"]
        assert b["worker"] == f"local:worker-{i % 2 + 1}"
        assert b["start_s"] == pytest.approx(10 * (i // 2) + 3 * (i % 2))
        assert b["end_s"] - b["start_s"] == pytest.approx(9)
    assert data["max_concurrency"] == 2
    assert data["steps"][-1][1] == 0


def test_curves_are_the_best_trials_histories(tmp_path):
    run_dir, study = make_run(tmp_path)
    run = plots.load_run(run_dir, study=study)
    data = plots.curves_data(run.records, "simple", top_k=3)
    assert [t["number"] for t in data["trials"]] == [5, 7, 6]  # by value, ties by number
    assert data["trials"][0]["number"] == _best_json(run_dir)["number"]
    for t in data["trials"]:
        assert t["history"] == study.trials[t["number"]].user_attrs["result"]["history"]


def test_health_breakdown_keeps_unmeasured_metrics_missing(tmp_path):
    run_dir, study = make_run(tmp_path, mode="health")
    run = plots.load_run(run_dir, study=study)
    data = plots.health_data(run.best)
    best = _best_json(run_dir)
    assert data["number"] == best["number"]
    assert data["overall"] == best["health"]["overall_health"]
    assert dict(data["metrics"]) == {k: v for k, v in best["health"].items() if k != "overall_health"}
    assert dict(data["metrics"])["generalization"] is None
    simple_dir, simple_study = make_run(tmp_path, name="simple")
    with pytest.raises(PlotSkipped, match="not measured"):
        plots.health_data(plots.load_run(simple_dir, study=simple_study).best)


def test_pareto_front_matches_best_json(tmp_path):
    run_dir, study = make_run(tmp_path, mode="pareto")
    run = plots.load_run(run_dir, study=study)
    data = plots.pareto_data(run.records, run.front, run.best)
    best = _best_json(run_dir)
    assert sorted(p[0] for p in data["front"]) == sorted(e["number"] for e in best["pareto_front"])
    assert sorted(p[0] for p in data["front"]) == sorted(t.number for t in study.best_trials)
    assert data["best_number"] == best["number"]
    assert len(data["points"]) == 6


def test_gradient_flow_reads_the_health_details(tmp_path):
    norms = {"conv2d": 0.02, "conv2d_1": 0.5, "dense": None}  # None: not finite
    assert plots.gradient_data({"gradient_norms": norms}) == {"layers": ["conv2d", "conv2d_1", "dense"],
                                                              "norms": [0.02, 0.5, None]}
    listed = plots.gradient_data({"gradient_norms": [{"layer": "a", "norm": 1.0}, ["b", [1.0, 3.0]]]})
    assert listed == {"layers": ["a", "b"], "norms": [1.0, 2.0]}
    with pytest.raises(PlotSkipped, match="no per-layer gradient norms"):
        plots.gradient_data({})
    run_dir, study = make_run(tmp_path, mode="health", details={6: {"gradient_norms": norms}})
    assert _best_json(run_dir)["number"] == 6
    by = {o.name: o for o in plots.generate_plots(run_dir, study=study)}
    assert by["gradients"].path is not None and by["gradients"].data["layers"] == list(norms)


def _check_png(outcome):
    assert outcome.path.is_file(), outcome
    with Image.open(outcome.path) as im:
        im.verify()
    with Image.open(outcome.path) as im:
        assert im.format == "PNG"
        assert im.size == outcome.size
        w, h = im.size
    assert 600 <= w <= 2000 and 250 <= h <= 2000, (outcome.name, im.size)


@pytest.mark.parametrize("mode", ["simple", "pareto"])
def test_generate_plots_writes_pngs_of_the_expected_size(tmp_path, mode):
    run_dir, study = make_run(tmp_path, mode=mode)
    outcomes = plots.generate_plots(run_dir, which="all", study=study)
    by = {o.name: o for o in outcomes}
    expected = {"history", "importance", "parallel", "timeline", "curves"} | ({"pareto", "health"}
                                                                              if mode == "pareto" else set())
    assert {n for n, o in by.items() if o.path is not None} == expected
    for name in expected:
        _check_png(by[name])
    assert by["history"].size == (1000, 550)
    # no model in this run folder: the model plots say why, and there is no activation-map entry for text
    for name in ("confusion", "weights", "activations"):
        assert by[name].path is None and "best_model.keras" in by[name].note
    assert "gradient" in by["gradients"].note
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(f"{n}.png" for n in expected)


def test_plot_generation_best_and_none(tmp_path):
    run_dir, study = make_run(tmp_path)
    assert plots.generate_plots(run_dir, which="none", study=study) == []
    assert not (run_dir / "plots").exists()
    outcomes = plots.generate_plots(run_dir, which="best", study=study)
    assert {o.scope for o in outcomes} == {"best"}
    assert [p.name for p in (run_dir / "plots").iterdir()] == ["curves.png"]
    curves = next(o for o in outcomes if o.name == "curves")
    assert [t["number"] for t in curves.data["trials"]] == [_best_json(run_dir)["number"]]  # the best trial only
    with pytest.raises(ValueError, match="allowed"):
        plots.generate_plots(run_dir, which="some", study=study)


def test_a_failing_plot_is_logged_and_skipped(tmp_path, monkeypatch, caplog):
    run_dir, study = make_run(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(plots.render, "render_history", broken)
    by = {o.name: o for o in plots.generate_plots(run_dir, study=study)}
    assert by["history"].path is None and "renderer exploded" in by["history"].note
    assert not (run_dir / "plots" / "history.png").exists()
    assert by["timeline"].path is not None
    assert "plot history failed" in caplog.text


def test_no_completed_trial(tmp_path):
    run_dir, study = make_run(tmp_path, trials=[("fail", None, None), ("pruned", 0.2, None)])
    by = {o.name: o for o in plots.generate_plots(run_dir, study=study)}
    assert "no trial completed" in by["history"].note
    assert by["timeline"].path is not None  # failed and pruned trials still ran somewhere
    assert "curves" not in by  # no best trial: no best-trial plots


# -- the model-plot process: its failures never fail the run -----------------------------------------------------------

MODEL_PLOT_TITLES = {"confusion": "Confusion matrix (test set)", "weights": "Weight and bias distributions",
                     "activations": "Activation maps"}


def _fake_python(tmp_path, body):
    """An 'interpreter' for the model-plot process that runs ``body`` (sh) instead of hpo."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_a_failing_model_plot_process_is_logged_and_the_report_lists_its_plots(tmp_path, monkeypatch, caplog):
    run_dir, study = make_run(tmp_path, mode="health")
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, 'echo "no TensorFlow in here" >&2; exit 7'))
    by = {o.name: o for o in plots.generate_plots(run_dir, study=study)}
    reason = "skipped: the model-plot process exited with code 7; its output: no TensorFlow in here"
    for name in MODEL_PLOT_TITLES:
        assert by[name].path is None and by[name].note == reason, by[name]
    assert {n for n, o in by.items() if o.path is not None} == {"history", "importance", "parallel", "timeline",
                                                                "curves", "health"}
    assert "model plots (confusion, weights, activations) skipped: the model-plot process exited with code 7; " \
           "its output: no TensorFlow in here" in caplog.text
    assert "gradient norms" in by["gradients"].note  # drawn here, from the study: skipped for its own reason

    report_path = report.generate_outputs(run_dir, plot_generation="all", study=study)
    text = report_path.read_text(encoding="utf-8")
    skipped = text[text.index("<h3>Plots not drawn</h3>"):]
    for title in MODEL_PLOT_TITLES.values():
        assert f"<li><b>{title}</b>: {reason}</li>" in skipped
    assert 'id="plot-history"' in text and 'id="plot-confusion"' not in text

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))  # cannot even start
    by = {o.name: o for o in plots.generate_plots(run_dir, which="best", study=study)}
    assert by["curves"].path is not None
    for name in MODEL_PLOT_TITLES:
        assert by[name].path is None
        assert by[name].note.startswith("skipped: the model-plot process could not start (FileNotFoundError")


def test_a_hanging_model_plot_process_is_stopped_and_its_plots_skipped(tmp_path, monkeypatch, caplog):
    run_dir, study = make_run(tmp_path)
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, "exec sleep 600"))
    process = plots.generate.ModelPlotProcess(plots.load_run(run_dir, study=study), ["confusion", "weights"],
                                              timeout_s=1)
    outcomes = process.outcomes()
    assert [(o.name, o.path, o.note) for o in outcomes] == [
        (name, None, "skipped: the model-plot process did not finish within 1 s") for name in ("confusion", "weights")]
    assert process.process.returncode is not None  # stopped, not left behind
    assert "model plots (confusion, weights) skipped" in caplog.text


# -- plots of the best model (TensorFlow) ------------------------------------------------------------------------------

MODEL_PARAMS = {"conv_blocks": 2, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": True,
                "global_pooling": True, "dense_layers": 1, "dense_units": 32, "dropout": 0.1, "learning_rate": 3e-3,
                "optimizer": "adam", "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    from hpo import datasets
    from hpo.models import build_model
    from hpo.training import configure_tensorflow

    configure_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    tmp = tmp_path_factory.mktemp("model")
    run_dir, study = make_run(tmp)
    data = datasets.load("synthetic_images")
    model = build_model(MODEL_PARAMS, modality="image", input_shape=data.info.input_shape,
                        num_classes=data.info.num_classes)
    model.fit(data.x_train[:512], data.y_train[:512], epochs=1, batch_size=64, verbose=0)
    model.save(run_dir / "best_model.keras")
    outcomes = {o.name: o for o in plots.generate_plots(run_dir, study=study)}
    return run_dir, model, data, outcomes


def test_confusion_matrix_is_the_best_model_on_the_test_split(model_run):
    run_dir, model, data, outcomes = model_run
    cm = outcomes["confusion"].data
    assert cm["matrix"].shape == (4, 4) and cm["n"] == len(data.y_test) == 400
    assert cm["matrix"].sum(axis=1).tolist() == np.bincount(data.y_test, minlength=4).tolist()
    evaluated = model.evaluate(data.x_test, data.y_test, batch_size=256, verbose=0, return_dict=True)
    assert cm["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-6)
    assert cm["labels"] == plots.CLASS_NAMES["synthetic_images"]
    _check_png(outcomes["confusion"])


def test_weights_and_activation_maps_of_the_best_model(model_run):
    run_dir, model, data, outcomes = model_run
    layers = outcomes["weights"].data["layers"]
    assert [entry["type"] for entry in layers] == ["Conv2D", "Conv2D", "Dense", "Dense"]  # no BatchNormalization
    conv = model.get_layer(layers[0]["layer"])
    assert layers[0]["weights"].size == conv.kernel.numpy().size
    np.testing.assert_allclose(np.sort(layers[0]["biases"]), np.sort(conv.bias.numpy().ravel()), rtol=1e-6)
    act = outcomes["activations"].data
    assert act["images"].shape == (3, 16, 16, 3) and act["labels"] == [0, 1, 2]
    assert [(entry["filters"], entry["maps"].shape) for entry in act["layers"]] == [(16, (3, 16, 16, 8)),
                                                                                    (32, (3, 8, 8, 8))]
    assert all((entry["maps"] >= 0).all() for entry in act["layers"])  # read after the relu
    for name in ("weights", "activations"):
        _check_png(outcomes[name])



def test_a_broken_model_file_skips_the_model_plots_with_the_reason(tmp_path, caplog):
    run_dir, study = make_run(tmp_path, mode="health", details={6: {"gradient_norms": {"conv2d": 0.02}}})
    (run_dir / "best_model.keras").write_bytes(b"not a keras file")
    by = {o.name: o for o in plots.generate_plots(run_dir, study=study)}
    for name in ("confusion", "weights", "activations"):  # failed in the model-plot process: the reason comes back
        assert by[name].path is None and by[name].note.startswith("failed: "), by[name]
        assert f"plot {name} failed in the model-plot process: " in caplog.text
    assert by["gradients"].path is not None and by["gradients"].data == {"layers": ["conv2d"], "norms": [0.02]}
    assert by["history"].path is not None and by["health"].path is not None
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(
        f"{n}.png" for n, o in by.items() if o.path is not None)


def test_the_model_plots_name_own_data_classes_as_the_user_gave_them():
    import types

    from hpo.plots.model import _class_names

    own = types.SimpleNamespace(config={"dataset": "/data/strlab.npz", "data_info": {"class_names": ["neg", "pos"]}})
    assert _class_names(own, 2) == ["neg", "pos"]  # before: 0, 1
    assert _class_names(own, 3) == ["0", "1", "2"]  # names that do not fit the model's outputs are not used
    builtin = types.SimpleNamespace(config={"dataset": "fashion_mnist"})
    assert _class_names(builtin, 10)[0] == "T-shirt/top"
