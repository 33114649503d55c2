"""Plots of a run: each is a data-extraction function (plain data, tested) plus a matplotlib renderer.

Renderers draw on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot, no global backend switch), so they
run headless and do not disturb a notebook's own plotting. Every PNG has a fixed size (figure size x :data:`DPI`,
no tight-bbox cropping); the layout engine keeps labels inside it.

Run-level plots (``plot_generation=all``): optimization history with best-so-far, parameter importances, parallel
coordinates, Pareto front (pareto mode), timeline of trials per worker. Best-trial plots (``all`` and ``best``):
training curves, confusion matrix on the test set, health breakdown, gradient flow, weight and bias distributions,
activation maps of the first conv layers. The model-based ones load ``best_model.keras`` (TensorFlow is imported
only then) and the dataset's untouched test split.

:func:`generate_plots` writes ``plots/<name>.png`` in the run folder and returns one :class:`PlotOutcome` per plot:
written (``path``) or skipped with a ``note`` saying why. A plot that fails is logged and skipped; it never fails
the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .results import CONFIG_FILE, MODEL_FILE, best_records, trial_records

__all__ = [
    "DPI",
    "PLOTS_DIR",
    "PlotOutcome",
    "PlotSkipped",
    "RunData",
    "load_run",
    "generate_plots",
    "objective_label",
    "history_data",
    "importance_data",
    "parallel_data",
    "pareto_data",
    "timeline_data",
    "curves_data",
    "health_data",
    "gradient_data",
    "confusion_data",
    "weights_data",
    "activation_data",
]

log = logging.getLogger(__name__)

DPI = 100
PLOTS_DIR = "plots"

_BLUE, _ORANGE, _GREEN, _RED, _GRAY, _PURPLE = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#8c8c8c", "#9467bd"
_STATE_COLORS = {"complete": _GREEN, "pruned": _ORANGE, "fail": _RED, "interrupted": _GRAY, "running": _BLUE}
_STATE_LABELS = {"complete": "completed", "pruned": "pruned", "fail": "failed", "interrupted": "interrupted",
                 "running": "running"}

CLASS_NAMES: dict[str, list[str]] = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "imdb": ["negative", "positive"],
    "synthetic_images": ["bar 0°", "bar 45°", "bar 90°", "bar 135°"],
}

HEALTH_ORDER = ("neuron_utilization", "gradient_health", "generalization", "training_stability", "convergence",
                "efficiency")


class PlotSkipped(Exception):
    """A plot that cannot be drawn for this run; the message says why (shown in the report)."""


@dataclass
class PlotOutcome:
    name: str
    title: str
    scope: str  # "run" or "best"
    path: Path | None = None
    size: tuple[int, int] | None = None  # (width, height) in pixels
    caption: str = ""
    note: str | None = None  # why it was skipped
    data: Any = field(default=None, repr=False)


# -- the run --------------------------------------------------------------------------------------------------------

@dataclass
class RunData:
    """Everything the plots read, loaded once."""

    run_dir: Path
    config: dict[str, Any]
    mode: str
    study: Any
    records: list[dict[str, Any]]
    best: dict[str, Any] | None
    front: list[dict[str, Any]]
    _model: Any = field(default=None, repr=False)
    _test: Any = field(default=None, repr=False)

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE

    def details(self, number: int) -> dict[str, Any]:
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return dict((t.user_attrs.get("result") or {}).get("details") or {})
        return {}

    def model(self) -> Any:
        if self._model is None:
            if not self.model_path.is_file():
                raise PlotSkipped(f"no {MODEL_FILE} in the run folder")
            if importlib.util.find_spec("tensorflow") is None:
                raise PlotSkipped("TensorFlow is not installed here; model plots need it")
            from .training import configure_tensorflow

            configure_tensorflow()
            import keras

            self._model = keras.models.load_model(self.model_path, compile=False)
        return self._model

    def test_split(self) -> tuple[np.ndarray, np.ndarray, Any]:
        if self._test is None:
            from . import datasets

            name = self.config["dataset"]
            options = datasets.default_options(name)
            for key in options:
                if self.config.get(key) is not None:
                    options[key] = self.config[key]
            data = datasets.load(name, options=options, validation_split=self.config.get("validation_split", 0.2),
                                 seed=self.config.get("seed", 42))
            self._test = (data.x_test, data.y_test, data.info)
        return self._test


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """TensorFlow's C++ start-up chatter (absl, CUDA probing) goes to file descriptor 2 and cannot be turned off
    from Python; after a run it is noise. Only done in the main thread (the CLI, a notebook), never in a server
    whose other threads write to stderr too. Python exceptions still propagate; logging happens outside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        sys.stderr.flush()
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real file behind stderr (some notebooks): nothing to hide
        yield
        return
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _load_study(run_dir: Path, doc: dict[str, Any]) -> Any:
    import optuna

    storage = doc["storage_url"]
    if "***" in storage:
        raise PlotSkipped(f"the study lives in {storage}; its password is not stored")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=doc["study_name"], storage=storage)


