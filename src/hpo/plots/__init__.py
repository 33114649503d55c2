"""Plots of a run: each is a data-extraction function (plain data, tested) plus a matplotlib renderer.

    data.py      the numbers, from the run's study and folder (no matplotlib, no Keras)
    render.py    matplotlib renderers (bare Agg figures, fixed PNG sizes)
    model.py     the plots that need the best Keras model (confusion matrix, weights, activation maps), drawn in a
                 process of their own (``python -m hpo.plots``)
    generate.py  the plots of a run in report order, and :func:`generate_plots`

:func:`generate_plots` writes ``plots/<name>.png`` in the run folder and returns one :class:`PlotOutcome` per plot:
written (``path``) or skipped with a ``note`` saying why. A plot that fails is logged and skipped; it never fails
the run. Importing this package loads neither TensorFlow nor Keras, and neither does :func:`generate_plots`.
"""

from __future__ import annotations

from . import data, generate, model, render
from .data import (
    HEALTH_ORDER,
    PLOTS_DIR,
    PlotOutcome,
    PlotSkipped,
    RunData,
    curves_data,
    gradient_data,
    health_data,
    history_data,
    importance_data,
    load_run,
    objective_label,
    parallel_data,
    param_distributions,
    pareto_data,
    timeline_data,
)
from .generate import MODEL_PLOTS_TIMEOUT_S, PLOT_NAMES, PLOTS, generate_plots
from .model import CLASS_NAMES, MODEL_PLOTS, ModelRun, activation_data, confusion_data, weights_data
from .render import DPI

__all__ = [
    "DPI",
    "PLOTS_DIR",
    "PLOTS",
    "PLOT_NAMES",
    "MODEL_PLOTS",
    "MODEL_PLOTS_TIMEOUT_S",
    "CLASS_NAMES",
    "HEALTH_ORDER",
    "PlotOutcome",
    "PlotSkipped",
    "RunData",
    "ModelRun",
    "load_run",
    "generate_plots",
    "objective_label",
    "history_data",
    "importance_data",
    "param_distributions",
    "parallel_data",
    "pareto_data",
    "timeline_data",
    "curves_data",
    "health_data",
    "gradient_data",
    "confusion_data",
    "weights_data",
    "activation_data",
    "data",
    "render",
    "model",
    "generate",
]
