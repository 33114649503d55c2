"""The plots that need the best trial's Keras model: confusion matrix on the untouched test split, weight and bias
distributions, activation maps of the first conv layers.

They are drawn where the model can be loaded: in a process of their own, started by :func:`hpo.plots.generate_plots`
as ``python -m hpo.plots --request REQUEST.json --result RESULT.pickle``, so that the process that asked (the
REST API server, a notebook, the CLI) never imports TensorFlow. The request carries what the plots need from the run
(config, best trial); the result is one outcome per plot (PNG path, size, caption, data, or why it was skipped).
Importing this module is light: Keras and the dataset loaders are imported only inside the functions that draw.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pickle
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..results import MODEL_FILE
from . import render
from .data import PLOTS_DIR, PlotOutcome, PlotSkipped, attempt

__all__ = [
    "CLASS_NAMES",
    "MODEL_PLOTS",
    "ModelRun",
    "confusion_data",
    "weights_data",
    "activation_data",
    "make_model_plots",
    "main",
]

# TODO(catalog): class names are dataset metadata (hpo.catalog)
CLASS_NAMES: dict[str, list[str]] = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "imdb": ["negative", "positive"],
    "synthetic_images": ["bar 0°", "bar 45°", "bar 90°", "bar 135°"],
}

#: name -> title of the plots drawn here, in the order the report shows them
MODEL_PLOTS: dict[str, str] = {
    "confusion": "Confusion matrix (test set)",
    "weights": "Weight and bias distributions",
    "activations": "Activation maps",
}


@dataclass
class ModelRun:
    """What the model plots read: the run's config (config.json's ``config``) and its best trial record. The model
    and the test split are loaded once, on first use."""

    run_dir: Path
    config: dict[str, Any]
    best: dict[str, Any]
    _model: Any = field(default=None, repr=False)
    _test: Any = field(default=None, repr=False)

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE

    def model(self) -> Any:
        if self._model is None:
            if not self.model_path.is_file():
                raise PlotSkipped(f"no {MODEL_FILE} in the run folder")
            if importlib.util.find_spec("tensorflow") is None:
                raise PlotSkipped("TensorFlow is not installed here; model plots need it")
            from ..training import configure_tensorflow

            configure_tensorflow()
            import keras

            self._model = keras.models.load_model(self.model_path, compile=False)
        return self._model

    def test_split(self) -> tuple[np.ndarray, np.ndarray, Any]:
        if self._test is None:
            from .. import catalog, datasets

            sha = self.config.get("data_sha256")
            if sha:  # own data: the prepared file in the run folder (data/<sha256>.npz)
                from ..datasets.custom import load_custom

                path = self.run_dir / "data" / f"{sha}.npz"
                data = load_custom(path.resolve().as_uri(), sha,
                                   validation_split=self.config.get("validation_split", 0.2),
                                   seed=self.config.get("seed", 42), data_fraction=1.0)
                self._test = (data.x_test, data.y_test, data.info)
                return self._test
            name = self.config["dataset"]
            options = catalog.default_options(name)
            for key in options:
                if self.config.get(key) is not None:
                    options[key] = self.config[key]
            data = datasets.load(name, options=options, validation_split=self.config.get("validation_split", 0.2),
                                 seed=self.config.get("seed", 42))
            self._test = (data.x_test, data.y_test, data.info)
        return self._test


# -- data extraction ---------------------------------------------------------------------------------------------------

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


# -- the plots ---------------------------------------------------------------------------------------------------------

def _class_names(run: ModelRun, n: int) -> list[str]:
    """A built-in dataset's class names, or those kept from own data (config.json's data_info), else 0..n-1."""
    names = CLASS_NAMES.get(run.config.get("dataset", "")) or (run.config.get("data_info") or {}).get("class_names")
    return [str(c) for c in names] if isinstance(names, list) and len(names) == n else [str(i) for i in range(n)]


def _make_confusion(run: ModelRun, path: Path) -> tuple[Any, tuple[int, int], str]:
    model = run.model()
    x, y, info = run.test_split()
    data = confusion_data(model, x, y, info.num_classes)
    data.update(number=run.best["number"], labels=_class_names(run, info.num_classes),
                reported_accuracy=run.best.get("test_accuracy"))
    reported = data["reported_accuracy"]
    also = ""
    if reported is not None and abs(reported - data["accuracy"]) >= 5e-4:
        also = (f" (the trial itself reported {reported:.4f}: recomputed in another process, near-tied predictions "
                "can flip)")
    return data, render.render_confusion(data, path), (
        f"The best model on the untouched test split ({data['n']} samples): accuracy {data['accuracy']:.4f}{also}.")


def _make_weights(run: ModelRun, path: Path) -> tuple[Any, tuple[int, int], str]:
    data = weights_data(run.model())
    return data, render.render_weights(data, path), "Distributions of the best model's weights and biases, per layer."


def _make_activations(run: ModelRun, path: Path) -> tuple[Any, tuple[int, int], str]:
    model = run.model()
    x, y, info = run.test_split()
    # the first test image of each of the first classes: a few different images, always the same ones
    picks = [int(np.flatnonzero(y == c)[0]) for c in np.unique(y)[:3]]
    data = activation_data(model, x[picks], labels=y[picks])
    names = _class_names(run, info.num_classes)
    return data, render.render_activations(data, path, names), (
        "What the first convolution layers respond to on a few test images (first 8 filters each).")


_MAKERS: dict[str, Callable[[ModelRun, Path], tuple[Any, tuple[int, int], str]]] = {
    "confusion": _make_confusion, "weights": _make_weights, "activations": _make_activations}


def make_model_plots(run: ModelRun, names: list[str] | None = None) -> list[PlotOutcome]:
    """Draw the model plots ``names`` (default: all) into ``run_dir/plots/``, in this process (which then imports
    TensorFlow when the model is there). A plot that cannot be drawn is an outcome with a note; a plot that fails is
    logged and skipped."""
    folder = run.run_dir / PLOTS_DIR
    folder.mkdir(exist_ok=True)
    outcomes = []
    for name in names if names is not None else list(MODEL_PLOTS):
        if name not in MODEL_PLOTS:
            raise ValueError(f"unknown model plot {name!r}; allowed: {', '.join(MODEL_PLOTS)}")
        make = _MAKERS[name]
        outcomes.append(attempt(name, MODEL_PLOTS[name], "best", folder / f"{name}.png", lambda p, m=make: m(run, p)))
    return outcomes


# -- the process of its own --------------------------------------------------------------------------------------------

def _exit_when_stdin_closes() -> None:
    """The parent holds our stdin open while it waits; when it goes away (killed, interrupted), so do we."""
    def watch() -> None:
        try:
            while os.read(0, 65536):  # the raw descriptor: no lock for interpreter shutdown to trip over
                pass
        except OSError:
            pass
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m hpo.plots --request REQUEST.json --result RESULT.pickle``: draw the requested model plots
    and write their outcomes (a list of dicts) to RESULT."""
    parser = argparse.ArgumentParser(prog="python -m hpo.plots", description=main.__doc__)
    parser.add_argument("--request", required=True, type=Path,
                        help="JSON: run_dir, config, best (the best trial's record), plots (names)")
    parser.add_argument("--result", required=True, type=Path, help="where to write the outcomes (pickle)")
    parser.add_argument("--exit-with-stdin", action="store_true", help="exit when stdin closes (the parent is gone)")
    args = parser.parse_args(argv)
    if args.exit_with_stdin:
        _exit_when_stdin_closes()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    request = json.loads(args.request.read_text(encoding="utf-8"))
    run = ModelRun(Path(request["run_dir"]), request["config"], request["best"])
    outcomes = make_model_plots(run, request.get("plots"))
    result = [{"name": o.name, "title": o.title, "scope": o.scope, "path": None if o.path is None else str(o.path),
               "size": o.size, "caption": o.caption, "note": o.note, "data": o.data} for o in outcomes]
    tmp = args.result.with_name(args.result.name + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, args.result)
    return 0

