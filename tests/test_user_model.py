"""A user's own model, "package.module:function": located and checked before any trial (check_build, without running
the module), imported by the trainer (load_build), built, checked and compiled (build_user_model)."""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hpo import user_space
from hpo.exceptions import ConfigError
from hpo.user_model import build_user_model, check_build, load_build

_names = itertools.count()


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write ``source`` as a fresh module in its own folder on sys.path; its name."""
    name = f"user_model_{next(_names)}"
    folder = tmp_path / f"code_{name}"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


BUILDERS = """
    import keras

    def build(params, input_shape, num_classes):
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(params.get("units", 8), activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))

    def compiled(params, input_shape, num_classes):
        model = build(params, input_shape, num_classes)
        model.compile(optimizer=keras.optimizers.RMSprop(0.002), loss="sparse_categorical_crossentropy",
                      metrics=["sparse_categorical_accuracy"])
        return model

    def compiled_with_accuracy(params, input_shape, num_classes):
        model = build(params, input_shape, num_classes)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def wrong_size(params, input_shape, num_classes):
        return build(params, input_shape, num_classes + 1)

    def logits(params, input_shape, num_classes):
        inputs = keras.Input(shape=input_shape)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))

    def not_a_model(params, input_shape, num_classes):
        return {"layers": 3}

    class Small(keras.Model):
        def __init__(self, classes):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.out = keras.layers.Dense(classes, activation="softmax")

        def call(self, x):
            return self.out(self.flat(x))

    def subclassed(params, input_shape, num_classes):
        return Small(params["classes"])

    SCOPES = []

    def records_scope(params, input_shape, num_classes):
        import tensorflow as tf

        SCOPES.append(tf.distribute.has_strategy())
        return build(params, input_shape, num_classes)

    def text(params, input_shape, num_classes):
        inputs = keras.Input(shape=input_shape, dtype="int32")
        x = keras.layers.Embedding(50, 4)(inputs)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))

    NOT_CALLABLE = 3
"""


def _data(n: int = 48, shape=(6, 2), classes: int = 3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, classes, size=n).astype("int32")


# -- finding and importing the function ----------------------------------------------------------------------------

def test_load_build_returns_the_users_function(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "def build(params, input_shape, num_classes):\n    return 42\n")
    assert load_build(f"{name}:build")({}, (2,), 3) == 42


def test_load_build_finds_a_module_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_local_net.py").write_text("def build(params, input_shape, num_classes):\n    return 'here'\n")
    monkeypatch.delitem(sys.modules, "my_local_net", raising=False)
    assert load_build("my_local_net:build")({}, (2,), 3) == "here"


def test_load_build_errors_name_the_module_or_function_and_the_cause(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        load_build("no_such_user_module_xyz:build")
    assert info.value.field == "model"
    assert "module 'no_such_user_module_xyz' cannot be imported (ModuleNotFoundError: No module named " \
           "'no_such_user_module_xyz')" in str(info.value)

    name = _module(tmp_path, monkeypatch, "import not_installed_dependency_abc\n")
    with pytest.raises(ConfigError, match=f"module '{name}' cannot be imported .ModuleNotFoundError: No module "
                                          "named 'not_installed_dependency_abc'"):
        load_build(f"{name}:build")

    name = _module(tmp_path, monkeypatch, "def make(p, s, n):\n    pass\nNOT_CALLABLE = 3\n")
    with pytest.raises(ConfigError, match=f"module '{name}' has no attribute 'build'; its functions: make"):
        load_build(f"{name}:build")
    with pytest.raises(ConfigError, match=f"{name}.NOT_CALLABLE is a int, not a function"):
        load_build(f"{name}:NOT_CALLABLE")

    name = _module(tmp_path, monkeypatch, "raise RuntimeError('broken at import')\n")
    with pytest.raises(ConfigError, match="importing module .* failed .RuntimeError: broken at import"):
        load_build(f"{name}:build")
    with pytest.raises(ConfigError, match="'package.module:function'"):
        load_build("not a reference")


def test_check_build_locates_and_parses_without_running_the_module(tmp_path, monkeypatch):
    marker = tmp_path / "ran.txt"
    name = _module(tmp_path, monkeypatch, f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("the module ran")
        import keras_is_not_imported_here_xyz

        def build(params, input_shape, num_classes):
            pass

        SIZE = 3
    """)
    assert check_build(f" {name}:build ") == f"{name}:build"
    assert not marker.exists()
    with pytest.raises(ConfigError, match=f"module '{name}' has no attribute 'make'; its functions: build"):
        check_build(f"{name}:make")
    with pytest.raises(ConfigError, match=f"{name}.SIZE is a plain value, not a function"):
        check_build(f"{name}:SIZE")
    with pytest.raises(ConfigError, match="No module named 'keras_is_not_imported_here_xyz'"):
        check_build(f"{name}:build", execute=True)  # importing for real runs it
    assert marker.exists()
    with pytest.raises(ConfigError, match="module 'absent_user_module_q' cannot be imported .ModuleNotFoundError"):
        check_build("absent_user_module_q:build")
    with pytest.raises(ConfigError, match="module 'absent_pkg_q.net' cannot be imported"):
        check_build("absent_pkg_q.net:build")

    broken = _module(tmp_path, monkeypatch, "def build(params:\n    pass\n")
    with pytest.raises(ConfigError, match=f"module '{broken}' has a syntax error .{broken}.py, line 1") as info:
        check_build(f"{broken}:build")
    assert info.value.field == "model"

    imported = _module(tmp_path, monkeypatch, "try:\n    from os.path import join as build\nexcept ImportError:\n"
                                              "    build = None\n")
    assert check_build(f"{imported}:build") == f"{imported}:build"


