"""Model health: each metric on constructed cases with known answers, missing (never 0.5) when not measurable,
weights validated and normalized, objectives from validation metrics only, and mode=health changing the winner.
Weights and objectives are defined in the light core (hpo.scoring); hpo.health measures and re-exports them."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import optuna
import pytest

from hpo import health, scoring
from hpo.config import OptimizationConfig
from hpo.exceptions import ConfigError, TrialFailed
from hpo.protocol import TrialJob, TrialResult
from hpo.results import best_records, trial_records

import keras  # noqa: E402 - a dependency: a missing Keras fails, never skips

optuna.logging.set_verbosity(optuna.logging.WARNING)

CNN = {"conv_blocks": 2, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": True,
       "global_pooling": True, "dense_layers": 1, "dense_units": 32, "dropout": 0.0, "learning_rate": 0.005,
       "optimizer": "adam", "batch_size": 32, "weight_decay": 1e-5, "augmentation": "none"}


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session(free_memory=False)
    yield


def _data(n=256, features=20, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, :classes].argmax(axis=1)).astype("int32")
    return x, y


def _mlp(bias=0.0, scale=1.0, seed=0, names=("hidden_a", "hidden_b")):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((20,))
    h = keras.layers.Dense(32, activation="relu", bias_initializer=keras.initializers.Constant(bias),
                           name=names[0])(inputs)
    h = keras.layers.Dense(16, activation="relu", name=names[1])(h)
    out = keras.layers.Dense(4, activation="softmax", name="zz_out")(h)
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if scale != 1.0:
        for layer in model.layers:
            if hasattr(layer, "kernel"):
                layer.kernel.assign(layer.kernel * scale)
    return model


# -- neuron utilization -------------------------------------------------------------------------------------------------

def test_a_layer_forced_dead_by_a_large_negative_bias_gives_utilization_near_zero():
    x, _ = _data()
    alive, per_layer = health.neuron_utilization(_mlp(), x)
    assert alive >= 0.6 and set(per_layer) == {"hidden_a", "hidden_b"}  # the output layer is not counted
    dead, per_layer = health.neuron_utilization(_mlp(bias=-100.0), x)
    assert dead <= 0.05
    assert per_layer["hidden_a"] == 0.0
    assert per_layer["hidden_b"] == 0.0  # constant input from the dead layer: its units carry nothing


def test_dead_conv_block_in_the_hpo_cnn_is_found_through_batchnorm_and_activation_layers():
    from hpo import models

    x = np.random.default_rng(0).random((64, 16, 16, 3), dtype=np.float32)
    model = models.build_model(CNN, modality="image", input_shape=(16, 16, 3), num_classes=4)
    util, per_layer = health.neuron_utilization(model, x)
    assert util >= 0.5
    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    first.bias.assign(first.bias - 100.0)  # Conv2D (linear) -> BatchNorm -> Activation(relu): all below zero
    util, per_layer = health.neuron_utilization(model, x)
    assert util <= 0.05 and per_layer[first.name] == 0.0


def test_lstm_units_are_found_by_type_not_by_name():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    h = keras.layers.Embedding(50, 8, name="tokens")(inputs)
    h = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True), name="x1")(h)
    h = keras.layers.LSTM(6, name="nothing_like_lstm")(h)
    out = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).integers(0, 50, size=(64, 12)).astype("int32")
    util, per_layer = health.neuron_utilization(model, x)
    assert set(per_layer) == {"x1", "nothing_like_lstm"}
    assert 0.0 <= util <= 1.0 and util > 0.5


# -- gradient health ----------------------------------------------------------------------------------------------------

def test_huge_initial_weights_give_poor_gradient_health_versus_a_sane_init():
    x, y = _data()
    sane = health.gradient_norms(_mlp(), x[:64], y[:64])
    huge = health.gradient_norms(_mlp(scale=100.0), x[:64], y[:64])
    assert set(sane) == set(huge) == {"hidden_a", "hidden_b", "zz_out"}  # real per-layer norms, output included
    assert all(0 < v < 10 for v in sane.values())
    assert all(huge[k] > 100 * sane[k] for k in sane)
    assert health.gradient_health(sane) >= 0.9
    assert health.gradient_health(huge) <= 0.2


def test_gradient_health_penalizes_vanishing_exploding_and_dead_layers():
    assert health.gradient_health({"a": 0.1, "b": 0.5}) == 1.0
    assert health.gradient_health({"a": 1e-8, "b": 1e-9}) < 0.2  # vanishing
    assert health.gradient_health({"a": 1e5, "b": 1e6}) == 0.0  # exploding
    assert health.gradient_health({"a": 0.0, "b": 0.5}) <= 0.5  # a layer that gets no gradient at all
    assert health.gradient_health({"a": 2e-4, "b": 5.0}) < health.gradient_health({"a": 0.01, "b": 0.5})
    assert health.gradient_health({}) is None


# -- history-based metrics ----------------------------------------------------------------------------------------------

def test_a_memorizing_run_scores_low_generalization():
    memorizing = {"accuracy": [0.7, 0.9, 1.0], "val_accuracy": [0.55, 0.6, 0.6]}
    honest = {"accuracy": [0.7, 0.85, 0.9], "val_accuracy": [0.68, 0.84, 0.89]}
    assert health.generalization(memorizing, best_epoch=3) <= 0.05
    assert health.generalization(honest, best_epoch=3) >= 0.9
    # the gap is read at the best epoch, not the last one
    assert health.generalization({"accuracy": [0.8, 1.0], "val_accuracy": [0.8, 0.7]}, best_epoch=1) == 1.0
    assert health.generalization(honest, best_epoch=None) is None
    assert health.generalization({"val_accuracy": [0.5]}, best_epoch=1) is None


def test_training_stability_rewards_a_smooth_monotonic_fall():
    smooth = health.training_stability({"loss": [2.0, 1.2, 0.8, 0.6, 0.5]})
    zigzag = health.training_stability({"loss": [2.0, 1.0, 1.8, 0.9, 1.7]})
    rising = health.training_stability({"loss": [1.0, 1.5, 2.0]})
    assert smooth == 1.0
    assert zigzag < 0.5 and rising == 0.0
    assert health.training_stability({"loss": [1.0]}) is None  # one epoch says nothing about stability


def test_convergence_rewards_reaching_the_best_accuracy_early():
    early = health.convergence({"val_accuracy": [0.88, 0.9, 0.9, 0.9]}, num_classes=10)
    late = health.convergence({"val_accuracy": [0.2, 0.4, 0.6, 0.9]}, num_classes=10)
    assert early == 1.0 and late == pytest.approx(0.25)
    assert health.convergence({"val_accuracy": [0.9]}, num_classes=10) is None
    assert health.convergence({"val_accuracy": [0.2, 0.22]}, num_classes=4) == 0.5  # never above chance


def test_efficiency_prefers_fewer_parameters_and_faster_inference_at_equal_accuracy():
    small, _ = health.efficiency(0.9, 10_000, 1e-5)
    big, _ = health.efficiency(0.9, 1_000_000, 1e-5)
    slow, parts = health.efficiency(0.9, 10_000, 1e-3)
    assert small == pytest.approx(0.9) and big < small and slow < small
    assert parts["latency_ms_per_sample"] == pytest.approx(1.0)
    assert health.efficiency(None, 10_000, 1e-5)[0] is None
    assert health.efficiency(0.9, None, None)[0] is None


# -- overall, weights ---------------------------------------------------------------------------------------------------

def test_default_weights_are_documented_and_sum_to_one():
    assert set(scoring.DEFAULT_WEIGHTS) == set(scoring.COMPONENTS)
    assert sum(scoring.DEFAULT_WEIGHTS.values()) == pytest.approx(1.0)
    for name, weight in scoring.DEFAULT_WEIGHTS.items():
        assert f"{name} {weight:.2f}" in " ".join(scoring.__doc__.split())


def test_overall_health_is_a_weighted_mean_of_the_available_components_and_never_a_made_up_value():
    comps = {"generalization": 1.0, "efficiency": 0.0}
    w = scoring.DEFAULT_WEIGHTS
    expected = w["generalization"] / (w["generalization"] + w["efficiency"])
    assert scoring.overall_health(comps) == pytest.approx(expected)
    assert scoring.overall_health({name: None for name in scoring.COMPONENTS}) is None
    assert scoring.overall_health({}) is None
    only_gen = scoring.parse_weights("neuron_utilization:0,gradient_health:0,training_stability:0,convergence:0,"
                                    "efficiency:0")
    assert scoring.overall_health({"generalization": 0.3, "efficiency": 1.0}, only_gen) == pytest.approx(0.3)


def test_weights_are_validated_and_normalized():
    w = scoring.parse_weights("generalization:2, efficiency=0")
    assert sum(w.values()) == pytest.approx(1.0) and w["efficiency"] == 0.0
    assert w["generalization"] / w["gradient_health"] == pytest.approx(2.0 / 0.2)  # unlisted keep their defaults
    assert scoring.parse_weights(None) == pytest.approx(scoring.DEFAULT_WEIGHTS)
    for bad, message in (("generalisation:1", "did you mean generalization"), ("generalization:-1", ">= 0"),
                         ("generalization:inf", ">= 0"), ("generalization", "malformed"),
                         (",".join(f"{c}:0" for c in scoring.COMPONENTS), "above 0")):
        with pytest.raises(ConfigError, match=message):
            scoring.parse_weights(bad)
    assert OptimizationConfig(dataset="synthetic_images", health_weights="convergence:1").health_weights
    with pytest.raises(ConfigError, match="health_weights"):
        OptimizationConfig(dataset="synthetic_images", health_weights="convergence:-2")


def _result(val, health_scores=None, test=None, number=0):
    scores = dict(health_scores or {})
    if scores and "overall_health" not in scores:
        scores["overall_health"] = scoring.overall_health(scores)
    return TrialResult(trial_id=f"r#{number}", status="completed", val_metrics={"accuracy": val, "loss": 1 - val},
                       test_metrics={"accuracy": test if test is not None else val}, health=scores, best_epoch=1,
                       epochs_run=1)


def test_reweight_recomputes_overall_health_with_the_runs_weights():
    r = _result(0.8, {"generalization": 0.2, "efficiency": 1.0})
    same = scoring.reweight(r, None)
    assert same is r
    heavy = scoring.reweight(r, "generalization:1,efficiency:0")
    assert heavy.health["overall_health"] == pytest.approx(0.2)
    assert heavy.details["health_weights"]["efficiency"] == 0.0


def test_bad_weights_are_config_errors_naming_the_health_weights_field():
    for bad in ("generalisation:1", "generalization:-1", "generalization", "convergence:1,convergence:2",
                ",".join(f"{c}:0" for c in scoring.COMPONENTS), "efficiency:abc"):
        with pytest.raises(ConfigError) as info:
            scoring.parse_weights(bad)
        assert info.value.field == "health_weights" and str(info.value).startswith("health_weights: ")


def test_health_measures_with_the_scoring_definitions_and_re_exports_them():
    for name in ("COMPONENTS", "DEFAULT_WEIGHTS", "parse_weights", "normalize_weights", "overall_health", "reweight",
                 "objective"):
        assert getattr(health, name) is getattr(scoring, name), name
    assert (health._GRAD_LOW, health._GRAD_HIGH) == scoring.GRADIENT_HEALTHY_RANGE == (1e-4, 10.0)
    assert health.gradient_health({"a": scoring.GRADIENT_HEALTHY_RANGE[0]}) == 1.0
    assert health.gradient_health({"a": scoring.GRADIENT_HEALTHY_RANGE[1]}) == 1.0
    assert health.gradient_health({"a": scoring.GRADIENT_HEALTHY_RANGE[1] * 10}) < 1.0
    assert scoring.MODES == get_args(scoring.Mode) == ("simple", "health", "pareto")


# -- objectives ---------------------------------------------------------------------------------------------------------

def test_objectives_use_validation_metrics_only():
    r = _result(0.8, {"generalization": 0.5}, test=0.99)
    assert scoring.objective(r, mode="simple") == [0.8]
    assert scoring.objective(r, mode="health", health_weight=0.3) == [pytest.approx(0.7 * 0.8 + 0.3 * 0.5)]
    assert scoring.objective(r, mode="pareto") == [0.8, 0.5]
    assert scoring.objective(r.replace(test_metrics={"accuracy": 0.1}), mode="health") == \
        scoring.objective(r, mode="health")  # the test split never moves the objective
    with pytest.raises(TrialFailed, match="overall_health"):
        scoring.objective(_result(0.8), mode="health")
    with pytest.raises(TrialFailed, match="validation accuracy"):
        scoring.objective(TrialResult(trial_id="x", status="completed"), mode="simple")


def _study(results: list[TrialResult], mode: str, health_weight: float = 0.3):
    directions = ["maximize", "maximize"] if mode == "pareto" else ["maximize"]
    study = optuna.create_study(directions=directions)
    for i, r in enumerate(results):
        values = scoring.objective(r, mode=mode, health_weight=health_weight)
        study.add_trial(optuna.trial.create_trial(
            params={"i": i}, distributions={"i": optuna.distributions.IntDistribution(0, 100)},
            values=values, user_attrs={"result": r.to_dict(), "counted": True}))
    return study


def test_mode_health_changes_which_trial_wins_when_accuracy_and_health_disagree():
    sick = {"neuron_utilization": 0.3, "gradient_health": 0.2, "generalization": 0.0, "training_stability": 0.4,
            "convergence": 0.3, "efficiency": 0.2}
    fit = {"neuron_utilization": 0.9, "gradient_health": 1.0, "generalization": 0.95, "training_stability": 1.0,
           "convergence": 0.9, "efficiency": 0.7}
    results = [_result(0.91, sick, test=0.80, number=0), _result(0.89, fit, test=0.88, number=1),
               _result(0.70, fit, test=0.99, number=2)]  # best test accuracy: must never be what selects
    winners = {}
    for mode in ("simple", "health"):
        study = _study(results, mode)
        best, front = best_records(study, trial_records(study), mode)
        winners[mode] = best["number"]
        assert front == []
    assert winners == {"simple": 0, "health": 1}


# -- measured inside run_trial ------------------------------------------------------------------------------------------

def _job(**kw):
    base = dict(trial_id="h#0", dataset="synthetic_images", params=dict(CNN, batch_norm=False), max_epochs=3,
                seed=5, compute_health=True)
    base.update(kw)
    return TrialJob(**base)


def test_run_trial_measures_every_component_in_unit_range_and_round_trips_as_json():
    from hpo.training import run_trial

    result = run_trial(_job())
    assert result.status == "completed", result.error
    assert set(result.health) == set(scoring.COMPONENTS) | {"overall_health"}
    for name, value in result.health.items():
        assert value is not None and 0.0 <= value <= 1.0, (name, value)
    norms = result.details["gradient_norms"]
    assert len(norms) == 4 and all(math.isfinite(v) and v > 0 for v in norms.values())  # 2 conv + 2 dense
    assert set(result.details["neuron_utilization_per_layer"]) == set(list(norms)[:-1])
    assert TrialResult.from_json(result.to_json()) == result
    skipped = run_trial(_job(compute_health=False, max_epochs=1))
    assert skipped.health == {} and "gradient_norms" not in skipped.details


def test_a_nan_loss_is_a_failed_trial_not_a_health_number():
    from hpo.training import run_trial

    result = run_trial(_job(params=dict(CNN, batch_norm=False, learning_rate=1e9, optimizer="sgd")))
    assert result.status == "failed" and "diverged" in result.error
    assert result.health == {}


def test_a_measurement_that_cannot_run_is_missing_with_a_note_never_a_guess():
    class Opaque(keras.Model):  # a subclassed model has no layer graph to probe
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(4, activation="softmax")

        def call(self, x):
            return self.d(x)

    model = Opaque()
    x, y = _data(64)
    model(x)
    scores, details = health.measure(model, history={"loss": [1.0]}, best_epoch=None, val_accuracy=None,
                                     num_classes=4, x_val=x, x_train=x, y_train=y)
    for name in ("neuron_utilization", "generalization", "training_stability", "convergence", "efficiency"):
        assert scores[name] is None, name
        assert any(note.startswith(name) for note in details["health_notes"])
    assert scores["gradient_health"] is not None  # that one needs no graph: the output Dense is found by type
    assert scores["overall_health"] == scores["gradient_health"]
    assert 0.5 not in [v for k, v in scores.items() if k not in ("gradient_health", "overall_health")]