def load_run(run_dir: str | Path, *, study: Any = None) -> RunData:
    """Read a run folder (config.json and its study; pass ``study`` to reuse an open one)."""
    run_dir = Path(run_dir)
    doc = json.loads((run_dir / CONFIG_FILE).read_text())
    config = doc["config"]
    if study is None:
        study = _load_study(run_dir, doc)
    mode = config.get("mode", "simple")
    records = trial_records(study)
    best, front = best_records(study, records, mode)
    return RunData(run_dir, config, mode, study, records, best, front)


def objective_label(mode: str, health_weight: float | None = None) -> str:
    if mode == "health":
        w = 0.3 if health_weight is None else float(health_weight)
        return f"objective: {1 - w:g}·val accuracy + {w:g}·health"
    return "validation accuracy"


def _objective(record: dict[str, Any], mode: str) -> float | None:
    value = record.get("value")
    if isinstance(value, list):  # pareto: (val_accuracy, overall_health)
        return value[0] if value else None
    return value


def _complete(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["state"] == "complete" and r.get("value") is not None]


# -- data extraction --------------------------------------------------------------------------------------------------

def history_data(records: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Objective of every completed trial by trial number, and the best so far (monotonically non-decreasing)."""
    done = sorted(_complete(records), key=lambda r: r["number"])
    if not done:
        raise PlotSkipped("no trial completed")
    numbers = [r["number"] for r in done]
    values = [float(_objective(r, mode)) for r in done]
    best_so_far, best = [], -math.inf
    best_number = numbers[0]
    for n, v in zip(numbers, values):
        if v > best:
            best, best_number = v, n
        best_so_far.append(best)
    pruned = []
    if mode == "simple":  # only here is a pruned trial's validation accuracy on the objective's scale
        pruned = [(r["number"], r["val_accuracy"]) for r in records
                  if r["state"] == "pruned" and r.get("val_accuracy") is not None]
    return {"numbers": numbers, "values": values, "best_so_far": best_so_far, "best_number": best_number,
            "best_value": best, "pruned": pruned, "failed": [r["number"] for r in records if r["state"] == "fail"],
            "last_number": max(r["number"] for r in records)}


def importance_data(study: Any, mode: str) -> dict[str, Any]:
    """Parameter importances of the objective (validation accuracy in pareto mode) over the completed trials:
    fANOVA when scikit-learn is installed, otherwise Optuna's PED-ANOVA."""
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2:
        raise PlotSkipped(f"parameter importances need at least 2 completed trials; this run has {len(complete)}")
    if importlib.util.find_spec("sklearn") is not None:
        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    else:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    target = (lambda t: t.values[0]) if mode == "pareto" else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    except (RuntimeError, ValueError) as exc:
        raise PlotSkipped(f"Optuna could not compute importances: {exc}") from None
    if not importances:
        raise PlotSkipped("no parameter varies across the completed trials")
    items = sorted(importances.items(), key=lambda kv: -kv[1])
    return {"params": [k for k, _ in items], "importances": [float(v) for _, v in items], "evaluator": name,
            "n_trials": len(complete)}


def _param_order(names: set[str]) -> list[str]:
    from . import search_space

    order = [p.name for p in search_space.CNN_SPACE + search_space.LSTM_SPACE]
    known = [n for n in dict.fromkeys(order) if n in names]
    return known + sorted(names - set(known))


def parallel_data(records: list[dict[str, Any]], mode: str, distributions: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """One axis per varying parameter (values scaled to [0, 1]; log scale where the space is log; categories evenly
    spaced) plus the objective; one row per completed trial. An inactive parameter is NaN (a gap in its line)."""
    done = sorted(_complete(records), key=lambda r: r["number"])
    if not done:
        raise PlotSkipped("no trial completed")
    distributions = distributions or {}
    names = _param_order({k for r in done for k in r["params"]})
    axes, columns = [], []
    for name in names:
        raw = [r["params"].get(name) for r in done]
        present = [v for v in raw if v is not None]
        if len({json.dumps(v) for v in present}) < 2:
            continue  # constant (or pinned): nothing to compare
        dist = distributions.get(name)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present) and \
            not hasattr(dist, "choices")
        if numeric:
            log = bool(getattr(dist, "log", False)) and min(present) > 0
            lo = getattr(dist, "low", min(present)) if dist is not None else min(present)
            hi = getattr(dist, "high", max(present)) if dist is not None else max(present)
            f = (lambda v: math.log10(v)) if log else float
            span = (f(hi) - f(lo)) or 1.0
            col = [math.nan if v is None else (f(v) - f(lo)) / span for v in raw]
            ticks = [(0.0, _short(lo)), (1.0, _short(hi))]
            if log:
                ticks.insert(1, (0.5, _short(10 ** ((f(lo) + f(hi)) / 2))))
            else:
                ticks.insert(1, (0.5, _short((lo + hi) / 2)))
            axes.append({"name": name, "kind": "numeric", "log": log, "ticks": ticks})
        else:
            choices = list(getattr(dist, "choices", ())) or sorted(set(present), key=lambda v: json.dumps(v))
            pos = {json.dumps(c): (i / (len(choices) - 1) if len(choices) > 1 else 0.5)
                   for i, c in enumerate(choices)}
            col = [math.nan if v is None else pos.get(json.dumps(v), math.nan) for v in raw]
            axes.append({"name": name, "kind": "categorical", "log": False,
                         "ticks": [(pos[json.dumps(c)], _short(c)) for c in choices]})
        columns.append(col)
    values = [float(_objective(r, mode)) for r in done]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    columns.append([(v - lo) / span for v in values])
    axes.append({"name": "objective", "kind": "numeric", "log": False,
                 "ticks": [(0.0, f"{lo:.3f}"), (0.5, f"{(lo + hi) / 2:.3f}"), (1.0, f"{hi:.3f}")]})
    rows = [{"number": r["number"], "value": v, "coords": [c[i] for c in columns]}
            for i, (r, v) in enumerate(zip(done, values))]
    best_number = min(zip(values, done), key=lambda vr: (-vr[0], vr[1]["number"]))[1]["number"]
    return {"axes": axes, "rows": rows, "best_number": best_number, "objective": objective_label(mode)}


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.1e}"
        return f"{value:.3g}"
    return str(value)