# -- building, checking and compiling -----------------------------------------------------------------------------

def test_an_uncompiled_model_is_compiled_from_the_params_and_trains(tmp_path, monkeypatch):
    import keras

    name = _module(tmp_path, monkeypatch, BUILDERS)
    x, y = _data()
    model = build_user_model(f"{name}:build", {"units": 5, "optimizer": "sgd", "learning_rate": 0.05}, [6, 2], 3)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert model.layers[2].units == 5
    history = model.fit(x, y, validation_data=(x[:8], y[:8]), epochs=1, batch_size=16, verbose=0).history
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history)
    assert np.isfinite(history["loss"][0]) and 0.0 <= history["accuracy"][0] <= 1.0

    default = build_user_model(f"{name}:build", {}, (6, 2), 3, decay_steps=10)
    assert isinstance(default.optimizer, keras.optimizers.Adam)
    schedule = default.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.initial_learning_rate == pytest.approx(1e-3) and schedule.decay_steps == 10


def test_a_model_build_compiled_is_kept_and_tracks_accuracy(tmp_path, monkeypatch):
    import keras

    name = _module(tmp_path, monkeypatch, BUILDERS)
    x, y = _data()
    model = build_user_model(f"{name}:compiled", {"optimizer": "sgd", "learning_rate": 0.5}, (6, 2), 3)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)  # the user's optimizer, not params'
    assert float(model.optimizer.learning_rate) == pytest.approx(0.002)
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0).history
    assert {"loss", "sparse_categorical_accuracy", "accuracy"} <= set(history)  # the user's metric kept, accuracy added
    assert history["accuracy"][0] == pytest.approx(history["sparse_categorical_accuracy"][0])

    already = build_user_model(f"{name}:compiled_with_accuracy", {}, (6, 2), 3)
    assert already._compile_config.config["metrics"] == ["accuracy"]  # not compiled again
    assert "accuracy" in already.fit(x, y, epochs=1, batch_size=16, verbose=0).history


@pytest.mark.parametrize("function,expected", [
    ("wrong_size", "returned a model whose output has shape (batch, 4); allowed: (batch, 3)"),
    ("not_a_model", "returned dict; allowed: a keras.Model"),
    ("logits", "outputs are not probabilities"),
])
def test_a_wrong_model_is_refused_naming_the_function_and_what_it_returned(tmp_path, monkeypatch, function,
                                                                          expected):
    name = _module(tmp_path, monkeypatch, BUILDERS)
    with pytest.raises(ConfigError) as info:
        build_user_model(f"{name}:{function}", {}, (6, 2), 3)
    assert f"model='{name}:{function}'" in str(info.value) and expected in str(info.value)
    assert info.value.field == "model"


def test_a_subclassed_model_is_checked_on_a_zero_batch(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, BUILDERS)
    with pytest.raises(ConfigError, match=r"output has shape \(2, 5\); allowed: \(batch, 3\)"):
        build_user_model(f"{name}:subclassed", {"classes": 5}, (6, 2), 3)
    model = build_user_model(f"{name}:subclassed", {"classes": 3}, (6, 2), 3)
    x, y = _data()
    assert "accuracy" in model.fit(x, y, epochs=1, batch_size=16, verbose=0).history


def test_a_text_model_with_integer_inputs_is_checked(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, BUILDERS)
    model = build_user_model(f"{name}:text", {"optimizer": "adamw", "weight_decay": 0.01}, (7,), 2)
    assert model.optimizer.weight_decay == pytest.approx(0.01)
    x = np.random.default_rng(1).integers(0, 50, size=(16, 7)).astype("int32")
    assert "accuracy" in model.fit(x, np.arange(16) % 2, epochs=1, batch_size=8, verbose=0).history


def test_an_unknown_optimizer_for_an_uncompiled_model_is_refused(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, BUILDERS)
    with pytest.raises(ConfigError, match="optimizer='nadam' is not one hpo compiles with; allowed: adam, adamw, "
                                          "sgd, rmsprop"):
        build_user_model(f"{name}:build", {"optimizer": "nadam"}, (6, 2), 3)


def test_build_runs_inside_the_strategy_scope(tmp_path, monkeypatch):
    import tensorflow as tf

    name = _module(tmp_path, monkeypatch, BUILDERS)
    module = sys.modules.get(name) or __import__(name)
    build_user_model(f"{name}:records_scope", {}, (6, 2), 3)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = build_user_model(f"{name}:records_scope", {}, (6, 2), 3, strategy=strategy)
    assert module.SCOPES == [False, True]
    assert model.distribute_strategy is strategy


def test_the_space_knows_the_optimizers_hpo_compiles_with():
    from hpo import models

    assert user_space.OPTIMIZERS == models.OPTIMIZERS
