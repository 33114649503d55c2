"""What a trial's numbers mean: the objective of each mode and the definition of ``overall_health``.

Part of the light core (standard library only): the orchestration scores results and the config checks weights
without loading numpy or Keras. The health components themselves are measured on the trainer side
(:mod:`hpo.health`); their definitions are documented there.

Components (keys of ``TrialResult.health``, each in [0, 1], higher = healthier, ``None`` when not measurable):
:data:`COMPONENTS`. ``overall_health`` is the weighted mean of the available components (missing ones are left out
and the remaining weights renormalized; ``None`` when none is available). Default weights (:data:`DEFAULT_WEIGHTS`)::

    neuron_utilization 0.15   gradient_health 0.20   generalization 0.25
    training_stability 0.15   convergence     0.10   efficiency     0.15

Users set them with ``health_weights=generalization:2,efficiency:0`` (CLI) or ``health_weights="..."`` (API):
listed components take the given weights, unlisted ones keep their defaults, all must be non-negative and finite with
a positive sum, and the result is normalized to sum 1 (:func:`parse_weights`; a bad one is a ConfigError whose
``field`` is ``health_weights`` and whose message names the component or weight). The orchestrator recomputes
``overall_health`` with the run's weights (:func:`reweight`), so the stored and the optimized numbers agree.

Objectives (:func:`objective`, validation metrics only -- test metrics are reported, never optimized):
``simple`` -> val_accuracy; ``health`` -> (1 - health_weight) * val_accuracy + health_weight * overall_health;
``pareto`` -> (val_accuracy, overall_health).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any, Literal

from .exceptions import ConfigError, TrialFailed

__all__ = [
    "Mode",
    "MODES",
    "COMPONENTS",
    "DEFAULT_WEIGHTS",
    "GRADIENT_HEALTHY_RANGE",
    "normalize_weights",
    "parse_weights",
    "overall_health",
    "reweight",
    "objective",
]

Mode = Literal["simple", "health", "pareto"]
MODES: tuple[str, ...] = ("simple", "health", "pareto")

COMPONENTS: tuple[str, ...] = ("neuron_utilization", "gradient_health", "generalization", "training_stability",
                               "convergence", "efficiency")
DEFAULT_WEIGHTS: dict[str, float] = {
    "neuron_utilization": 0.15,
    "gradient_health": 0.20,
    "generalization": 0.25,
    "training_stability": 0.15,
    "convergence": 0.10,
    "efficiency": 0.15,
}
#: per-layer gradient norms inside this band score 1 in gradient_health (:mod:`hpo.health`); plots draw it
GRADIENT_HEALTHY_RANGE: tuple[float, float] = (1e-4, 10.0)


def _error(message: str) -> ConfigError:
    return ConfigError(f"health_weights: {message}", field="health_weights")


def normalize_weights(weights: Mapping[str, Any] | None) -> dict[str, float]:
    """Validated component weights summing to 1. Given keys override :data:`DEFAULT_WEIGHTS`; unknown names,
    negative or non-finite values and an all-zero total raise ConfigError."""
    merged = dict(DEFAULT_WEIGHTS)
    for name, value in (weights or {}).items():
        if name not in DEFAULT_WEIGHTS:
            close = difflib.get_close_matches(str(name), COMPONENTS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _error(f"unknown component {name!r}{hint}; allowed: {', '.join(COMPONENTS)}")
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise _error(f"{name}={value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise _error(f"{name}={value!r} must be a finite number >= 0")
        merged[name] = number
    total = sum(merged.values())
    if total <= 0:
        raise _error("at least one component needs a weight above 0")
    return {name: merged[name] / total for name in COMPONENTS}


def parse_weights(text: str | Mapping[str, Any] | None) -> dict[str, float]:
    """``"generalization:2,efficiency:0"`` (``=`` works too) or a mapping -> normalized weights (see
    :func:`normalize_weights`). ``None`` or ``""`` -> the defaults."""
    if text is None:
        return normalize_weights(None)
    if isinstance(text, Mapping):
        return normalize_weights(text)
    given: dict[str, str] = {}
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        sep = ":" if ":" in item else "="
        name, found, value = item.partition(sep)
        name = name.strip()
        if not found or not name:
            raise _error(f"malformed item {item!r}; expected name:weight, e.g. generalization:2,efficiency:0")
        if name in given:
            raise _error(f"{name} is given twice")
        given[name] = value.strip()
    return normalize_weights(given)


def overall_health(components: Mapping[str, float | None], weights: Mapping[str, float] | None = None) -> float | None:
    """Weighted mean of the available (not None, finite) components; None when none is available or all available
    ones weigh 0."""
    w = normalize_weights(weights) if weights is not None else DEFAULT_WEIGHTS
    total = value = 0.0
    for name in COMPONENTS:
        score = components.get(name)
        if score is None or not math.isfinite(float(score)) or w[name] <= 0:
            continue
        total += w[name]
        value += w[name] * float(score)
    return min(1.0, max(0.0, value / total)) if total > 0 else None


def reweight(result: Any, weights: Mapping[str, float] | str | None) -> Any:
    """``result`` (a TrialResult) with overall_health recomputed from its components with ``weights`` (None: the
    result as is). Results without health numbers are returned unchanged."""
    if weights is None or not result.health:
        return result
    w = parse_weights(weights)
    health = dict(result.health)
    health["overall_health"] = overall_health(health, w)
    details = dict(result.details)
    details["health_weights"] = w
    return result.replace(health=health, details=details)


def objective(result: Any, *, mode: str, health_weight: float = 0.3) -> list[float]:
    """Objective value(s) of a finished trial, from validation metrics only (never test metrics).

    simple -> [val_accuracy]; health -> [(1 - w) * val_accuracy + w * overall_health];
    pareto -> [val_accuracy, overall_health].
    """
    acc = result.val_metrics.get("accuracy")
    if acc is None:
        raise TrialFailed("the trial reported no validation accuracy")
    if mode == "simple":
        return [float(acc)]
    overall = result.health.get("overall_health")
    if overall is None:
        raise TrialFailed(f"mode={mode} needs overall_health, which this trial could not measure")
    if mode == "health":
        return [(1.0 - health_weight) * float(acc) + health_weight * float(overall)]
    if mode == "pareto":
        return [float(acc), float(overall)]
    raise ValueError(f"unknown mode {mode!r}")
