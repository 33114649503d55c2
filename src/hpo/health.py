"""Model health, measured: each component on the trial's own trained model and data (the trainer side).

Every metric is measured on the trial's own model and data inside :func:`hpo.training.run_trial` (so a local and a
remote trial report the same), lies in [0, 1] with higher = healthier, and is ``None`` (missing) when it cannot be
computed -- never a made-up middle value. Why a metric is missing is written to ``details["health_notes"]``.

Components (keys of ``TrialResult.health``)::

    neuron_utilization  share of the hidden units of Conv / Dense / LSTM layers (found by layer type, incl.
                        Bidirectional wrappers; the output layer is left out) that are *utilized* on a validation
                        sample of SAMPLE_SIZE images/texts. A unit is read after its nonlinearity (the layer's own
                        activation, or the Activation layer that follows it through BatchNormalization / Dropout);
                        conv channels and sequence outputs are reduced to their strongest response per sample. A unit
                        is utilized when it fires (output > 1e-6 for relu-like activations, |output| > 1e-4 for
                        tanh-like / linear ones such as LSTM outputs) on at least 1 % of the samples *and* its
                        response is not the same for every sample (units downstream of a dead layer are constant).
                        Per-layer shares go to details["neuron_utilization_per_layer"].
    gradient_health     per-layer L2 norms of the gradient of the data loss on one training batch (tf.GradientTape,
                        inference mode so measuring never changes the model) for the same layers, in
                        details["gradient_norms"]. Each layer scores 1 inside [1e-4, 10], falling linearly in log10 to
                        0 three decades beyond either end (vanishing below, exploding above); the mean layer score is
                        multiplied by a spread score that falls from 1 to 0 as max/min norm grows from 1e3 to 1e6
                        (early layers starving while late ones learn). A layer with a zero gradient scores 0.
    generalization      1 - gap / 0.25, clipped to [0, 1], where gap = train accuracy - validation accuracy at the
                        best epoch (a negative gap scores 1). Train 1.0 / val 0.6 scores 0.
    training_stability  geometric mean of (a) monotonic fall: downward movement / total movement of the per-epoch
                        training loss, and (b) smoothness: 1 - largest single rise / (max loss - min loss); a steadily
                        rising loss scores 0. Needs >= 2 epochs.
                        (A NaN/inf loss is a failed trial, decided in training, never a health number.)
    convergence         1 - (e - 1) / n, where n = epochs run and e = the first epoch whose validation accuracy
                        reaches 90 % of the way from chance (1 / classes) to the best. Needs >= 2 epochs.
    efficiency          val_accuracy * mean(size score, latency score); size score = 1 - log10(params / 1e4) / 3
                        (10k params -> 1, 10M -> 0), latency score = 1 - log10(s / 1e-5) / 3 with s the inference
                        seconds per sample on the validation sample (fastest of 3 timed passes; 10 us -> 1,
                        10 ms -> 0), each clipped to [0, 1]. Latency depends on the machine and its load, so this is
                        the one metric that is not bit-identical between runs: compare trials of one run. Missing
                        latency -> size score alone. Details: details["efficiency"].

``overall_health`` (their weighted mean), the default weights, :func:`parse_weights`, :func:`reweight` and the
objective of each mode are defined in the light core, :mod:`hpo.scoring`, and re-exported here; :func:`measure`
computes ``overall_health`` with them.

This module imports numpy only at import time; Keras and TensorFlow are imported inside the model measurements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .scoring import (COMPONENTS, DEFAULT_WEIGHTS, GRADIENT_HEALTHY_RANGE, normalize_weights, objective,
                      overall_health, parse_weights, reweight)

__all__ = [
    "COMPONENTS",
    "DEFAULT_WEIGHTS",
    "SAMPLE_SIZE",
    "parse_weights",
    "normalize_weights",
    "overall_health",
    "reweight",
    "neuron_utilization",
    "gradient_norms",
    "gradient_health",
    "generalization",
    "training_stability",
    "convergence",
    "inference_latency",
    "efficiency",
    "measure",
    "objective",
]

#: validation samples used for utilization and latency
SAMPLE_SIZE = 256
#: most training samples in the gradient batch
GRADIENT_BATCH = 128

# thresholds (documented in the module docstring)
_FIRE_POSITIVE = 1e-6
_FIRE_SYMMETRIC = 1e-4
_MIN_ACTIVE_FRACTION = 0.01
(_GRAD_LOW, _GRAD_HIGH), _GRAD_DECADES = GRADIENT_HEALTHY_RANGE, 3.0
_SPREAD_FREE, _SPREAD_ZERO = 3.0, 6.0  # decades
_GAP_ZERO = 0.25
_CONVERGED_SHARE = 0.9
_SIZE_REF, _LATENCY_REF, _EFF_DECADES = 1e4, 1e-5, 3.0
_SYMMETRIC_ACTIVATIONS = {"linear", "tanh", "softsign", "hard_tanh", "sparse_plus", "tanh_shrink"}


# -- helpers ------------------------------------------------------------------------------------------------------------

def _clip01(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


def _finite_list(values: Sequence[Any] | None) -> list[float] | None:
    """The values as floats, or None when any is missing / non-finite."""
    if not values:
        return None
    out = []
    for v in values:
        if v is None:
            return None
        f = float(v)
        if not math.isfinite(f):
            return None
        out.append(f)
    return out


def _log_band(x: float, low: float, high: float, decades: float) -> float:
    """1 inside [low, high]; falls linearly in log10 to 0 ``decades`` beyond either end."""
    if not math.isfinite(x) or x <= 0:
        return 0.0
    lg = math.log10(x)
    if lg < math.log10(low):
        return _clip01(1.0 - (math.log10(low) - lg) / decades)
    if lg > math.log10(high):
        return _clip01(1.0 - (lg - math.log10(high)) / decades)
    return 1.0


# -- history-based metrics ----------------------------------------------------------------------------------------------

def generalization(history: Mapping[str, Sequence[Any]], best_epoch: int | None) -> float | None:
    """1 - (train accuracy - val accuracy at the best epoch) / 0.25, clipped to [0, 1]."""
    if not best_epoch or best_epoch < 1:
        return None
    train, val = history.get("accuracy") or [], history.get("val_accuracy") or []
    if len(train) < best_epoch or len(val) < best_epoch:
        return None
    a, v = train[best_epoch - 1], val[best_epoch - 1]
    if a is None or v is None or not (math.isfinite(a) and math.isfinite(v)):
        return None
    return _clip01(1.0 - max(0.0, float(a) - float(v)) / _GAP_ZERO)


def training_stability(history: Mapping[str, Sequence[Any]]) -> float | None:
    """Geometric mean of the loss curve's monotonic fall and smoothness (see the module docstring); None below 2
    epochs."""
    loss = _finite_list(history.get("loss"))
    if loss is None or len(loss) < 2:
        return None
    diffs = np.diff(np.asarray(loss, dtype=np.float64))
    ups = float(np.clip(diffs, 0, None).sum())
    downs = float(np.clip(-diffs, 0, None).sum())
    moved = ups + downs
    monotonic = downs / moved if moved > 0 else 1.0  # a flat curve is not unstable
    spread = max(loss) - min(loss)
    smooth = 1.0 - float(np.clip(diffs, 0, None).max()) / spread if spread > 0 else 1.0
    return _clip01(math.sqrt(monotonic * _clip01(smooth)))


def convergence(history: Mapping[str, Sequence[Any]], num_classes: int | None = None) -> float | None:
    """1 - (e - 1) / n: how early validation accuracy gets 90 % of the way from chance to its best."""
    acc = [float(a) if a is not None and math.isfinite(a) else None for a in (history.get("val_accuracy") or [])]
    finite = [a for a in acc if a is not None]
    if len(acc) < 2 or not finite:
        return None
    chance = 1.0 / num_classes if num_classes else 0.0
    best = max(finite)
    target = min(best, chance + _CONVERGED_SHARE * (best - chance))  # at or below chance: the best itself
    first = next(i for i, a in enumerate(acc, start=1) if a is not None and a >= target - 1e-12)
    return _clip01(1.0 - (first - 1) / len(acc))


def efficiency(val_accuracy: float | None, param_count: int | None,
               latency_s_per_sample: float | None = None) -> tuple[float | None, dict[str, float | None]]:
    """(score, parts): val_accuracy * mean of the available size and latency scores."""
    parts: dict[str, float | None] = {"param_count": param_count, "latency_ms_per_sample": None,
                                      "size_score": None, "latency_score": None}
    if val_accuracy is None or not math.isfinite(val_accuracy):
        return None, parts
    scores = []
    if param_count is not None and param_count > 0:
        parts["size_score"] = _clip01(1.0 - math.log10(max(param_count, 1) / _SIZE_REF) / _EFF_DECADES)
        scores.append(parts["size_score"])
    if latency_s_per_sample is not None and math.isfinite(latency_s_per_sample) and latency_s_per_sample > 0:
        parts["latency_ms_per_sample"] = latency_s_per_sample * 1e3
        parts["latency_score"] = _clip01(1.0 - math.log10(latency_s_per_sample / _LATENCY_REF) / _EFF_DECADES)
        scores.append(parts["latency_score"])
    if not scores:
        return None, parts
    return _clip01(float(val_accuracy) * sum(scores) / len(scores)), parts


# -- model-based metrics (Keras imported lazily) ------------------------------------------------------------------------

def _unit_layer_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(Conv + Dense types, recurrent types) -- layers are found by type, never by name."""
    import keras

    L = keras.layers
    conv_dense = tuple(getattr(L, n) for n in (
        "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
        "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D") if hasattr(L, n))
    recurrent = tuple(getattr(L, n) for n in ("LSTM", "GRU", "SimpleRNN") if hasattr(L, n))
    return conv_dense, recurrent


