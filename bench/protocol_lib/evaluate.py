"""After every run: the test accuracy of each run's best-so-far model at T/4, T/2 and T, from the saved model files
only (the methods never saw the test split). A recorded trial whose model file is missing cannot be tested and is no
candidate (counted in the run's ``models_missing``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .settings import CHECKPOINTS

__all__ = ["evaluate_runs", "load_test"]


def load_test(plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The official test split (the same for every seed)."""
    from hpo import datasets

    data = datasets.load(plan["name"], validation_split=plan["validation_split"], seed=0,
                         data_fraction=plan["data_fraction"])
    return data.x_test, np.asarray(data.y_test)


def _correct(path: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    import keras

    keras.backend.clear_session()
    model = keras.models.load_model(path, compile=False)
    probs = model.predict(x, batch_size=512, verbose=0)
    return np.argmax(probs, axis=-1) == y


def evaluate_runs(runs: list[dict[str, Any]], plans: dict[str, dict[str, Any]]
                  ) -> dict[tuple[str, str, float, int, float], np.ndarray]:
    """Adds ``run["at"][frac] = {"trial", "val", "end_s", "test"}`` for each checkpoint; returns the per-example
    correctness arrays keyed (dataset, method, budget_s, seed, frac) (absent where there was no model)."""
    correct: dict[tuple[str, str, float, int, float], np.ndarray] = {}
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_dataset.setdefault(run["dataset"], []).append(run)
    for name, group in by_dataset.items():
        x, y = load_test(plans[name])
        cache: dict[str, np.ndarray] = {}
        for run in group:
            missing = 0
            for t in run["trials"]:
                if t.get("candidate") and not (t.get("model") and Path(t["model"]).exists()):
                    t["candidate"] = False
                    missing += 1
            run["models_missing"] = missing
            run["at"] = {}
            for frac, best in stats.checkpoint_trials(run["trials"], run["budget_s"], CHECKPOINTS).items():
                entry: dict[str, Any] = {"trial": None, "val": None, "end_s": None, "test": None}
                if best is not None:
                    path = best["model"]
                    if path not in cache:
                        cache[path] = _correct(path, x, y)
                    entry = {"trial": best["n"], "val": best["val"], "end_s": best["end_s"],
                             "test": float(cache[path].mean())}
                    correct[(name, run["method"], run["budget_s"], run["seed"], frac)] = cache[path]
                run["at"][frac] = entry
            run["n_test"] = int(len(y))
    return correct
