import optuna
import pytest

from hpo import search_space
from hpo.exceptions import ConfigError


@pytest.mark.parametrize("shape,blocks", [((28, 28, 1), 3), ((32, 32, 3), 4), ((16, 16, 3), 3), ((8, 8, 1), 2),
                                          ((4, 4, 1), 1), ((64, 64, 3), 4)])
def test_conv_blocks_are_capped_so_pooling_never_collapses_the_image(shape, blocks):
    assert search_space.max_conv_blocks(shape) == blocks
    side = min(shape[:2])
    for _ in range(blocks):
        side //= 2
    assert side >= 2 or blocks == 1


def test_suggest_respects_the_cap_and_conditional_params():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(60):
        params = search_space.suggest(study.ask(), "image", input_shape=(16, 16, 3))
        assert params["conv_blocks"] in (1, 2, 3)
        assert ("dense_units" in params) == (params["dense_layers"] > 0)
        assert set(params) - {"dense_units"} == {p.name for p in search_space.CNN_SPACE} - {"dense_units"}


def test_lstm_space_and_unknown_modality():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    params = search_space.suggest(study.ask(), "text")
    assert set(params) == {p.name for p in search_space.LSTM_SPACE}
    with pytest.raises(ConfigError, match="allowed: image, text"):
        search_space.space_for("audio")


def test_count_params_grows_with_size_and_vocabulary():
    small = {"embedding_dim": 32, "lstm_layers": 1, "lstm_units": 32, "bidirectional": False, "dense_units": 0}
    big = dict(small, lstm_layers=2, bidirectional=True)
    assert search_space.count_params(big, "text", (32,), 4, 200) > search_space.count_params(small, "text", (32,), 4, 200)
    assert (search_space.count_params(small, "text", (32,), 4, 20000)
            - search_space.count_params(small, "text", (32,), 4, 200)) == (20000 - 200) * 32


def test_pin_coercion():
    p = {x.name: x for x in search_space.CNN_SPACE}
    assert search_space.coerce_pin(p["batch_norm"], "yes") is True
    assert search_space.coerce_pin(p["filters"], "64") == 64
    assert search_space.coerce_pin(p["dropout"], "0.25") == 0.25
    with pytest.raises(ConfigError, match=r"dropout=0.9 is out of range; allowed: float in \[0.0, 0.5\]"):
        search_space.coerce_pin(p["dropout"], "0.9")
    with pytest.raises(ConfigError, match="filters='48' is not allowed; filters is one of 16, 32, 64"):
        search_space.coerce_pin(p["filters"], "48")
    with pytest.raises(ConfigError, match="not a valid int"):
        search_space.coerce_pin(p["conv_blocks"], "two")


def test_the_spaces_are_data_in_the_light_core_and_search_space_re_exports_them():
    from hpo import catalog

    for name in ("Param", "CNN_SPACE", "LSTM_SPACE", "DEFAULTS", "space_for", "all_param_names", "max_conv_blocks",
                 "coerce_pin", "validate_params"):
        assert getattr(search_space, name) is getattr(catalog, name), name
    assert search_space._bounds is catalog.param_bounds
    p = {x.name: x for x in catalog.CNN_SPACE}
    for name, value in (("dropout", "0.9"), ("filters", "48"), ("conv_blocks", "two"), ("batch_norm", "perhaps")):
        with pytest.raises(ConfigError) as info:
            catalog.coerce_pin(p[name], value)
        assert info.value.field == name


def _inside(params, modality, shape):
    for p in search_space.space_for(modality):
        if p.name not in params:
            continue
        value = params[p.name]
        if p.kind == "categorical":
            assert value in p.choices, (p.name, value)
        else:
            low, high = p.low, p.high
            if p.name == "conv_blocks":
                high = min(high, search_space.max_conv_blocks(shape))
            assert low <= value <= high, (p.name, value)