def _unit_layers(model: Any) -> list[tuple[Any, str]]:
    """[(layer, "conv_dense" | "recurrent")] of the model, in order (Bidirectional counts as its inner layer)."""
    import keras

    conv_dense, recurrent = _unit_layer_types()
    out = []
    for layer in model.layers:
        inner = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
        if isinstance(inner, recurrent):
            out.append((layer, "recurrent"))
        elif isinstance(inner, conv_dense):
            out.append((layer, "conv_dense"))
    return out


def _activation_name(layer: Any) -> str | None:
    import keras

    L = keras.layers
    for cls, name in (("ReLU", "relu"), ("ELU", "elu"), ("LeakyReLU", "leaky_relu"), ("PReLU", "prelu"),
                      ("Softmax", "softmax")):
        if hasattr(L, cls) and isinstance(layer, getattr(L, cls)):
            return name
    fn = getattr(layer, "activation", None)
    if fn is None:
        return None
    return getattr(fn, "__name__", None) or str(fn)


def _post_activation(model: Any, layer: Any, kind: str) -> tuple[Any, str]:
    """The tensor to read ``layer``'s units from and its activation name."""
    import keras

    if kind == "recurrent":
        return layer.output, "tanh"  # h = o * tanh(c): symmetric around 0
    act = _activation_name(layer)
    if act not in (None, "linear"):
        return layer.output, act
    L = keras.layers
    passthrough = tuple(getattr(L, n) for n in ("BatchNormalization", "LayerNormalization", "GroupNormalization",
                                                "Dropout", "SpatialDropout1D", "SpatialDropout2D",
                                                "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
                                                "AlphaDropout") if hasattr(L, n))
    activations = tuple(getattr(L, n) for n in ("Activation", "ReLU", "ELU", "LeakyReLU", "PReLU", "Softmax")
                        if hasattr(L, n))
    consumers: dict[int, list[Any]] = {}
    for other in model.layers:
        if isinstance(other, L.InputLayer):
            continue
        try:
            inp = other.input
        except (AttributeError, ValueError):
            continue
        for t in (inp if isinstance(inp, (list, tuple)) else [inp]):
            consumers.setdefault(id(t), []).append(other if not isinstance(inp, (list, tuple)) else None)
    tensor = layer.output
    for _ in range(len(model.layers)):
        nxt = consumers.get(id(tensor), [])
        if len(nxt) != 1 or nxt[0] is None:
            break
        if isinstance(nxt[0], activations):
            return nxt[0].output, _activation_name(nxt[0]) or "linear"
        if not isinstance(nxt[0], passthrough):
            break
        tensor = nxt[0].output
    return layer.output, "linear"