def pareto_data(records: list[dict[str, Any]], front: list[dict[str, Any]], best: dict[str, Any] | None
                ) -> dict[str, Any]:
    """All completed trials as (val_accuracy, overall_health); the front sorted by accuracy."""
    points = [(r["number"], r["val_accuracy"], r["overall_health"]) for r in _complete(records)
              if r.get("val_accuracy") is not None and r.get("overall_health") is not None]
    if not points:
        raise PlotSkipped("no completed trial has both validation accuracy and overall health")
    front_pts = sorted(((r["number"], r["val_accuracy"], r["overall_health"]) for r in front),
                       key=lambda p: (p[1], -p[2]))
    return {"points": points, "front": front_pts, "best_number": best["number"] if best else None}


def _worker_label(executed_on: str | None) -> str:
    if not executed_on:
        return "(no worker)"
    return re.sub(r"\s*\(pid \d+\)\s*$", "", executed_on).strip() or executed_on


def timeline_data(study: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each finished trial's interval (seconds since the first start) on the worker that ran it, and the most
    trials that ran at the same time."""
    times = {t.number: (t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False)}
    bars = []
    for r in records:
        start, end = times.get(r["number"], (None, None))
        if start is None or end is None:
            continue
        bars.append({"number": r["number"], "worker": _worker_label(r.get("executed_on")), "state": r["state"],
                     "start": start, "end": end})
    if not bars:
        raise PlotSkipped("no trial has finished")
    t0 = min(b["start"] for b in bars)
    for b in bars:
        b["start_s"] = (b["start"] - t0).total_seconds()
        b["end_s"] = max(b["start_s"], (b["end"] - t0).total_seconds())
        del b["start"], b["end"]
    bars.sort(key=lambda b: (b["start_s"], b["number"]))
    workers = sorted({b["worker"] for b in bars}, key=_natural)
    steps = _concurrency_steps(bars)
    return {"workers": workers, "bars": bars, "steps": steps,
            "max_concurrency": max((c for _, c in steps), default=0), "t0": t0.isoformat(timespec="seconds")}


def _natural(text: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def _concurrency_steps(bars: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """(time, trials running from then on), ends before starts at equal times."""
    events = sorted([(b["start_s"], 1) for b in bars] + [(b["end_s"], -1) for b in bars], key=lambda e: (e[0], e[1]))
    steps, running = [], 0
    for t, delta in events:
        running += delta
        if steps and steps[-1][0] == t:
            steps[-1] = (t, running)
        else:
            steps.append((t, running))
    return steps


def curves_data(records: list[dict[str, Any]], mode: str, top_k: int = 3) -> dict[str, Any]:
    """Per-epoch history (loss, accuracy, val_loss, val_accuracy) of the ``top_k`` best completed trials."""
    done = [r for r in _complete(records) if r.get("history")]
    if not done:
        raise PlotSkipped("no completed trial has a training history")
    done.sort(key=lambda r: (-float(_objective(r, mode)), r["number"]))
    trials = [{"number": r["number"], "value": float(_objective(r, mode)), "best_epoch": r.get("best_epoch"),
               "history": {k: list(v) for k, v in r["history"].items()}} for r in done[:top_k]]
    return {"trials": trials, "objective": objective_label(mode)}


def health_data(best: dict[str, Any] | None) -> dict[str, Any]:
    """The best trial's health metrics in [0, 1]; a metric that could not be measured stays None (shown as such)."""
    if best is None:
        raise PlotSkipped("no trial completed")
    health = dict(best.get("health") or {})
    if not health:
        raise PlotSkipped("health was not measured for this run (mode=simple)")
    overall = health.pop("overall_health", None)
    names = [n for n in HEALTH_ORDER if n in health] + sorted(n for n in health if n not in HEALTH_ORDER)
    metrics = [(n, None if health[n] is None else float(health[n])) for n in names
               if health[n] is None or isinstance(health[n], (int, float))]
    return {"number": best["number"], "metrics": metrics, "overall": overall}


def _norm_value(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, list):
        nums = [v for v in (_norm_value(x) for x in value) if v is not None]
        return float(np.mean(nums)) if nums else None
    if isinstance(value, dict):
        for key in ("norm", "value", "mean", "l2"):
            if key in value:
                return _norm_value(value[key])
    return None


def gradient_data(details: dict[str, Any]) -> dict[str, Any]:
    """Per-layer gradient norms from the health measurement (``details["gradient_norms"]``): a mapping layer ->
    norm (or list of norms, averaged), or a list of ``{"layer"/"name": ..., "norm"/"value": ...}`` / pairs."""
    raw = (details or {}).get("gradient_norms")
    if not raw:
        raise PlotSkipped("the best trial has no per-layer gradient norms (measured with mode=health or pareto)")
    pairs: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            if isinstance(item, dict):
                label = item.get("layer") or item.get("name") or f"layer {i + 1}"
                pairs.append((str(label), item))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((str(item[0]), item[1]))
            else:
                pairs.append((f"layer {i + 1}", item))
    layers = [(name, _norm_value(v)) for name, v in pairs]
    if not any(v is not None for _, v in layers):
        raise PlotSkipped("the recorded gradient norms hold no numbers")
    return {"layers": [n for n, _ in layers], "norms": [v for _, v in layers]}


def confusion_data(model: Any, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                   batch_size: int = 256) -> dict[str, Any]:
    """Confusion matrix (rows: true class, columns: predicted class) of ``model`` on ``(x, y)``."""
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    pred = np.asarray(probs).argmax(axis=-1)
    y = np.asarray(y).astype(np.int64).ravel()
    matrix = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                             num_classes)
    return {"matrix": matrix, "accuracy": float(np.trace(matrix) / max(1, matrix.sum())), "n": int(matrix.sum())}


