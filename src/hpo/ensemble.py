"""The final's ensemble (``final_ensemble``): a final training averages its model with the run's best kept ones.

Greedy ensemble selection with replacement (Caruana et al., 2004), on validation only: start from the final's own
model; add, repeats allowed, the kept model (:mod:`hpo.kept`) whose class probabilities averaged in give the highest
validation accuracy, ties broken by the lower validation log-loss; add it only when it strictly improves (accuracy,
then log-loss); at most :data:`MAX_PICKS` picks and ``members`` distinct models. A model picked k times of n weighs k/n.

What is averaged is what the kept trials predicted at their own end, read from their ``.npz`` (no model is evaluated
again; a trial that keeps its predictions computes its own metrics from them, :func:`predict`, so that its end passes
over the test split once); only the chosen members are loaded, to save one Keras model (:func:`combine`: the members side by side, their
softmax outputs weighted and added) in the final's model file. The final's own model alone stays beside it
(``trial-N.single.keras``); the trial's validation and test metrics are the ensemble's, its details say of what.
The last of several finals side by side (``gather``: the others' trial numbers) first waits for theirs to be kept, at
most until ``until`` (:func:`await_kept`; the others end their training :data:`hpo.finale.GATHER_S` earlier), so that
the run's finals may be averaged too. Trainer code: numpy here, Keras inside the functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import kept

__all__ = ["MAX_PICKS", "accuracy", "log_loss", "predict", "greedy", "combine", "await_kept", "finish"]

log = logging.getLogger(__name__)

#: the most picks (with repeats) of one ensemble
MAX_PICKS = 5


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=-1) == y))


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    picked = probs[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def predict(model: Any, data: Any, batch_size: int) -> tuple[dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """(validation metrics, test metrics, predictions): the model's class probabilities on both splits, one pass over
    each, and the metrics Keras' ``evaluate`` would give (accuracy; loss = cross-entropy plus the model's
    regularization losses), computed from them -- where an ``evaluate`` and then a ``predict`` passed over the test
    split twice (a Fashion-MNIST final: about 3 s of its end)."""
    import keras

    own = {"val": model.predict(data.x_val, batch_size=batch_size, verbose=0).astype(np.float32),
           "test": model.predict(data.x_test, batch_size=batch_size, verbose=0).astype(np.float32)}
    penalty = float(sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses))

    def metrics(probs: np.ndarray, y: Any) -> dict[str, float]:
        y = np.asarray(y).ravel()
        return {"accuracy": accuracy(probs, y), "loss": log_loss(probs, y) + penalty}

    return metrics(own["val"], data.y_val), metrics(own["test"], data.y_test), own


def greedy(probs: Sequence[np.ndarray], y: np.ndarray, *, members: int, first: int = 0) -> list[int]:
    """Indices into ``probs`` picked (repeats allowed), starting from ``first``; see the module's rule."""
    y = np.asarray(y).ravel()
    picks, total = [first], np.asarray(probs[first], dtype=np.float64).copy()

    def score(p: np.ndarray) -> tuple[float, float]:
        return accuracy(p, y), -log_loss(p, y)

    current = score(total)
    while len(picks) < MAX_PICKS:
        best, best_score = None, current
        for i, p in enumerate(probs):
            if i not in picks and len(set(picks)) >= members:
                continue
            s = score((total + p) / (len(picks) + 1))
            if s > best_score:
                best, best_score = i, s
        if best is None:
            break
        picks.append(best)
        total += probs[best]
        current = best_score
    return picks


def combine(models: Sequence[Any], weights: Sequence[float]) -> Any:
    """One Keras model whose output is sum(weight x member's output): the members side by side on one input."""
    import keras

    first = models[0]
    inputs = keras.Input(shape=first.input_shape[1:], dtype=first.inputs[0].dtype, name="inputs")
    outputs = []
    for i, (member, weight) in enumerate(zip(models, weights)):
        member.name = f"member_{i}"  # the members' own names may clash (every functional model is "functional")
        outputs.append(keras.layers.Rescaling(float(weight), name=f"weight_{i}")(member(inputs)))
    merged = outputs[0] if len(outputs) == 1 else keras.layers.Add(name="average")(outputs)
    return keras.Model(inputs, merged, name="ensemble")


