"""The numbers behind a run's plots, read from its study and run folder: plain lists and dicts, no matplotlib, no
Keras. Each ``*_data`` function raises :class:`PlotSkipped` (with the reason shown in the report) when its plot
cannot be drawn for this run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import catalog
from ..results import MODEL_FILE, best_records, trial_records
from ..scoring import COMPONENTS

__all__ = [
    "PLOTS_DIR",
    "HEALTH_ORDER",
    "PlotSkipped",
    "PlotOutcome",
    "attempt",
    "RunData",
    "load_run",
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
]

log = logging.getLogger("hpo.plots")

PLOTS_DIR = "plots"

HEALTH_ORDER = COMPONENTS  # the health breakdown's order: the components of overall_health


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


def attempt(name: str, title: str, scope: str, path: Path,
            make: Callable[[Path], tuple[Any, tuple[int, int], str]]) -> PlotOutcome:
    """Draw one plot: ``make(path)`` returns (data, size, caption). Skipped with the reason when it raises
    :class:`PlotSkipped`; any other error is logged and the plot skipped too (a plot never fails the run)."""
    path.unlink(missing_ok=True)  # nothing stale from an earlier generation
    outcome = PlotOutcome(name, title, scope)
    try:
        data, size, caption = make(path)
        outcome.path, outcome.size, outcome.caption, outcome.data = path, size, caption, data
    except PlotSkipped as exc:
        outcome.note = str(exc)
    except Exception as exc:  # noqa: BLE001 - a plot never fails the run
        log.warning("plot %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=True)
        outcome.note = f"failed: {type(exc).__name__}: {exc}"
        path.unlink(missing_ok=True)
    return outcome


# -- the run --------------------------------------------------------------------------------------------------------

@dataclass
class RunData:
    """Everything the plots read, loaded once (``doc``: the run folder's config.json)."""

    run_dir: Path
    config: dict[str, Any]
    mode: str
    study: Any
    records: list[dict[str, Any]]
    best: dict[str, Any] | None
    front: list[dict[str, Any]]
    doc: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE

    def details(self, number: int) -> dict[str, Any]:
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return dict((t.user_attrs.get("result") or {}).get("details") or {})
        return {}


def load_run(run_dir: str | Path, *, study: Any = None) -> RunData:
    """Read a run folder (config.json and its study; pass ``study`` to reuse an open one)."""
    from ..exceptions import ConfigError
    from ..rundir import open_run_study, read_config_doc

    run_dir = Path(run_dir)
    if study is None:
        study, doc = open_run_study(run_dir)  # the one place that opens a run's study
    else:
        doc = read_config_doc(run_dir)
        if doc is None:
            raise ConfigError(f"{run_dir} is not an hpo run folder (no readable config.json)")
    config = doc["config"]
    mode = config.get("mode", "simple")
    records = trial_records(study)
    best, front = best_records(study, records, mode)
    return RunData(run_dir, config, mode, study, records, best, front, doc)


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


def param_distributions(study: Any) -> dict[str, Any]:
    """Each parameter's Optuna distribution over the study (the widest categorical one where trials differ)."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for k, d in t.distributions.items():
            if k not in out or len(getattr(d, "choices", ())) > len(getattr(out[k], "choices", ())):
                out[k] = d
    return out


def _param_order(names: set[str]) -> list[str]:
    order = [p.name for p in catalog.CNN_SPACE + catalog.LSTM_SPACE + catalog.SEQUENCE_SPACE]
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
