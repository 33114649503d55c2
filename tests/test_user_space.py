"""A user's own search space as plain data: parsed and checked before any trial (hpo.user_space), sampled with
Optuna, warm-started and validated with "in" conditions (hpo.search_space, hpo.catalog)."""

from __future__ import annotations

import math
import random

import optuna
import pytest

from hpo import catalog, search_space
from hpo.exceptions import ConfigError, ProtocolError
from hpo.user_space import check_pins, describe, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "units": {"type": "int", "low": 16, "high": 256, "log": True, "default": 64},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "default": 1e-3},
    "act": {"type": "choice", "choices": ["relu", "gelu"], "default": "relu"},
    "layers": {"type": "int", "low": 0, "high": 3, "default": 0},
    "width2": {"type": "choice", "choices": [32, 64], "when": {"layers": ">0"}},
    "deep": {"type": "choice", "choices": [True, False], "when": {"width2": [64]}},
    "optimizer": {"type": "choice", "choices": ["adam", "sgd"], "default": "adam"},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["sgd"]}},
}


def _error(data) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_space(data)
    assert info.value.field == "space"
    return info.value


# -- every error, each naming the parameter and the problem ---------------------------------------------------------

ERRORS = {
    "not_a_mapping": (["units"], ["space must be an object", "list"]),
    "empty": ({}, ["space is empty", "at least one parameter"]),
    "unknown_type": ({"units": {"type": "integer", "low": 1, "high": 4}},
                     ["'units'", "unknown type 'integer'", "int, float, choice"]),
    "no_type": ({"units": {"low": 1, "high": 4}}, ["'units'", "has no type"]),
    "unknown_key": ({"units": {"type": "int", "low": 1, "high": 4, "defualt": 2}},
                    ["'units'", "unknown key 'defualt'", "did you mean 'default'"]),
    "empty_int_range": ({"units": {"type": "int", "low": 8, "high": 8}},
                        ["'units'", "empty range", "low=8 >= high=8", "low < high"]),
    "empty_float_range": ({"dropout": {"type": "float", "low": 0.5, "high": 0.1}},
                          ["'dropout'", "empty range", "low=0.5 >= high=0.1"]),
    "missing_high": ({"units": {"type": "int", "low": 1}}, ["'units'", "has no high"]),
    "int_bound_not_integer": ({"units": {"type": "int", "low": 1.5, "high": 4}},
                              ["'units'", "low=1.5", "an integer"]),
    "float_bound_as_yaml_string": ({"lr": {"type": "float", "low": "1e-4", "high": 0.1}},
                                   ["'lr'", "low='1e-4'", "a number", "YAML"]),
    "infinite_bound": ({"lr": {"type": "float", "low": 0.0, "high": math.inf}}, ["'lr'", "a finite number"]),
    "log_with_zero_low": ({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
                          ["'lr'", "log scale with low=0.0", "low > 0"]),
    "log_with_negative_low": ({"units": {"type": "int", "low": -4, "high": 4, "log": True}},
                              ["'units'", "log scale with low=-4"]),
    "log_not_boolean": ({"lr": {"type": "float", "low": 0.1, "high": 1, "log": "yes"}},
                        ["'lr'", "log='yes'", "true or false"]),
    "empty_choices": ({"act": {"type": "choice", "choices": []}}, ["'act'", "choices=[]", "non-empty list"]),
    "empty_plain_list": ({"act": []}, ["'act'", "non-empty list"]),
    "mixed_choices": ({"act": ["relu", 3]}, ["'act'", "mixes number and string choices"]),
    "bool_and_number_choices": ({"flag": [True, 0]}, ["'flag'", "mixes boolean and number choices"]),
    "non_scalar_choice": ({"act": {"type": "choice", "choices": ["relu", ["gelu"]]}},
                          ["'act'", "the choice ['gelu'] (list)", "strings, numbers or booleans"]),
    "null_choice": ({"act": {"choices": ["relu", None]}}, ["'act'", "the choice None"]),
    "repeated_choice": ({"act": ["relu", "relu"]}, ["'act'", "repeats the choice relu"]),
    "choice_with_range": ({"act": {"type": "choice", "choices": ["a", "b"], "low": 1}}, ["'act'", "has 'low'"]),
    "default_outside_range": ({"units": {"type": "int", "low": 16, "high": 256, "default": 512}},
                              ["'units'", "default=512 outside its range", "int in [16, 256]"]),
    "default_wrong_type": ({"units": {"type": "int", "low": 16, "high": 256, "default": "64"}},
                           ["'units'", "default='64'", "an integer"]),
    "default_not_a_choice": ({"act": {"choices": ["relu", "gelu"], "default": "tanh"}},
                             ["'act'", "default='tanh'", "not among its choices", "one of relu, gelu"]),
    "default_true_is_not_1": ({"size": {"choices": [1, 2], "default": True}}, ["'size'", "not among its choices"]),
    "when_unknown_parameter": ({"layers": {"type": "int", "low": 0, "high": 3},
                                "width": {"choices": [32, 64], "when": {"layrs": ">0"}}},
                               ["'width'", "unknown parameter 'layrs'", "parameters before it: layers"]),
    "when_later_parameter": ({"width": {"choices": [32, 64], "when": {"layers": ">0"}},
                              "layers": {"type": "int", "low": 0, "high": 3}},
                             ["'width'", "'layers', which is defined after it", "define 'layers' before 'width'"]),
    "when_itself": ({"width": {"choices": [32, 64], "when": {"width": [32]}}},
                    ["'width'", "a condition on itself"]),
    "when_two_conditions": ({"a": [1, 2], "b": [3, 4], "c": {"choices": [5, 6], "when": {"a": [1], "b": [3]}}},
                            ["'c'", "one condition"]),
    "when_never_holds_comparison": ({"layers": {"type": "int", "low": 0, "high": 3},
                                     "width": {"choices": [32, 64], "when": {"layers": ">3"}}},
                                    ["'width'", "can never hold", "layers > 3", "int in [0, 3]"]),
    "when_never_holds_float": ({"dropout": {"type": "float", "low": 0.0, "high": 0.5},
                                "extra": {"choices": [1, 2], "when": {"dropout": ">=0.6"}}},
                               ["'extra'", "can never hold", "dropout >= 0.6"]),
    "when_never_holds_value": ({"optimizer": ["adam", "sgd"],
                                "momentum": {"type": "float", "low": 0.5, "high": 0.9,
                                             "when": {"optimizer": ["nesterov"]}}},
                               ["'momentum'", "can never hold", "optimizer='nesterov' is not a value",
                                "one of adam, sgd"]),
    "when_never_holds_empty_list": ({"optimizer": ["adam", "sgd"],
                                     "momentum": {"type": "float", "low": 0.5, "high": 0.9,
                                                  "when": {"optimizer": []}}},
                                    ["'momentum'", "empty list", "can never hold"]),
    "when_int_value_out_of_range": ({"layers": {"type": "int", "low": 0, "high": 3},
                                     "width": {"choices": [32, 64], "when": {"layers": [5]}}},
                                    ["'width'", "can never hold", "layers=5"]),
    "when_bad_comparison": ({"layers": {"type": "int", "low": 0, "high": 3},
                             "width": {"choices": [32, 64], "when": {"layers": "big"}}},
                            ["'width'", "condition layers: 'big'", "comparison with a number"]),
    "when_values_of_a_float": ({"dropout": {"type": "float", "low": 0.0, "high": 0.5},
                                "extra": {"choices": [1, 2], "when": {"dropout": [0.1]}}},
                               ["'extra'", "dropout is a float", "compare"]),
    "name_not_identifier": ({"hidden units": [1, 2]}, ["'hidden units'", "Python identifier"]),
    "name_starts_with_digit": ({"2nd": [1, 2]}, ["'2nd'", "Python identifier"]),
    "name_too_long": ({"u" * 65: [1, 2]}, ["at most 64 characters"]),
    "too_many_parameters": ({f"p{i}": [1, 2] for i in range(65)}, ["65 parameters", "at most 64"]),
    "epochs_reserved": ({"epochs": {"type": "int", "low": 1, "high": 9}},
                        ["'epochs'", "set by the run", "max_epochs_per_trial"]),
    "unknown_optimizer": ({"optimizer": ["adam", "nadam"]},
                          ["'optimizer'", "choices among adam, adamw, sgd, rmsprop", "rename it"]),
    "batch_size_not_integer": ({"batch_size": {"type": "float", "low": 8, "high": 64}},
                               ["'batch_size'", "integers >= 1"]),
    "batch_size_zero": ({"batch_size": [0, 32]}, ["'batch_size'", "integers >= 1"]),
    "learning_rate_not_positive": ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1}},
                                   ["'learning_rate'", "numbers > 0"]),
    "weight_decay_negative": ({"weight_decay": [-0.1, 0.0]}, ["'weight_decay'", "numbers >= 0"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_a_bad_space_is_refused_naming_the_parameter_and_what_is_allowed(case):
    data, expected = ERRORS[case]
    message = str(_error(data))
    for part in expected:
        assert part in message, (case, message)


def test_the_documented_space_parses_in_order_with_conditions_and_defaults():
    space = parse_space(SPACE, name="mine")
    assert space.name == "mine"
    assert [p.name for p in space.params] == list(SPACE)
    by = {p.name: p for p in space.params}
    assert (by["units"].kind, by["units"].low, by["units"].high, by["units"].log) == ("int", 16, 256, True)
    assert (by["lr"].kind, by["lr"].log) == ("float", True)
    assert by["act"].choices == ("relu", "gelu")
    assert by["width2"].active_if == ("layers", ">0")
    assert (by["momentum"].active_if, by["momentum"].active_values) == (("optimizer", "in"), ("sgd",))
    assert by["deep"].active_if == ("width2", "in") and by["deep"].active_values == (64,)
    assert space.defaults == {"units": 64, "lr": 1e-3, "act": "relu", "layers": 0, "optimizer": "adam"}
    assert describe(space)[4] == "width2: one of 32, 64; only when layers > 0"
    assert describe(space)[7] == "momentum: float in [0.5, 0.99]; only when optimizer is sgd"


def test_shorthands_plain_lists_single_condition_values_and_number_choices():
    space = parse_space({"act": ["relu", "gelu"], "opt": {"choices": ["adam", "sgd"]},
                         "mom": {"type": "float", "low": 0.1, "high": 0.9, "when": {"opt": "sgd"}},
                         "drop": [0, 0.25, 0.5], "bn": [True, False],
                         "bn_m": {"type": "float", "low": 0.9, "high": 0.99, "when": {"bn": True}},
                         "n": {"type": "categorical", "choices": [1, 2, 4]},
                         "m": {"choices": [1, 2], "when": {"n": ">=2"}}})
    by = {p.name: p for p in space.params}
    assert by["act"].kind == "categorical" and by["opt"].kind == "categorical" and by["n"].kind == "categorical"
    assert by["mom"].active_values == ("sgd",)
    assert by["drop"].choices == (0.0, 0.25, 0.5) and all(isinstance(c, float) for c in by["drop"].choices)
    assert by["bn_m"].active_values == (True,)
    assert by["m"].active_if == ("n", ">=2")


# -- sampling with Optuna ----------------------------------------------------------------------------------------------

def test_suggest_samples_within_ranges_on_a_log_scale_and_asks_conditionals_only_when_active():
    space = parse_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    lrs, seen = [], {"width2": 0, "deep": 0, "momentum": 0}
    for _ in range(300):
        trial = study.ask()
        params = search_space.suggest(trial, space)
        assert isinstance(params["units"], int) and 16 <= params["units"] <= 256
        assert 1e-4 <= params["lr"] <= 1e-2
        assert params["act"] in ("relu", "gelu") and params["optimizer"] in ("adam", "sgd")
        assert ("width2" in params) == (params["layers"] > 0)
        assert ("deep" in params) == (params.get("width2") == 64)
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        if "momentum" in params:
            assert 0.5 <= params["momentum"] <= 0.99
        for name in seen:
            seen[name] += name in params
        assert set(trial.params) == set(params)  # nothing inactive was asked
        assert trial.distributions["lr"].log and trial.distributions["units"].log
        lrs.append(params["lr"])
        study.tell(trial, 0.5)
    assert all(count > 20 for count in seen.values()), seen  # every conditional was active sometimes
    below = sum(lr < 1e-3 for lr in lrs) / len(lrs)
    assert 0.38 < below < 0.62, below  # log-uniform: half below the geometric middle (uniform: 9 %)


def test_pins_are_fixed_and_checked_against_the_users_params():
    space = parse_space(SPACE)
    pins = check_pins(space, {"units": "128", "optimizer": "sgd", "layers": 2})
    assert pins == {"units": 128, "optimizer": "sgd", "layers": 2}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(20):
        params = search_space.suggest(study.ask(), space, pins)
        assert (params["units"], params["optimizer"], params["layers"]) == (128, "sgd", 2)
        assert "width2" in params and "momentum" in params
    with pytest.raises(ConfigError, match=r"units=512 is out of range; allowed: int in \[16, 256\]") as info:
        check_pins(space, {"units": 512})
    assert info.value.field == "units"
    with pytest.raises(ConfigError, match="act='tanh' is not allowed; act is one of relu, gelu"):
        check_pins(space, {"act": "tanh"})
    with pytest.raises(ConfigError, match="unknown parameter 'unit' .did you mean 'units'.") as info:
        check_pins(space, {"unit": 8})
    assert info.value.field == "unit"


def test_a_user_param_named_like_a_built_in_one_is_not_capped_by_the_input_shape():
    space = parse_space({"conv_blocks": {"type": "int", "low": 5, "high": 6, "default": 6}})
    assert search_space.default_params(space, input_shape=(8, 8, 1)) == {"conv_blocks": 6}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    values = {search_space.suggest(study.ask(), space, input_shape=(8, 8, 1))["conv_blocks"] for _ in range(30)}
    assert values == {5, 6}


# -- warm start -----------------------------------------------------------------------------------------------------

def test_the_warm_start_is_each_parameters_default_and_optuna_runs_it_first():
    space = parse_space(SPACE)
    assert catalog.defaults_for(space) == space.defaults
    assert catalog.missing_defaults(space) == []  # width2/deep/momentum are inactive under the defaults
    first = search_space.default_params(space)
    assert first == {"units": 64, "lr": 1e-3, "act": "relu", "layers": 0, "optimizer": "adam"}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(first)
    assert search_space.suggest(study.ask(), space) == first
    assert catalog.defaults_for("image") == catalog.DEFAULTS["image"]


def test_without_a_default_for_every_active_parameter_there_is_no_warm_start():
    space = parse_space({"units": {"type": "int", "low": 16, "high": 256, "default": 64},
                         "act": ["relu", "gelu"], "layers": {"type": "int", "low": 0, "high": 3}})
    assert space.defaults == {"units": 64}
    assert catalog.defaults_for(space) == {}
    assert catalog.missing_defaults(space) == ["act", "layers"]
    with pytest.raises(ConfigError, match="has no warm start: act, layers have no default"):
        search_space.default_params(space)


def test_a_pin_that_activates_a_conditional_without_default_gives_it_the_middle_of_its_range():
    space = parse_space(SPACE)
    params = search_space.default_params(space, {"optimizer": "sgd", "layers": 1})
    assert params["momentum"] == pytest.approx((0.5 + 0.99) / 2)
    assert params["width2"] == 32  # the first choice
    assert params["layers"] == 1 and params["units"] == 64


def test_neighbours_of_the_warm_start_redraw_two_parameters_within_the_space():
    space = parse_space(SPACE)
    base = search_space.default_params(space)
    for seed in range(40):
        params = search_space.neighbour_params(space, random.Random(seed), {"act": "gelu"})
        assert params == search_space.neighbour_params(space, random.Random(seed), {"act": "gelu"})
        assert params["act"] == "gelu"
        changed = [k for k in base if k != "act" and params[k] != base[k]]
        assert len(changed) <= 2
        assert 16 <= params["units"] <= 256 and 1e-4 <= params["lr"] <= 1e-2
        assert ("width2" in params) == (params["layers"] > 0)
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        catalog.validate_params(space, params)  # a complete, valid configuration


# -- validate_params with conditions -----------------------------------------------------------------------------------

def test_validate_params_accepts_active_conditionals_and_refuses_inactive_ones():
    space = parse_space(SPACE)
    good = {"units": 64, "lr": 0.001, "act": "relu", "layers": 2, "width2": 64, "deep": False, "optimizer": "sgd",
            "momentum": 0.9}
    assert catalog.validate_params(space, good) == good
    with pytest.raises(ProtocolError) as info:
        catalog.validate_params(space, dict(good, optimizer="adam"))
    assert "params.momentum is given but applies only when optimizer is sgd (optimizer=adam); leave it out" in str(
        info.value)
    missing = dict(good)
    del missing["momentum"]
    with pytest.raises(ProtocolError, match=r"missing parameter momentum \(float in \[0.5, 0.99\]\)"):
        catalog.validate_params(space, missing)
    chained = dict(good, layers=0)  # width2 inactive, so deep (controlled by width2) is inactive too
    with pytest.raises(ProtocolError) as info:
        catalog.validate_params(space, chained)
    text = str(info.value)
    assert "params.width2 is given but applies only when layers > 0 (layers=0)" in text
    assert "params.deep is given but applies only when width2 is 64 (width2 does not apply)" in text
    with pytest.raises(ProtocolError, match=r"unknown parameter 'colour' \(the own search space has: units, lr,"):
        catalog.validate_params(space, dict(good, colour=1))


def test_in_conditions_never_take_true_for_1():
    space = parse_space({"bn": [True, False], "n": [1, 2],
                         "bn_m": {"type": "float", "low": 0.9, "high": 0.99, "when": {"bn": [True]}},
                         "extra": {"choices": ["a", "b"], "when": {"n": [1]}}})
    ok = catalog.validate_params(space, {"bn": True, "n": 2, "bn_m": 0.95})
    assert ok == {"bn": True, "n": 2, "bn_m": 0.95}
    p_extra = space.params[3]
    assert catalog.is_active(p_extra, {"n": 1}) and not catalog.is_active(p_extra, {"n": True})
    assert not catalog.is_active(space.params[2], {"bn": 1})


@pytest.mark.parametrize("cond,true_for,false_for", [(">0", [1, 0.5], [0, -1]), (">=2", [2, 3], [1]),
                                                     ("<0.5", [0.2], [0.5, 1]), ("<=1", [1], [2]),
                                                     ("==1", [1, 1.0], [2]), ("!=0", [3], [0])])
def test_comparison_conditions(cond, true_for, false_for):
    p = catalog.Param("x", "int", "", 0, 9, active_if=("n", cond))
    assert all(catalog.is_active(p, {"n": v}) for v in true_for)
    assert not any(catalog.is_active(p, {"n": v}) for v in false_for)
    assert not catalog.is_active(p, {})  # the controlling parameter itself inactive
    assert not catalog.is_active(p, {"n": True})  # a boolean is no number here


def test_space_for_takes_a_user_space_or_a_modality():
    space = parse_space(SPACE)
    assert catalog.space_for(space) == space.params
    assert catalog.space_for("image") == catalog.CNN_SPACE
    with pytest.raises(ConfigError, match="unknown modality 'audio'"):
        catalog.defaults_for("audio")