@pytest.mark.parametrize("modality, shape, pins", [("image", (28, 28, 1), {"batch_size": 128}),
                                                   ("image", (8, 8, 1), {}), ("text", None, {"optimizer": "adam"})])
def test_neighbours_of_the_defaults(modality, shape, pins):
    """Each neighbour is the default with at most two unpinned params redrawn, inside the space; over many draws
    every unpinned param gets redrawn, and the same seed gives the same neighbour."""
    import random

    base = search_space.default_params(modality, pins, shape)
    full = dict(search_space.DEFAULTS[modality], **base)
    rng = random.Random(3)
    redrawn = set()
    for _ in range(300):
        params = search_space.neighbour_params(modality, rng, pins, shape)
        _inside(params, modality, shape)
        changed = {k for k, v in params.items() if v != full[k]}
        assert len(changed) <= 2 and not changed & set(pins), changed
        assert all(params[k] == v for k, v in pins.items())
        redrawn |= changed
    assert redrawn == set(base) - set(pins)
    one = search_space.neighbour_params(modality, random.Random("7-neighbour-3"), pins, shape)
    assert one == search_space.neighbour_params(modality, random.Random("7-neighbour-3"), pins, shape)


# -- validate_params: the worker's check of a job's params (issue 13) ----------------------------------------------

from hpo.exceptions import ProtocolError  # noqa: E402

SHAPES = {"image": [(16, 16, 3), (28, 28, 1), (32, 32, 3), (8, 8, 1), (4, 4, 1)], "text": [None]}


def _validate_all(modality, shape, configs):
    for params in configs:
        checked = search_space.validate_params(modality, params, shape)
        assert checked == params, (params, checked)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
@pytest.mark.parametrize("modality", ["image", "text"])
def test_every_configuration_the_sampler_asks_for_passes_the_workers_validation(modality, sampler):
    """Item 4: the orchestrator's own jobs always pass -- many sampled configurations per shape, with and without
    pins, told back so TPE samples from its model (not only its random start-up)."""
    pins_list = [{}, {"batch_size": 128} if modality == "image" else {"optimizer": "rmsprop"}]
    for shape in SHAPES[modality]:
        for pins in pins_list:
            make = (optuna.samplers.RandomSampler(seed=5) if sampler == "random"
                    else optuna.samplers.TPESampler(seed=5, n_startup_trials=5))
            study = optuna.create_study(sampler=make, direction="maximize")
            configs = []
            for i in range(40):
                trial = study.ask()
                params = search_space.suggest(trial, modality, pins, input_shape=shape)
                configs.append(params)
                study.tell(trial, float(params["learning_rate"]) * (i % 7))
            _validate_all(modality, shape, configs)
            assert len({tuple(sorted(c.items())) for c in configs}) > 20  # really many different ones


@pytest.mark.parametrize("modality", ["image", "text"])
def test_warm_start_and_neighbours_pass_the_workers_validation_also_through_optuna(modality):
    import random

    for shape in SHAPES[modality]:
        for pins in ({}, {"dropout": 0.5} if modality == "image" else {"dense_units": 128}):
            base = search_space.default_params(modality, pins, shape)
            configs = [base] + [search_space.neighbour_params(modality, random.Random(f"s-{i}"), pins, shape)
                                for i in range(200)]
            _validate_all(modality, shape, configs)
            # as the orchestrator runs them: enqueued, then asked for through suggest
            study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
            for params in configs[:20]:
                study.enqueue_trial(params)
                asked = search_space.suggest(study.ask(), modality, pins, input_shape=shape)
                assert search_space.validate_params(modality, asked, shape) == params


class _TopRng:
    """A random.Random stand-in that always draws the upper end of a range."""

    def sample(self, population, k):
        return list(population)[:k]

    def uniform(self, a, b):
        return b

    def randint(self, a, b):
        return b

    def choice(self, seq):
        return seq[-1]