def neuron_utilization(model: Any, x: Any, *, min_active_fraction: float = _MIN_ACTIVE_FRACTION
                       ) -> tuple[float | None, dict[str, float]]:
    """(share of utilized hidden Conv/Dense/LSTM units, {layer name: its share}) on the samples ``x``."""
    import keras

    outputs = {id(t) for t in model.outputs}
    probes = []
    for layer, kind in _unit_layers(model):
        if id(layer.output) in outputs:
            continue  # the output layer's units are the classes
        tensor, act = _post_activation(model, layer, kind)
        if id(tensor) in outputs:
            continue
        probes.append((layer.name, tensor, act not in _SYMMETRIC_ACTIVATIONS))
    if not probes:
        return None, {}
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [t for _, t, _ in probes])
    values = probe(x, training=False)
    if not isinstance(values, (list, tuple)):
        values = [values]
    n = int(np.shape(values[0])[0])
    need = max(1, math.ceil(min_active_fraction * n))
    per_layer: dict[str, float] = {}
    active = total = 0
    for (name, _, positive), value in zip(probes, values):
        v = np.asarray(value, dtype=np.float32).reshape(n, -1, np.shape(value)[-1])
        # strongest response of each unit per sample (over positions / time steps)
        resp = v.max(axis=1) if positive else np.abs(v).max(axis=1)
        fires = (resp > _FIRE_POSITIVE) if positive else (resp > _FIRE_SYMMETRIC)
        varies = resp.std(axis=0) > 1e-6 * (1.0 + np.abs(resp).mean(axis=0))
        used = (fires.sum(axis=0) >= need) & varies
        per_layer[name] = float(used.mean())
        active += int(used.sum())
        total += int(used.size)
    return (active / total if total else None), per_layer


