"""The plots of a run, in the order the report shows them, and :func:`generate_plots`, which writes them.

Run-level plots (``plot_generation=all``): optimization history with best-so-far, parameter importances, parallel
coordinates, Pareto front (pareto mode), timeline of trials per worker. Best-trial plots (``all`` and ``best``):
training curves, confusion matrix on the test set, health breakdown, gradient flow, weight and bias distributions,
activation maps of the first conv layers (image datasets).

The plots of :mod:`hpo.plots.model` (confusion matrix, weight distributions, activation maps) are drawn by a process
of their own (``python -m hpo.plots``), which loads ``best_model.keras`` and the dataset's untouched test split, while
this process draws the others; so the caller (the REST API server, a notebook) never imports TensorFlow. If that
process fails or hangs, its plots are skipped with the reason, logged, and listed in the report; the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import catalog
from ..exceptions import HPOError
from ..redact import mask_text
from ..scoring import GRADIENT_HEALTHY_RANGE
from . import data as D
from . import render as R
from .data import PLOTS_DIR, PlotOutcome, PlotSkipped, RunData, load_run
from .model import MODEL_PLOTS

__all__ = ["PLOTS", "PLOT_NAMES", "MODEL_PLOTS_TIMEOUT_S", "generate_plots", "ModelPlotProcess"]

log = logging.getLogger("hpo.plots")

#: the longest the model-plot process may take (loading TensorFlow, the test split, predicting on it)
MODEL_PLOTS_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    scope: str  # run | best
    applies: Callable[[RunData], bool]
    make: Callable[[RunData, Path, str], tuple[Any, tuple[int, int], str]] | None  # None: drawn by the model process


def _make_history(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = D.history_data(run.records, run.mode)
    label = D.objective_label(run.mode, run.config.get("health_weight"))
    return data, R.render_history(data, path, label), (
        f"{label} of each completed trial and the best so far; best: trial {data['best_number']} "
        f"({data['best_value']:.4f}).")


def _make_importance(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = D.importance_data(run.study, run.mode)
    return data, R.render_importance(data, path), (
        f"How much each parameter explains the objective ({data['evaluator']}, {data['n_trials']} completed "
        "trials; few trials make this rough).")


def _make_parallel(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = D.parallel_data(run.records, run.mode, D.param_distributions(run.study))
    if len(data["axes"]) < 2:
        raise PlotSkipped("no parameter varies across the completed trials")
    return data, R.render_parallel(data, path), (
        "Each line is a completed trial through its parameter values (scaled per axis) to its objective; "
        "gaps are parameters the trial did not use.")


def _make_pareto(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = D.pareto_data(run.records, run.front, run.best)
    return data, R.render_pareto(data, path), (
        f"Trials by validation accuracy and overall health; the front has {len(data['front'])} trial(s).")


def _make_timeline(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = D.timeline_data(run.study, run.records)
    return data, R.render_timeline(data, path), (
        f"When each trial ran and where; up to {data['max_concurrency']} trial(s) ran at the same time on "
        f"{len(data['workers'])} worker(s).")


def _make_curves(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = D.curves_data(run.records, run.mode, top_k=1 if which == "best" else 3)
    return data, R.render_curves(data, path), "Per-epoch training (dashed) and validation (solid) accuracy and loss."


def _make_health(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    data = D.health_data(run.best)
    return data, R.render_health(data, path), "Measured health metrics of the best trial (higher is healthier)."


def _make_gradients(run: RunData, path: Path, which: str) -> tuple[Any, tuple[int, int], str]:
    if run.best is None:
        raise PlotSkipped("no trial completed")
    data = D.gradient_data(run.details(run.best["number"]))
    return data, R.render_gradients(data, path, GRADIENT_HEALTHY_RANGE), (
        "Per-layer gradient norms of the best trial; very small norms mean vanishing gradients, very large "
        "ones exploding gradients.")


def _has_best(run: RunData) -> bool:
    return run.best is not None


def _image_run(run: RunData) -> bool:
    """Activation maps are for image models only."""
    dataset = run.config.get("dataset")
    own_info = run.config.get("data_info")
    if isinstance(own_info, dict):  # own data: its recorded description
        return run.best is not None and own_info.get("modality") == "image"
    try:
        return run.best is not None and dataset is not None and catalog.info(dataset).modality == "image"
    except HPOError:  # a dataset this version does not know: no activation maps
        return False


def _model_plot(name: str, applies: Callable[[RunData], bool] = _has_best) -> _Spec:
    """A plot of :mod:`hpo.plots.model`, drawn by the model-plot process."""
    return _Spec(name, MODEL_PLOTS[name], "best", applies, None)


PLOTS: tuple[_Spec, ...] = (
    _Spec("history", "Optimization history", "run", lambda run: True, _make_history),
    _Spec("importance", "Parameter importances", "run", lambda run: True, _make_importance),
    _Spec("parallel", "Parallel coordinates", "run", lambda run: True, _make_parallel),
    _Spec("pareto", "Pareto front", "run", lambda run: run.mode == "pareto", _make_pareto),
    _Spec("timeline", "Trials per worker", "run", lambda run: True, _make_timeline),
    _Spec("curves", "Training curves", "best", _has_best, _make_curves),
    _model_plot("confusion"),
    _Spec("health", "Health breakdown", "best", lambda run: run.best is not None and run.mode != "simple",
          _make_health),
    _Spec("gradients", "Gradient flow", "best", _has_best, _make_gradients),
    _model_plot("weights"),
    _model_plot("activations", _image_run),
)

PLOT_NAMES = tuple(s.name for s in PLOTS)


class ModelPlotProcess:
    """The model plots ``names`` of ``run``, drawn by ``python -m hpo.plots`` in a process of its own (``process``),
    started at once; :meth:`outcomes` waits for it, at most ``timeout_s`` (default :data:`MODEL_PLOTS_TIMEOUT_S`).
    Its errors never propagate: when it cannot start or fails, every requested plot comes back skipped with the
    reason, which is also logged."""

    def __init__(self, run: RunData, names: list[str], *, timeout_s: float | None = None) -> None:
        self.names = list(names)
        self.timeout_s = MODEL_PLOTS_TIMEOUT_S if timeout_s is None else timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._start_error: str | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="hpo-model-plots-")
        folder = Path(self._tmp.name)
        self._request, self._result = folder / "request.json", folder / "result.pickle"
        self._log_path = folder / "process.log"
        self._log = open(self._log_path, "wb")
        try:
            request = {"run_dir": str(Path(run.run_dir).resolve()), "config": run.config, "best": run.best,
                       "plots": self.names}
            self._request.write_text(json.dumps(request), encoding="utf-8")
            env = dict(os.environ)
            # the same hpo as this process, however it was found (installed, PYTHONPATH, a notebook's sys.path)
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            env["MPLBACKEND"] = "Agg"
            # stdin stays open while we wait: the process exits when it closes (when this process is gone)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hpo.plots", "--request", str(self._request), "--result", str(self._result),
                 "--exit-with-stdin"], stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        except Exception as exc:  # noqa: BLE001 - no model plots, but the others and the report still come
            self._start_error = f"could not start ({type(exc).__name__}: {exc})"

    def outcomes(self) -> list[PlotOutcome]:
        """Wait for the process; its outcomes, or every requested plot skipped with the reason."""
        try:
            if self.process is None:
                return self._skipped(self._start_error or "did not start")
            try:
                code = self.process.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                return self._skipped(f"did not finish within {self.timeout_s:g} s")
            if code != 0 or not self._result.is_file():
                output = self._output()
                return self._skipped(f"exited with code {code}" + (f"; its output: {output}" if output else ""))
            try:
                with open(self._result, "rb") as fh:  # written by our own child, in our private temp folder
                    raw = pickle.load(fh)
                out = [PlotOutcome(r["name"], r["title"], r["scope"], None if r["path"] is None else Path(r["path"]),
                                   None if r["size"] is None else tuple(r["size"]), r["caption"], r["note"],
                                   r["data"]) for r in raw]
            except Exception as exc:  # noqa: BLE001
                return self._skipped(f"left an unreadable result ({type(exc).__name__}: {exc})")
            failed = [o for o in out if o.note and o.note.startswith("failed: ")]
            for o in failed:
                log.warning("plot %s failed in the model-plot process: %s", o.name, o.note[len("failed: "):])
            if failed:
                log.warning("the model-plot process's output:\n%s", self._output() or "(none)")
            return out
        finally:  # interrupted (Ctrl-C) too: the process goes with us
            self.abort()

    def abort(self) -> None:
        """Stop the process (if it still runs) and remove its files; its plots are not collected."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            if self.process.stdin is not None:
                try:
                    self.process.stdin.close()
                except OSError:
                    pass
        self._log.close()
        self._tmp.cleanup()

    def _skipped(self, reason: str) -> list[PlotOutcome]:
        reason = mask_text(reason)
        log.warning("model plots (%s) skipped: the model-plot process %s", ", ".join(self.names), reason)
        return [PlotOutcome(n, MODEL_PLOTS[n], "best", note=f"skipped: the model-plot process {reason}")
                for n in self.names]

    def _output(self, limit: int = 3000) -> str:
        """The end of what the process wrote (stdout and stderr), secrets masked."""
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
        return mask_text(text[-limit:])


