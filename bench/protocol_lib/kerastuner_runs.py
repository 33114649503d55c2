"""KerasTuner Hyperband (``max_epochs`` of the dataset's plan, factor 3, iterations until the deadline), in both
tables:

- controlled (``kt-hb``): hpo's space translated to KerasTuner's (ints and floats on their log scale where hpo's
  are, choices as Choice; a conditional parameter is always defined and simply unused when inactive), models from
  ``hpo.models.build_model`` with hpo's cosine schedule over ``max_epochs``, configurations over hpo's
  ``max_params`` rejected by KerasTuner's own ``max_model_size``;
- native (``native-kt-hb``): the hand-written model and space of :mod:`.native`.

KerasTuner keeps every trial's best epoch (its checkpoint); at a trial's end that model is saved for the protocol.
A trial stops after the epoch past which the next would miss the deadline; no trial starts that could not end one.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

from .record import EpochGuard, MethodRun

__all__ = ["run_kerastuner"]

warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")


def _hpo_params(hp: Any, info: Any) -> dict[str, Any]:
    from hpo.catalog import param_bounds, space_for

    out: dict[str, Any] = {}
    for p in space_for(info.modality):
        if p.kind == "categorical":
            out[p.name] = hp.Choice(p.name, list(p.choices))
            continue
        low, high = param_bounds(p, info.input_shape)
        if p.kind == "int":
            out[p.name] = hp.Int(p.name, int(low), int(high), sampling="log" if p.log else "linear")
        else:
            out[p.name] = hp.Float(p.name, float(low), float(high), sampling="log" if p.log else "linear")
    return out


def run_kerastuner(run: MethodRun, controlled: bool) -> None:
    import keras
    import keras_tuner as kt

    from . import native

    data = native.load_data(run)
    info = data.info
    max_epochs = int(run.plan["max_epochs"])
    keras.utils.set_random_seed(run.seed)
    guard = EpochGuard(run)
    state = {"t0": time.perf_counter(), "n": 0}

    class Model(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            if not controlled:
                return native.build(native.kt_params(hp, info.modality), info)
            from hpo import models

            params = _hpo_params(hp, info)
            steps = max_epochs * math.ceil(len(data.x_train) / int(params["batch_size"]))
            return models.build_model(params, modality=info.modality, input_shape=info.input_shape,
                                      num_classes=info.num_classes, vocab_size=info.vocab_size, decay_steps=steps)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            return model.fit(*args, batch_size=hp.get("batch_size"), shuffle=True, **kwargs)

    class Deadline(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            guard.on_epoch(time.perf_counter() - state["t0"])
            if guard.out_of_time():
                self.model.stop_training = True

    class Tuner(kt.Hyperband):
        def pre_create_trial(self) -> None:
            if not guard.can_start():
                self.oracle.max_trials = max(1, len(self.oracle.trials))  # KerasTuner then stops the search

        def on_trial_begin(self, trial: Any) -> None:
            super().on_trial_begin(trial)
            guard.start_trial()
            state["t0"] = time.perf_counter()

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            t = self.oracle.trials[trial.trial_id]
            n = state["n"]
            state["n"] += 1
            values = {k: v for k, v in t.hyperparameters.values.items() if not k.startswith("tuner/")}
            ok = str(t.status).upper().endswith("COMPLETED") and t.score is not None
            if ok:
                self.load_model(t).save(run.model_path(n))  # the trial's best epoch
            run.record(n, t.score if ok else None, candidate=ok, state="completed" if ok else str(t.status).lower(),
                       epochs=t.hyperparameters.values.get("tuner/epochs"), params=values)

    limit = None
    if controlled:
        from .controlled import max_params

        limit = max_params()
    tuner = Tuner(Model(), objective="val_accuracy", max_epochs=max_epochs, factor=3, hyperband_iterations=10_000,
                  seed=run.seed, directory=str(run.dir / "kerastuner"), project_name="bench", overwrite=True,
                  max_model_size=limit, max_consecutive_failed_trials=1000)
    tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), callbacks=[Deadline()],
                 verbose=0)
    run.note(trials=state["n"])