def _loss_fn(model: Any) -> Any:
    import keras

    loss = getattr(model, "loss", None)
    if loss is None:
        return keras.losses.SparseCategoricalCrossentropy()
    return keras.losses.get(loss) if isinstance(loss, str) else loss


def gradient_norms(model: Any, x: Any, y: Any) -> dict[str, float]:
    """{layer name: L2 norm of d(mean data loss)/d(layer weights)} for the Conv/Dense/LSTM layers, on the batch
    (x, y), in inference mode (no dropout, BatchNorm moving statistics; the model is not changed). A layer the loss
    does not depend on gets 0."""
    import tensorflow as tf

    layers = [layer for layer, _ in _unit_layers(model) if layer.trainable_weights]
    variables = [v for layer in layers for v in layer.trainable_weights]
    loss_fn = _loss_fn(model)
    with tf.GradientTape() as tape:
        pred = model(x, training=False)
        loss = tf.reduce_mean(tf.cast(loss_fn(y, pred), tf.float32))
    grads = tape.gradient(loss, variables)
    norms: dict[str, float] = {}
    i = 0
    for layer in layers:
        k = len(layer.trainable_weights)
        sq = 0.0
        for g in grads[i:i + k]:
            if g is not None:
                g = tf.convert_to_tensor(g)
                sq += float(tf.reduce_sum(tf.square(tf.cast(g, tf.float64))))
        norms[layer.name] = math.sqrt(sq) if math.isfinite(sq) else math.inf
        i += k
    return norms