def _weight_layers(model: Any) -> list[Any]:
    import keras

    skip = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    return [layer for layer in model.layers if layer.weights and not isinstance(layer, skip)]


def weights_data(model: Any, max_layers: int = 12) -> dict[str, Any]:
    """Per layer with weights (normalization layers left out): all kernel values and all bias values."""
    layers = []
    for layer in _weight_layers(model)[:max_layers]:
        kernels, biases, shapes = [], [], []
        for w in layer.weights:
            arr = np.asarray(w.numpy(), dtype=np.float64)
            name = getattr(w, "path", None) or w.name
            if re.search(r"bias[^/]*$", name):
                biases.append(arr.ravel())
            else:
                kernels.append(arr.ravel())
                shapes.append("×".join(map(str, arr.shape)))
        layers.append({"layer": layer.name, "type": type(layer).__name__, "shapes": shapes,
                       "weights": np.concatenate(kernels) if kernels else np.zeros(0),
                       "biases": np.concatenate(biases) if biases else None})
    if not layers:
        raise PlotSkipped("the model has no layers with weights")
    return {"layers": layers}


def _conv_maps(model: Any, max_layers: int) -> list[tuple[Any, Any]]:
    """(conv layer, layer whose output is its activation map): the Activation right after it (through
    normalization), else the conv output itself."""
    import keras

    out, layers = [], model.layers
    for i, layer in enumerate(layers):
        if not isinstance(layer, keras.layers.Conv2D) or len(out) >= max_layers:
            continue
        target = layer
        for nxt in layers[i + 1:i + 3]:
            if isinstance(nxt, keras.layers.Activation):
                target = nxt
                break
            if not isinstance(nxt, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
                break
        out.append((layer, target))
    return out


def activation_data(model: Any, images: np.ndarray, *, labels: np.ndarray | None = None, max_layers: int = 2,
                    channels: int = 8) -> dict[str, Any]:
    """Activation maps of the first ``max_layers`` conv layers on ``images``: for each, an array
    (n_images, H, W, min(channels, filters))."""
    import keras

    convs = _conv_maps(model, max_layers)
    if not convs:
        raise PlotSkipped("the model has no convolution layers")
    probe = keras.Model(model.inputs, [target.output for _, target in convs])
    outputs = probe.predict(images, verbose=0)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    layers = []
    for (conv, _), out in zip(convs, outputs):
        out = np.asarray(out)
        layers.append({"layer": conv.name, "filters": int(out.shape[-1]), "maps": out[..., :channels]})
    return {"images": np.asarray(images), "labels": None if labels is None else [int(v) for v in labels],
            "layers": layers}


# -- rendering ---------------------------------------------------------------------------------------------------------

def _figure(width: float, height: float, **kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)
    return fig


def _save(fig: Any, path: Path) -> tuple[int, int]:
    fig.savefig(path, dpi=DPI, facecolor="white")
    w, h = fig.get_size_inches()
    return int(round(w * DPI)), int(round(h * DPI))


def render_history(data: dict[str, Any], path: Path, objective: str = "validation accuracy") -> tuple[int, int]:
    fig = _figure(10, 5.5)
    ax = fig.add_subplot()
    ax.scatter(data["numbers"], data["values"], color=_BLUE, s=40, zorder=5, label="completed trial")
    if data["pruned"]:
        ax.scatter([p[0] for p in data["pruned"]], [p[1] for p in data["pruned"]], color=_GRAY, marker="x", s=36,
                   zorder=2, label="pruned trial (val accuracy when stopped)")
    xs, ys = list(data["numbers"]), list(data["best_so_far"])
    if data.get("last_number", xs[-1]) > xs[-1]:  # carry the best on to the last trial
        xs.append(data["last_number"])
        ys.append(ys[-1])
    ax.step(xs, ys, where="post", color=_ORANGE, lw=2, label="best so far", zorder=4)
    ax.scatter([data["best_number"]], [data["best_value"]], marker="*", s=220, color=_RED, zorder=6,
               label=f"best: trial {data['best_number']} ({data['best_value']:.4f})")
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective)
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def render_importance(data: dict[str, Any], path: Path) -> tuple[int, int]:
    n = len(data["params"])
    fig = _figure(9, max(3.0, 0.45 * n + 1.6))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    ax.barh(y, data["importances"], color=_BLUE)
    ax.set_yticks(y, data["params"])
    for yi, v in zip(y, data["importances"]):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=9)
    ax.set_xlim(0, max(data["importances"]) * 1.18 or 1)
    ax.set_xlabel(f"importance ({data['evaluator']}, share of the objective's variance)")
    ax.set_ylabel("parameter")
    ax.set_title(f"Parameter importances over {data['n_trials']} completed trials")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def render_parallel(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    axes = data["axes"]
    k = len(axes)
    fig = _figure(min(12.0, max(9.0, 0.9 * k + 2.5)), 6.5)
    ax = fig.add_subplot()
    values = [r["value"] for r in data["rows"]]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = colormaps["viridis"]
    xs = np.arange(k)
    for r in sorted(data["rows"], key=lambda r: r["value"]):
        best = r["number"] == data["best_number"]
        ax.plot(xs, r["coords"], color=_RED if best else cmap(norm(r["value"])), lw=3 if best else 1.4,
                alpha=1.0 if best else 0.8, zorder=4 if best else 2, marker="o", ms=3)
    for i, a in enumerate(axes):
        ax.axvline(i, color="black", lw=0.8, zorder=1)
        for pos, label in a["ticks"]:
            ax.text(i + 0.04, pos, label, fontsize=9, va="center", ha="left", zorder=5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})
    ax.set_xticks(xs, [a["name"] + (" (log)" if a["log"] else "") for a in axes], rotation=30, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks([])
    ax.set_xlim(-0.2, k - 0.4)
    ax.set_ylim(-0.06, 1.06)
    ax.set_ylabel("value, scaled per axis (low → high)")
    ax.set_title(f"Parallel coordinates: parameters vs {data['objective']} (red: best, trial {data['best_number']})")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=data["objective"], pad=0.01)
    return _save(fig, path)


