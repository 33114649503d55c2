"""Model health: measured metrics, the overall score, and how it combines with accuracy into the objective.

(The measurements themselves are added by the health issue; this module already owns the objective so that
``mode`` is handled in one place.)
"""

from __future__ import annotations

from typing import Any

from .exceptions import TrialFailed

__all__ = ["objective"]


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