def generate_plots(run_dir: str | Path, *, which: str = "all", study: Any = None,
                   run: RunData | None = None) -> list[PlotOutcome]:
    """Write the plots of a run folder under ``plots/``; ``which`` is ``all``, ``best`` or ``none``. Returns one
    :class:`PlotOutcome` per plot that applies: written (``path``) or skipped with a ``note`` saying why."""
    if which not in ("all", "best", "none"):
        raise ValueError(f"which={which!r}; allowed: all, best, none")
    if which == "none":
        return []
    run = run or load_run(run_dir, study=study)
    folder = run.run_dir / PLOTS_DIR
    folder.mkdir(exist_ok=True)
    specs = [s for s in PLOTS if (which != "best" or s.scope == "best") and s.applies(run)]
    for spec in specs:
        (folder / f"{spec.name}.png").unlink(missing_ok=True)  # nothing stale from an earlier generation
    elsewhere = [s.name for s in specs if s.make is None]
    process = ModelPlotProcess(run, elsewhere) if elsewhere else None
    try:  # this process draws its plots while the other draws the model's
        drawn = {s.name: D.attempt(s.name, s.title, s.scope, folder / f"{s.name}.png",
                                   lambda path, s=s: s.make(run, path, which)) for s in specs if s.make is not None}
    except BaseException:  # interrupted (a plot itself never raises): the other process goes too
        if process is not None:
            process.abort()
        raise
    if process is not None:
        drawn.update({o.name: o for o in process.outcomes()})
    return [drawn[s.name] for s in specs]
