"""Model building: architectures agree with search_space.count_params, pins hold, strategies and optimizers work."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

import keras  # a dependency: a missing Keras or TensorFlow fails, never skips
import tensorflow as tf

from hpo import search_space  # noqa: E402
from hpo.models import build_cnn, build_lstm, build_model, make_optimizer  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_CONFIGS = 50
NUM_CLASSES = 10
SEQ_LEN = 32
VOCAB = 200


def _sample(modality: str, n: int, seed: int, input_shape: tuple[int, ...], pins: dict | None = None) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(search_space.suggest(trial, modality, pins, input_shape=input_shape))
    return out


def _reset():
    # Between builds in a loop: drop Keras's global state but skip the (slow) gc.collect; the fixture does a full one.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_cnn_builds_and_counts_match(input_shape):
    configs = _sample("image", N_CONFIGS, seed=sum(input_shape), input_shape=input_shape)
    for params in configs:
        _reset()
        model = build_cnn(params, input_shape, NUM_CLASSES)
        assert model.output_shape == (None, NUM_CLASSES), params
        expected = search_space.count_params(params, "image", input_shape, NUM_CLASSES)
        assert model.count_params() == expected, params


def test_lstm_builds_and_counts_match():
    configs = _sample("text", N_CONFIGS, seed=7, input_shape=(SEQ_LEN,))
    for params in configs:
        _reset()
        model = build_lstm(params, (SEQ_LEN,), NUM_CLASSES, VOCAB)
        assert model.output_shape == (None, NUM_CLASSES), params
        expected = search_space.count_params(params, "text", (SEQ_LEN,), NUM_CLASSES, vocab_size=VOCAB)
        assert model.count_params() == expected, params


def test_build_model_compiles_and_counts_match():
    for modality, shape, vocab in (("image", (28, 28, 1), None), ("text", (SEQ_LEN,), VOCAB)):
        for params in _sample(modality, 5, seed=3, input_shape=shape):
            _reset()
            model = build_model(params, modality=modality, input_shape=shape, num_classes=NUM_CLASSES,
                                vocab_size=vocab)
            assert model.optimizer is not None
            assert model.count_params() == search_space.count_params(params, modality, shape, NUM_CLASSES, vocab)


def test_max_conv_blocks_keeps_feature_map_at_least_2x2():
    shape = (16, 16, 3)
    seen_blocks = set()
    for params in _sample("image", N_CONFIGS, seed=11, input_shape=shape):
        _reset()
        seen_blocks.add(params["conv_blocks"])
        model = build_cnn(params, shape, NUM_CLASSES)
        pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
        assert len(pools) == params["conv_blocks"]
        _, h, w, _ = pools[-1].output.shape
        assert h >= 2 and w >= 2, params
    assert max(seen_blocks) == search_space.max_conv_blocks(shape) == 3


def test_pins_hold_and_batch_norm_present():
    pins = {"activation": "relu", "batch_norm": True}
    for params in _sample("image", 10, seed=5, input_shape=(28, 28, 1), pins=pins):
        assert params["activation"] == "relu" and params["batch_norm"] is True
        _reset()
        model = build_cnn(params, (28, 28, 1), NUM_CLASSES)
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(bns) == params["conv_blocks"]


def _cnn_params(**overrides):
    params = {
        "conv_blocks": 2, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": True,
        "global_pooling": True, "dense_layers": 1, "dense_units": 64, "dropout": 0.1, "learning_rate": 1e-3,
        "optimizer": "adam", "batch_size": 32, "weight_decay": 1e-4, "augmentation": "light",
    }
    params.update(overrides)
    return params


def test_build_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = build_model(_cnn_params(), modality="image", input_shape=(16, 16, 3), num_classes=NUM_CLASSES,
                        strategy=strategy)
    assert model.distribute_strategy is strategy
    var = model.trainable_weights[0].value
    assert isinstance(var, tf.distribute.DistributedValues)
    assert var.distribute_strategy is strategy


def test_adamw_uses_decoupled_decay_without_regularizer():
    params = _cnn_params(optimizer="adamw", weight_decay=3e-4)
    model = build_model(params, modality="image", input_shape=(16, 16, 3), num_classes=NUM_CLASSES)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == pytest.approx(3e-4)
    assert all(getattr(layer, "kernel_regularizer", None) is None for layer in model.layers)
    keras.backend.clear_session()
    model = build_model(_cnn_params(optimizer="sgd"), modality="image", input_shape=(16, 16, 3),
                        num_classes=NUM_CLASSES)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(isinstance(c.kernel_regularizer, keras.regularizers.L2) for c in convs)


@pytest.mark.parametrize("name, cls", [
    ("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD"), ("rmsprop", "RMSprop"),
])
def test_make_optimizer(name, cls):
    opt = make_optimizer(name, 3e-3)
    assert type(opt) is getattr(keras.optimizers, cls)
    assert float(opt.learning_rate) == pytest.approx(3e-3)
    assert opt.global_clipnorm is None and opt.clipnorm is None and opt.clipvalue is None
    if name == "sgd":
        assert opt.momentum == pytest.approx(0.9) and opt.nesterov
    if name == "adamw":
        assert opt.weight_decay == pytest.approx(1e-4)


def test_bad_names_raise_value_error():
    with pytest.raises(ValueError, match="adam, adamw, sgd, rmsprop"):
        make_optimizer("adagrad", 1e-3)
    with pytest.raises(ValueError, match="relu, elu, gelu, swish"):
        build_cnn(_cnn_params(activation="tanh"), (16, 16, 3), NUM_CLASSES)
    with pytest.raises(ValueError, match="allowed"):
        build_model(_cnn_params(optimizer="nadam"), modality="image", input_shape=(16, 16, 3),
                    num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="image, text"):
        build_model(_cnn_params(), modality="audio", input_shape=(16, 16, 3), num_classes=NUM_CLASSES)


def test_tiny_fit_history_keys():
    rng = np.random.default_rng(0)
    x = rng.random((64, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 3, size=64)
    model = build_model(_cnn_params(), modality="image", input_shape=(16, 16, 3), num_classes=3)
    history = model.fit(x, y, batch_size=32, epochs=1, validation_data=(x[:16], y[:16]), verbose=0)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    assert np.isfinite(history.history["loss"][0])