def gradient_health(norms: Mapping[str, float | None]) -> float | None:
    """Score of per-layer gradient norms (see the module docstring); None without layers."""
    values = [float(v) if v is not None else math.inf for v in norms.values()]
    if not values:
        return None
    band = sum(_log_band(v, _GRAD_LOW, _GRAD_HIGH, _GRAD_DECADES) for v in values) / len(values)
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if len(positive) >= 2:
        spread = math.log10(max(positive) / min(positive))
        band *= _clip01(1.0 - (spread - _SPREAD_FREE) / (_SPREAD_ZERO - _SPREAD_FREE))
    return _clip01(band)


def inference_latency(model: Any, x: Any, *, repeats: int = 3) -> float:
    """Seconds per sample of the fastest of ``repeats`` forward passes over ``x`` (after one warm-up pass); the
    fastest pass is the least disturbed by other work on the machine."""
    model(x, training=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model(x, training=False)
        np.asarray(out)  # wait for the result
        times.append(time.perf_counter() - start)
    return min(times) / max(1, int(np.shape(x)[0]))


# -- all of it ----------------------------------------------------------------------------------------------------------

def measure(model: Any, *, history: Mapping[str, Sequence[Any]], best_epoch: int | None,
            val_accuracy: float | None, num_classes: int | None, x_val: Any, x_train: Any, y_train: Any,
            param_count: int | None = None, weights: Mapping[str, float] | None = None,
            sample_size: int = SAMPLE_SIZE, gradient_batch: int = GRADIENT_BATCH
            ) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Every health metric of a trained model: (health, details) for TrialResult.health / .details.

    Never raises: a metric whose measurement fails is None and the reason goes to details["health_notes"].
    """
    health: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    notes: list[str] = []

    def attempt(name: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a failed measurement is a missing metric, not a failed trial
            notes.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            return None

    xv = x_val[:sample_size] if x_val is not None and len(x_val) else None
    xt = x_train[:gradient_batch] if x_train is not None and len(x_train) else None
    yt = y_train[:gradient_batch] if y_train is not None and len(y_train) else None

    util = attempt("neuron_utilization", lambda: neuron_utilization(model, xv)) if xv is not None else None
    health["neuron_utilization"] = util[0] if util else None
    if util and util[1]:
        details["neuron_utilization_per_layer"] = util[1]

    norms = attempt("gradient_health", lambda: gradient_norms(model, xt, yt)) if xt is not None else None
    health["gradient_health"] = gradient_health(norms) if norms else None
    if norms:
        details["gradient_norms"] = norms

    health["generalization"] = attempt("generalization", lambda: generalization(history, best_epoch))
    health["training_stability"] = attempt("training_stability", lambda: training_stability(history))
    health["convergence"] = attempt("convergence", lambda: convergence(history, num_classes))

    if param_count is None:
        param_count = attempt("efficiency", lambda: int(model.count_params()))
    latency = attempt("efficiency (latency)", lambda: inference_latency(model, xv)) if xv is not None else None
    eff = attempt("efficiency", lambda: efficiency(val_accuracy, param_count, latency))
    health["efficiency"] = eff[0] if eff else None
    if eff:
        details["efficiency"] = eff[1]

    for name in COMPONENTS:
        value = health.get(name)
        if value is not None and not math.isfinite(value):
            health[name] = None
        if health.get(name) is None and not any(n.startswith(name) for n in notes):
            notes.append(f"{name}: not measurable for this trial")
    health["overall_health"] = overall_health(health, weights)
    if weights is not None:
        details["health_weights"] = normalize_weights(weights)
    if notes:
        details["health_notes"] = notes
    return health, details
