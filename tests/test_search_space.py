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