def await_kept(folder: Path, numbers: Sequence[int], until: float, poll_s: float = 0.1) -> tuple[list[int], float]:
    """Wait until trials ``numbers`` are kept in ``folder`` (their model and predictions linked there by the run), at
    most until ``until`` (a time of time.perf_counter); (those kept, seconds waited)."""
    started = time.perf_counter()
    while True:
        found = [n for n in numbers if all((folder / f"trial-{n}{ext}").exists() for ext in (".keras", ".npz"))]
        if len(found) == len(numbers) or time.perf_counter() >= until:
            return found, time.perf_counter() - started
        time.sleep(poll_s)


def _kept(folder: Path, own: Path) -> list[tuple[int, Path, dict[str, np.ndarray]]]:
    """(trial number, model file, predictions) of each kept trial but this one."""
    found = []
    for model in sorted(folder.glob("trial-*.keras")) if folder.is_dir() else []:
        number, npz = kept.trial_number(model), kept.predictions_path(model)
        if number is None or model.name == own.name or not npz.exists():
            continue
        try:
            with np.load(npz) as arrays:
                found.append((number, model, {"val": arrays["val"], "test": arrays["test"]}))
        except (OSError, ValueError, KeyError) as exc:  # a file being replaced: that trial is left out
            log.debug("kept predictions %s unreadable: %s", npz, exc)
    return found


def finish(model: Any, data: Any, path: Path, own: dict[str, np.ndarray], *, members: int,
           val_metrics: dict[str, Any], test_metrics: dict[str, Any], gather: Sequence[int] = (), until: float = 0.0
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Save ``model``'s predictions ``own`` (:func:`predict`) beside ``path`` and the model (or, ``members`` > 1, the
    ensemble) in ``path``. Returns the trial's (validation metrics, test metrics, details): the ensemble's when one
    was chosen; when building it fails, the final's own (the model alone saved, the reason in the details).
    ``gather``: the other finals, waited for until ``until`` (details ``finals``: those waited for, those found kept,
    the seconds waited)."""
    np.savez(kept.predictions_path(path), **own)
    waited = {}
    if gather and members > 1:
        found, seconds = await_kept(kept.kept_dir(path), gather, until)
        waited = {"finals": {"waited_for": list(gather), "found": found, "waited_s": round(seconds, 2)}}
    try:
        val, test, details = _average(model, own, data, path, members=members, val_metrics=val_metrics,
                                      test_metrics=test_metrics)
        return val, test, dict(details, **waited)
    except Exception as exc:  # noqa: BLE001 - the final is never lost to its ensemble: it stands alone
        log.warning("the final's ensemble was not built (%s: %s); the final stands alone", type(exc).__name__, exc)
        kept.single_path(path).unlink(missing_ok=True)
        model.save(path)
        return val_metrics, test_metrics, {"ensemble": f"not built: {type(exc).__name__}: {exc}"[:300], **waited}


def _average(model: Any, own: dict[str, np.ndarray], data: Any, path: Path, *, members: int,
             val_metrics: dict[str, Any], test_metrics: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    import keras

    found = _kept(kept.kept_dir(path), path) if members > 1 else []
    y_val, y_test = np.asarray(data.y_val).ravel(), np.asarray(data.y_test).ravel()
    picks = greedy([own["val"]] + [p["val"] for _, _, p in found], y_val, members=members) if found else [0]
    if len(set(picks)) == 1:
        model.save(path)
        return val_metrics, test_metrics, ({"ensemble": f"none of {len(found)} kept models raised validation accuracy"}
                                           if members > 1 else {})
    chosen = sorted(set(picks))
    weights = [picks.count(i) / len(picks) for i in chosen]
    preds = [own] + [p for _, _, p in found]
    val = sum(w * preds[i]["val"].astype(np.float64) for i, w in zip(chosen, weights))
    test = sum(w * preds[i]["test"].astype(np.float64) for i, w in zip(chosen, weights))
    loaded = [model if i == 0 else keras.models.load_model(found[i - 1][1], compile=False) for i in chosen]
    model.save(kept.single_path(path))
    combine(loaded, weights).save(path)
    numbers = [kept.trial_number(path) if i == 0 else found[i - 1][0] for i in chosen]
    details = {"ensemble": {"members": numbers, "weights": [round(w, 4) for w in weights],
                            "alone": {"val_accuracy": val_metrics.get("accuracy"),
                                      "test_accuracy": test_metrics.get("accuracy")}}}
    return ({"accuracy": accuracy(val, y_val), "loss": log_loss(val, y_val)},
            {"accuracy": accuracy(test, y_test), "loss": log_loss(test, y_test)}, details)