def render_pareto(data: dict[str, Any], path: Path) -> tuple[int, int]:
    fig = _figure(8.5, 6.5)
    ax = fig.add_subplot()
    front_numbers = {p[0] for p in data["front"]}
    others = [p for p in data["points"] if p[0] not in front_numbers]
    if others:
        ax.scatter([p[1] for p in others], [p[2] for p in others], color=_GRAY, s=36, label="completed trial")
    if data["front"]:
        ax.plot([p[1] for p in data["front"]], [p[2] for p in data["front"]], color=_ORANGE, lw=1.5, marker="o",
                ms=8, label="Pareto front", zorder=3)
        for n, x, y in data["front"]:
            ax.annotate(f"#{n}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    best = [p for p in data["points"] if p[0] == data["best_number"]]
    if best:
        ax.scatter([best[0][1]], [best[0][2]], marker="*", s=260, color=_RED, zorder=4,
                   label=f"selected: trial {best[0][0]}")
    ax.set_xlabel("validation accuracy")
    ax.set_ylabel("overall health")
    ax.set_title("Pareto front: validation accuracy vs overall health")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def render_timeline(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib.patches import Patch

    workers = data["workers"]
    fig = _figure(11, max(3.8, 0.55 * len(workers) + 2.8))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[max(2, len(workers)), 1.4])
    row = {w: i for i, w in enumerate(workers)}
    end = max(b["end_s"] for b in data["bars"]) or 1.0
    for b in data["bars"]:
        width = max(b["end_s"] - b["start_s"], end * 0.002)
        top.barh(row[b["worker"]], width, left=b["start_s"], height=0.6,
                 color=_STATE_COLORS.get(b["state"], _GRAY), edgecolor="black", lw=0.6)
        if width > end * 0.04:
            top.text(b["start_s"] + width / 2, row[b["worker"]], f"#{b['number']}", ha="center", va="center",
                     fontsize=9, color="white", fontweight="bold")
    top.set_yticks(range(len(workers)), workers)
    top.set_ylim(len(workers) - 0.5, -0.5)
    top.set_ylabel("worker")
    top.set_title(f"Trials per worker over time (at most {data['max_concurrency']} at once)")
    top.grid(axis="x", alpha=0.3)
    states = [s for s in _STATE_COLORS if any(b["state"] == s for b in data["bars"])]
    top.legend(handles=[Patch(color=_STATE_COLORS[s], label=_STATE_LABELS[s]) for s in states], fontsize=9,
               loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    steps = data["steps"]
    bottom.step([t for t, _ in steps], [c for _, c in steps], where="post", color=_BLUE, lw=1.8)
    bottom.fill_between([t for t, _ in steps], [c for _, c in steps], step="post", color=_BLUE, alpha=0.2)
    bottom.set_ylim(0, max(1, data["max_concurrency"]) + 0.5)
    bottom.yaxis.get_major_locator().set_params(integer=True)
    bottom.set_ylabel("running")
    bottom.set_xlabel("seconds since the first trial started")
    bottom.set_xlim(0, end * 1.01)
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def render_curves(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib.lines import Line2D

    fig = _figure(12, 5)
    ax_acc, ax_loss = fig.subplots(1, 2)
    colors = [_BLUE, _ORANGE, _GREEN, _PURPLE, _RED]
    handles = []
    for i, t in enumerate(data["trials"]):
        c = colors[i % len(colors)]
        h = t["history"]
        for ax, key in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            for prefix, style in (("", "--"), ("val_", "-")):
                series = h.get(prefix + key)
                if series:
                    epochs = np.arange(1, len(series) + 1)
                    ax.plot(epochs, [np.nan if v is None else v for v in series], style, color=c, marker="o", ms=3)
            if t.get("best_epoch") and h.get("val_" + key) and t["best_epoch"] <= len(h["val_" + key]):
                v = h["val_" + key][t["best_epoch"] - 1]
                if v is not None:
                    ax.scatter([t["best_epoch"]], [v], s=90, facecolors="none", edgecolors=c, lw=1.8, zorder=4)
        handles.append(Line2D([], [], color=c, label=f"trial {t['number']}: {data['objective']} {t['value']:.4f}"))
    handles += [Line2D([], [], color="black", ls="-", label="validation"),
                Line2D([], [], color="black", ls="--", label="training"),
                Line2D([], [], color="black", marker="o", ls="none", mfc="none", ms=9, label="best epoch")]
    for ax, key in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.set_title("Accuracy")
    ax_loss.set_title("Loss")
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle("Training curves of the best trial" + ("s" if len(data["trials"]) > 1 else ""))
    return _save(fig, path)


def render_confusion(data: dict[str, Any], path: Path) -> tuple[int, int]:
    m = data["matrix"]
    n = m.shape[0]
    labels = data.get("labels") or [str(i) for i in range(n)]
    side = min(10.5, max(6.5, 0.42 * n + 3.5))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{m[i, j]}", ha="center", va="center", fontsize=9 if n <= 10 else 7,
                        color="white" if share[i, j] > 0.55 else "black")
    step = max(1, math.ceil(n / 30))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45 if max(len(labels[i]) for i in ticks) > 2 else 0,
                  ha="right" if max(len(labels[i]) for i in ticks) > 2 else "center")
    ax.set_yticks(ticks, [labels[i] for i in ticks])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix of the best model (trial {data['number']}) on the test set\n"
                 f"{data['n']} samples, accuracy {data['accuracy']:.4f}; colour: share of the true class")
    fig.colorbar(im, ax=ax, label="share of the true class (recall)", shrink=0.8)
    return _save(fig, path)