def test_neighbours_on_the_edge_of_a_log_range_stay_inside_it():
    import math

    assert math.exp(math.log(1e-2)) > 1e-2  # the float round trip overshoots the upper bound ...
    params = search_space.neighbour_params("text", _TopRng(), {}, None, redraw=10)
    assert params["learning_rate"] == 1e-2  # ... and the neighbour is clamped back inside
    assert search_space.validate_params("text", params) == params


IMAGE = {"conv_blocks": 2, "filters": 32, "kernel_size": 3, "activation": "relu", "batch_norm": True,
         "global_pooling": False, "dense_layers": 1, "dense_units": 128, "dropout": 0.25, "learning_rate": 1e-3,
         "optimizer": "adam", "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


@pytest.mark.parametrize("change, fragment", [
    ({"learning_rate": 1e-4 * 0.999}, "params.learning_rate=9.99e-05 is out of range; allowed: float in "
                                      "[0.0001, 0.01] (log scale)"),
    ({"learning_rate": float("nan")}, "params.learning_rate=nan is not a finite number"),
    ({"weight_decay": float("inf")}, "params.weight_decay=inf is not a finite number"),
    ({"dropout": "0.2"}, "params.dropout='0.2' is not a float; allowed: float in [0.0, 0.5]"),
    ({"dropout": True}, "params.dropout=true is not a float"),
    ({"conv_blocks": 2.0}, "params.conv_blocks=2.0 is not an int; allowed: int in [1, 4]"),
    ({"conv_blocks": 0}, "params.conv_blocks=0 is out of range for input shape 32x32x3; allowed: int in [1, 4]"),
    ({"dense_layers": 3}, "params.dense_layers=3 is out of range; allowed: int in [0, 2]"),
    ({"batch_norm": 1}, "params.batch_norm=1 is not allowed; allowed: one of true, false"),
    ({"filters": True}, "params.filters=true is not allowed; allowed: one of 16, 32, 64"),
    ({"activation": "RELU"}, "params.activation='RELU' is not allowed; allowed: one of relu, elu, gelu, swish"),
    ({"dense_units": None}, "params.dense_units=null is not allowed"),
    ({"dense_layers": 0}, "params.dense_units is given but applies only when dense_layers > 0 (dense_layers=0)"),
    ({"lstm_units": 64}, "unknown parameter 'lstm_units' (a parameter of the other search space)"),
    ({"x" * 100: 1}, "unknown parameter 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'"),
    ({5: 1}, "parameter names must be strings, got 5"),
])
def test_validate_params_names_the_parameter_the_value_and_what_is_allowed(change, fragment):
    with pytest.raises(ProtocolError) as info:
        search_space.validate_params("image", {**IMAGE, **change}, (32, 32, 3))
    assert fragment in str(info.value), str(info.value)


def test_validate_params_requires_every_active_parameter():
    for name in IMAGE:  # without dense_layers, dense_units is judged on its own and dense_layers is reported
        params = {k: v for k, v in IMAGE.items() if k != name}
        with pytest.raises(ProtocolError, match=f"missing parameter {name} "):
            search_space.validate_params("image", params, (32, 32, 3))
    no_dense = {k: v for k, v in IMAGE.items() if k != "dense_units"} | {"dense_layers": 0}
    assert search_space.validate_params("image", no_dense, (32, 32, 3)) == no_dense


def test_validate_params_refuses_other_shapes_and_modalities():
    with pytest.raises(ProtocolError, match="params must be an object of parameter names to values, got a list"):
        search_space.validate_params("image", [1, 2])
    with pytest.raises(ProtocolError, match="unknown modality 'audio'; allowed: image, text"):
        search_space.validate_params("audio", IMAGE)
    assert search_space.validate_params("image", dict(IMAGE, conv_blocks=4)) == dict(IMAGE, conv_blocks=4)
    with pytest.raises(ProtocolError, match=r"for input shape 16x16x3; allowed: int in \[1, 3\]"):
        search_space.validate_params("image", dict(IMAGE, conv_blocks=4), (16, 16, 3))
