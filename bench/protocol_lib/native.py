"""The native methods: each tool's own idiomatic setup, as in bench/hpo_quality.py -- a hand-written Keras model
and space (conv blocks with ReLU and max pooling, a dense layer, dropout, Adam at a constant learning rate; Conv2D for
images, Conv1D for sequences), trained with ``model.fit`` one epoch at a time keeping the best epoch's weights.

- ``native-tpe`` / ``-sh`` / ``-hb``: Optuna TPE (multivariate, 5 start-up trials), ``trial_epochs`` per trial, or up
  to ``max_epochs`` with Optuna's successive halving / Hyperband pruner;
- ``native-kt-hb``: KerasTuner Hyperband (``max_epochs``, factor 3) with the same model and space.

The data are the protocol's split (hpo.datasets, the same seed): only the search setup is the tool's own.
"""

from __future__ import annotations

import math
from typing import Any

from .loop import Trained, search_loop
from .record import EpochGuard, MethodRun

__all__ = ["SPACE", "build", "suggest", "run_native_search", "load_data"]

#: name -> (kind, values): choice, int (low, high), float (low, high), logfloat (low, high)
SPACE: dict[str, tuple[str, tuple]] = {
    "filters": ("choice", (16, 32, 64)),
    "blocks": ("int", (1, 3)),
    "kernel": ("choice", (3, 5)),
    "dense_units": ("choice", (64, 128, 256)),
    "dropout": ("float", (0.0, 0.5)),
    "learning_rate": ("logfloat", (1e-4, 1e-2)),
    "batch_size": ("choice", (32, 64, 128)),
}
SEQUENCE_KERNELS = (3, 5, 7)


def _space(modality: str) -> dict[str, tuple[str, tuple]]:
    if modality == "sequence":
        return dict(SPACE, kernel=("choice", SEQUENCE_KERNELS))
    if modality != "image":
        raise SystemExit(f"the native setup covers images and sequences, not {modality}")
    return SPACE


def suggest(trial: Any, modality: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, values) in _space(modality).items():
        if kind == "choice":
            out[name] = trial.suggest_categorical(name, list(values))
        elif kind == "int":
            out[name] = trial.suggest_int(name, *values)
        else:
            out[name] = trial.suggest_float(name, *values, log=kind == "logfloat")
    return out


def kt_params(hp: Any, modality: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, values) in _space(modality).items():
        if kind == "choice":
            out[name] = hp.Choice(name, list(values))
        elif kind == "int":
            out[name] = hp.Int(name, *values)
        else:
            out[name] = hp.Float(name, *values, sampling="log" if kind == "logfloat" else "linear")
    return out


def build(p: dict[str, Any], info: Any) -> Any:
    import keras

    seq = info.modality == "sequence"
    conv, pool = (keras.layers.Conv1D, keras.layers.MaxPooling1D) if seq else (keras.layers.Conv2D,
                                                                                keras.layers.MaxPooling2D)
    inputs = keras.Input(tuple(info.input_shape))
    x = inputs
    size = min(info.input_shape[:1 if seq else 2])
    for i in range(int(p["blocks"])):
        x = conv(int(p["filters"]) * 2**i, int(p["kernel"]), padding="same", activation="relu")(x)
        if size >= 4:
            x = pool(2)(x)
            size //= 2
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(float(p["dropout"]))(x)
    x = keras.layers.Dense(int(p["dense_units"]), activation="relu")(x)
    x = keras.layers.Dropout(float(p["dropout"]))(x)
    outputs = keras.layers.Dense(info.num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(float(p["learning_rate"])), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def load_data(run: MethodRun) -> Any:
    from hpo import datasets

    data = datasets.load(run.dataset, validation_split=run.plan["validation_split"], seed=run.seed,
                         data_fraction=run.plan["data_fraction"])
    run.note(data_ready_s=run.elapsed())
    return data


def run_native_search(run: MethodRun, sampler: str, pruner: str) -> None:
    import time

    import keras

    data = load_data(run)
    info = data.info

    def train(trial: Any, params: dict[str, Any], epochs: int, guard: EpochGuard, pruning: bool) -> Trained:
        started = time.perf_counter()
        keras.backend.clear_session()
        keras.utils.set_random_seed((run.seed + trial.number) % 2**32)
        model = build(params, info)
        best, best_weights, done, pruned = -math.inf, None, 0, False
        for epoch in range(1, epochs + 1):
            history = model.fit(data.x_train, data.y_train, batch_size=int(params["batch_size"]), epochs=1,
                                validation_data=(data.x_val, data.y_val), verbose=0)
            done += 1
            val = float(history.history["val_accuracy"][-1])
            if math.isfinite(val) and val > best:
                best, best_weights = val, model.get_weights()
            guard.on_epoch(time.perf_counter() - started)
            trial.report(val, epoch)
            if pruning and trial.should_prune():
                pruned = True
                break
            if guard.out_of_time():
                break
        if best_weights is None:
            return None, "failed", done, pruned
        if pruned:  # never a candidate: not saved
            return best, "stopped", done, True
        model.set_weights(best_weights)
        model.save(run.model_path(trial.number))
        return best, "completed" if done == epochs else "stopped", done, pruned

    epochs = int(run.plan["trial_epochs"] if pruner == "none" else run.plan["max_epochs"])
    search_loop(run, sampler=sampler, pruner=pruner, epochs=epochs, suggest=lambda t: suggest(t, info.modality),
                train=train)