def render_health(data: dict[str, Any], path: Path) -> tuple[int, int]:
    metrics = data["metrics"]
    n = len(metrics)
    fig = _figure(9, max(3.2, 0.55 * n + 1.8))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    for yi, (name, v) in zip(y, metrics):
        if v is None:
            ax.barh(yi, 1.0, color="white", edgecolor=_GRAY, hatch="//", lw=0.8)
            ax.text(0.02, yi, "not measured", ha="left", va="center", fontsize=9, color="#333",
                    bbox={"fc": "white", "ec": "none", "pad": 1})
        else:
            color = _GREEN if v >= 0.7 else (_ORANGE if v >= 0.4 else _RED)
            ax.barh(yi, v, color=color)
            inside = v > 0.85
            ax.text(v - 0.01 if inside else v + 0.01, yi, f"{v:.3f}", va="center", ha="right" if inside else "left",
                    fontsize=9, color="white" if inside else "black")
    if data["overall"] is not None:
        ax.axvline(data["overall"], color="black", ls="--", lw=1.2, label=f"overall health {data['overall']:.3f}")
        ax.legend(loc="lower right", fontsize=9)
    ax.set_yticks(y, [name.replace("_", " ") for name, _ in metrics])
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (0 = unhealthy, 1 = healthy)")
    ax.set_ylabel("health metric")
    ax.set_title(f"Model health of the best trial (trial {data['number']})")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def render_gradients(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from . import health

    low, high = getattr(health, "_GRAD_LOW", 1e-4), getattr(health, "_GRAD_HIGH", 10.0)
    n = len(data["layers"])
    fig = _figure(max(9.0, 0.7 * n + 3), 5.5)
    ax = fig.add_subplot()
    x = np.arange(n)
    norms = np.array([v if v is not None and v > 0 else np.nan for v in data["norms"]], dtype=float)
    finite = norms[np.isfinite(norms)]
    lo = min(low / 10, finite.min() / 3) if finite.size else low / 10
    hi = max(high * 10, finite.max() * 3) if finite.size else high * 10
    ax.axhspan(low, high, color=_GREEN, alpha=0.1, label=f"healthy range ({low:g} to {high:g})")
    ax.plot(x, norms, color=_BLUE, marker="o", ms=8, lw=1.8, label="gradient norm")
    for xi, v in zip(x, data["norms"]):
        if v is None or v <= 0:
            ax.text(xi, 0.03, "0 (no gradient)" if v == 0 else "not finite", ha="center", va="bottom", fontsize=9,
                    color=_RED, rotation=90, transform=ax.get_xaxis_transform())
        else:
            ax.annotate(f"{v:.2g}", (xi, v), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(x, data["layers"], rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("gradient L2 norm (log scale)")
    ax.set_title("Gradient flow of the best model: per-layer gradient norms on a training batch")
    ax.grid(axis="y", alpha=0.3, which="major")
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, path)


def render_weights(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib.ticker import MaxNLocator

    layers = data["layers"]
    n = len(layers)
    fig = _figure(11, 2.4 * n + 0.8)
    grid = fig.subplots(n, 2, squeeze=False)
    for (ax_w, ax_b), layer in zip(grid, layers):
        w = layer["weights"]
        shapes = layer["shapes"][0] if len(layer["shapes"]) == 1 else f"{len(layer['shapes'])} kernels"
        head = f"{layer['layer']} ({layer['type']})"
        if w.size:
            ax_w.hist(w, bins=60, color=_BLUE)
            ax_w.set_title(f"{head} weights: {shapes}, {w.size:,} values\nmean {w.mean():.3g}, std {w.std():.3g}",
                           fontsize=9)
            ax_w.xaxis.set_major_locator(MaxNLocator(6))
            ax_w.set_ylabel("count")
        else:
            _empty(ax_w, f"{head}: no weights")
        b = layer["biases"]
        if b is None or b.size == 0:
            _empty(ax_b, f"{layer['layer']}: no bias")
        else:
            ax_b.hist(b, bins=min(40, max(5, b.size // 2)), color=_ORANGE)
            ax_b.set_title(f"{head} biases: {b.size:,} values\nmean {b.mean():.3g}, std {b.std():.3g}", fontsize=9)
            ax_b.xaxis.set_major_locator(MaxNLocator(6))
            ax_b.set_ylabel("count")
    grid[-1][0].set_xlabel("weight value")
    grid[-1][1].set_xlabel("bias value")
    fig.suptitle("Weight and bias distributions per layer of the best model")
    return _save(fig, path)


def _empty(ax: Any, title: str) -> None:
    ax.text(0.5, 0.5, title.split(": ", 1)[-1], ha="center", va="center", transform=ax.transAxes, color=_GRAY)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def render_activations(data: dict[str, Any], path: Path, class_names: list[str] | None = None) -> tuple[int, int]:
    images, layers = data["images"], data["layers"]
    channels = max(layer["maps"].shape[-1] for layer in layers)
    rows = len(images) * len(layers)
    fig = _figure(1.25 * (channels + 1) + 0.6, 1.35 * rows + 0.9)
    grid = fig.subplots(rows, channels + 1, squeeze=False)
    for ax in grid.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for i, image in enumerate(images):
        for j, layer in enumerate(layers):
            r = i * len(layers) + j
            first = grid[r][0]
            if j == 0:
                img = image if image.shape[-1] == 3 else image[..., 0]
                first.imshow(np.clip(img, 0, 1), cmap=None if image.shape[-1] == 3 else "gray")
                label = ""
                if data.get("labels") is not None:
                    y = data["labels"][i]
                    label = f" ({class_names[y]})" if class_names and y < len(class_names) else f" (class {y})"
                first.set_title(f"test image {i + 1}{label}", fontsize=8)
            else:
                first.axis("off")
            maps = layer["maps"][i]
            for c in range(channels):
                ax = grid[r][c + 1]
                if c < maps.shape[-1]:
                    ax.imshow(maps[..., c], cmap="viridis")
                else:
                    ax.axis("off")
                if r == 0:
                    ax.set_title(f"filter {c + 1}", fontsize=8)
            grid[r][1].set_ylabel(f"{layer['layer']}\n({layer['filters']} filters)", fontsize=8)
    fig.suptitle("Activation maps of the first convolution layers (after activation) on test images")
    return _save(fig, path)


# -- the plots of a run ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    scope: str  # run | best
    applies: Callable[[RunData], bool]
    make: Callable[[RunData, Path, str], tuple[Any, tuple[int, int], str]]  # (data, size, caption)
    needs_model: bool = False


def _make_history(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = history_data(run.records, run.mode)
    label = objective_label(run.mode, run.config.get("health_weight"))
    return data, render_history(data, path, label), (
        f"{label} of each completed trial and the best so far; best: trial {data['best_number']} "
        f"({data['best_value']:.4f}).")


def _make_importance(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = importance_data(run.study, run.mode)
    return data, render_importance(data, path), (
        f"How much each parameter explains the objective ({data['evaluator']}, {data['n_trials']} completed "
        "trials; few trials make this rough).")


def _distributions(study: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for k, d in t.distributions.items():
            if k not in out or len(getattr(d, "choices", ())) > len(getattr(out[k], "choices", ())):
                out[k] = d
    return out


def _make_parallel(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = parallel_data(run.records, run.mode, _distributions(run.study))
    if len(data["axes"]) < 2:
        raise PlotSkipped("no parameter varies across the completed trials")
    return data, render_parallel(data, path), (
        "Each line is a completed trial through its parameter values (scaled per axis) to its objective; "
        "gaps are parameters the trial did not use.")


def _make_pareto(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = pareto_data(run.records, run.front, run.best)
    return data, render_pareto(data, path), (
        f"Trials by validation accuracy and overall health; the front has {len(data['front'])} trial(s).")


def _make_timeline(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = timeline_data(run.study, run.records)
    return data, render_timeline(data, path), (
        f"When each trial ran and where; up to {data['max_concurrency']} trial(s) ran at the same time on "
        f"{len(data['workers'])} worker(s).")


def _make_curves(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = curves_data(run.records, run.mode, top_k=1 if which == "best" else 3)
    return data, render_curves(data, path), "Per-epoch training (dashed) and validation (solid) accuracy and loss."


def _class_names(run: RunData, n: int) -> list[str]:
    names = CLASS_NAMES.get(run.config.get("dataset", ""))
    return names if names and len(names) == n else [str(i) for i in range(n)]


def _make_confusion(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    model = run.model()
    x, y, info = run.test_split()
    data = confusion_data(model, x, y, info.num_classes)
    data.update(number=run.best["number"] if run.best else "?", labels=_class_names(run, info.num_classes),
                reported_accuracy=run.best.get("test_accuracy") if run.best else None)
    reported = data["reported_accuracy"]
    also = ""
    if reported is not None and abs(reported - data["accuracy"]) >= 5e-4:
        also = (f" (the trial itself reported {reported:.4f}: recomputed in another process, near-tied predictions "
                "can flip)")
    return data, render_confusion(data, path), (
        f"The best model on the untouched test split ({data['n']} samples): accuracy {data['accuracy']:.4f}{also}.")


def _make_health(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = health_data(run.best)
    return data, render_health(data, path), "Measured health metrics of the best trial (higher is healthier)."


def _make_gradients(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    if run.best is None:
        raise PlotSkipped("no trial completed")
    data = gradient_data(run.details(run.best["number"]))
    return data, render_gradients(data, path), (
        "Per-layer gradient norms of the best trial; very small norms mean vanishing gradients, very large "
        "ones exploding gradients.")


def _make_weights(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = weights_data(run.model())
    return data, render_weights(data, path), "Distributions of the best model's weights and biases, per layer."


def _make_activations(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    model = run.model()
    x, y, info = run.test_split()
    # the first test image of each of the first classes: a few different images, always the same ones
    picks = [int(np.flatnonzero(y == c)[0]) for c in np.unique(y)[:3]]
    data = activation_data(model, x[picks], labels=y[picks])
    names = _class_names(run, info.num_classes)
    return data, render_activations(data, path, names), (
        "What the first convolution layers respond to on a few test images (first 8 filters each).")


def _has_best(run: RunData) -> bool:
    return run.best is not None


PLOTS: tuple[_Spec, ...] = (
    _Spec("history", "Optimization history", "run", lambda run: True, _make_history),
    _Spec("importance", "Parameter importances", "run", lambda run: True, _make_importance),
    _Spec("parallel", "Parallel coordinates", "run", lambda run: True, _make_parallel),
    _Spec("pareto", "Pareto front", "run", lambda run: run.mode == "pareto", _make_pareto),
    _Spec("timeline", "Trials per worker", "run", lambda run: True, _make_timeline),
    _Spec("curves", "Training curves", "best", _has_best, _make_curves),
    _Spec("confusion", "Confusion matrix (test set)", "best", _has_best, _make_confusion, True),
    _Spec("health", "Health breakdown", "best", lambda run: run.best is not None and run.mode != "simple",
          _make_health),
    _Spec("gradients", "Gradient flow", "best", _has_best, _make_gradients),
    _Spec("weights", "Weight and bias distributions", "best", _has_best, _make_weights, True),
    _Spec("activations", "Activation maps", "best",
          lambda run: run.best is not None and run.config.get("dataset") is not None
          and _modality(run.config["dataset"]) == "image", _make_activations, True),
)

PLOT_NAMES = tuple(s.name for s in PLOTS)


def _modality(dataset: str) -> str | None:
    from . import datasets

    try:
        return datasets.info(dataset).modality
    except Exception:  # noqa: BLE001
        return None


def generate_plots(run_dir: str | Path, *, which: str = "all", study: Any = None,
                   run: RunData | None = None) -> list[PlotOutcome]:
    """Write the plots of a run folder under ``plots/``; ``which`` is ``all``, ``best`` or ``none``."""
    if which not in ("all", "best", "none"):
        raise ValueError(f"which={which!r}; allowed: all, best, none")
    if which == "none":
        return []
    run = run or load_run(run_dir, study=study)
    folder = run.run_dir / PLOTS_DIR
    folder.mkdir(exist_ok=True)
    outcomes = []
    for spec in PLOTS:
        if (which == "best" and spec.scope != "best") or not spec.applies(run):
            continue
        path = folder / f"{spec.name}.png"
        path.unlink(missing_ok=True)  # nothing stale from an earlier generation
        outcome = PlotOutcome(spec.name, spec.title, spec.scope)
        try:
            with _native_stderr_silenced() if spec.needs_model else contextlib.nullcontext():
                data, size, caption = spec.make(run, path, which)
            outcome.path, outcome.size, outcome.caption, outcome.data = path, size, caption, data
        except PlotSkipped as exc:
            outcome.note = str(exc)
        except Exception as exc:  # noqa: BLE001 - a plot never fails the run
            log.warning("plot %s failed: %s: %s", spec.name, type(exc).__name__, exc, exc_info=True)
            outcome.note = f"failed: {type(exc).__name__}: {exc}"
            path.unlink(missing_ok=True)
        outcomes.append(outcome)
    return outcomes
