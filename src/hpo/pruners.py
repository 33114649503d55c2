"""hpo's pruning rule on top of Optuna's pruners: a trial far behind the best curve stops, whatever the schedule.

Hyperband hedges against over-eager pruning by spreading trials over brackets, some of which never prune before the
last rung. That pays off over hundreds of trials; in a run of a dozen, a hopeless trial (a random start-up
configuration at half the best trial's accuracy) can spend a whole trial's epochs in such a bracket. So every
pruner hpo builds is wrapped: after each epoch (from ``min_epochs_per_trial`` on), a trial whose validation accuracy
is more than ``prune_below_best`` (a fraction) below the best value any other trial had after the same epoch is
pruned; otherwise the wrapped pruner decides. "Had after the same epoch" means by that epoch: another trial's
value at that epoch or, when it has not got that far yet (concurrent trials), at its latest earlier epoch -- a trial
that is far behind another trial's earlier value is all the more behind.

The same comparison is made in training time when the orchestrator reports it (:meth:`FarBehindPruner.record_time`),
with its own, tighter margin ``prune_behind_in_time``: a trial whose accuracy after t seconds of training is more than
that margin below the best accuracy another trial of this run had reached after t seconds is pruned too. Per epoch a
wide margin is right (a slow starter may still catch up within its epochs); in time the question is whether the
configuration earns its cost: a 64-filter CNN at four times the default's epoch time that is 5 % behind what the
default reached in the same seconds would hold a worker for most of an epoch-budgeted run for a result no better.

Composition: ``FarBehindPruner(wrapped, ...)`` is an instance of a subclass of *both* FarBehindPruner and the wrapped
pruner's class, holding the wrapped pruner's settings. So Optuna still sees the real pruner (a HyperbandPruner stays
``isinstance(study.pruner, HyperbandPruner)``: samplers then learn per bracket, as Optuna intends), and the wrapped
pruner's own ``prune`` runs first on every report (successive halving records its rung values) before the far-behind
rules may prune on top. With ``seed``, Hyperband assigns brackets from the seed and the trial number instead of the
study's (timestamped) name, so the same seed gives the same brackets.
"""

from __future__ import annotations

import binascii
import math
from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = ["FarBehindPruner"]

_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class FarBehindPruner(optuna.pruners.BasePruner):
    """Prune when ``value < (1 - margin) * best value another trial had by the same step``, or
    ``value < (1 - time_margin) * best value another trial had within as much training time`` (steps >= ``min_step``;
    ``time_margin`` defaults to ``margin``); else defer to ``wrapped``. For maximized, non-negative metrics (accuracy).
    A margin >= 1 turns its rule off.

    ``reasons`` maps the trial numbers this rule (not the wrapped pruner) stopped to why.
    """

    def __new__(cls, wrapped: optuna.pruners.BasePruner, *args: Any, **kwargs: Any) -> FarBehindPruner:
        if cls is not FarBehindPruner:
            return super().__new__(cls)
        composed = _composed(type(wrapped))
        pruner = super().__new__(composed)
        pruner.__dict__.update(wrapped.__dict__)  # the wrapped pruner's settings and state
        return pruner

    def __init__(self, wrapped: optuna.pruners.BasePruner, *, margin: float, time_margin: float | None = None,
                 min_step: int = 1, seed: int | None = None) -> None:
        self.wrapped = wrapped  # as configured (the composed pruner carries its settings)
        self.seed = seed
        self.margin = float(margin)
        self.time_margin = self.margin if time_margin is None else float(time_margin)
        self.min_step = int(min_step)
        self.reasons: dict[int, str] = {}
        #: trial number -> {step: seconds of training when that step was reported}
        self.times: dict[int, dict[int, float]] = {}

    def record_time(self, number: int, step: int, seconds: float) -> None:
        """Trial ``number`` reported ``step`` after ``seconds`` of training (call before ``should_prune``)."""
        self.times.setdefault(number, {})[step] = float(seconds)

    @staticmethod
    def _best_latest(trials: list[Any], exclude: int, steps_of: Any) -> float | None:
        """Over ``trials`` but ``exclude``: the best of each trial's value at its latest step in ``steps_of(t)``."""
        best = None
        for t in trials:
            if t.number == exclude:
                continue
            steps = [s for s in steps_of(t) if s in t.intermediate_values]
            value = t.intermediate_values[max(steps)] if steps else None
            if value is not None and math.isfinite(value) and (best is None or value > best):
                best = value
        return best

    def best_by(self, trials: list[Any], step: int, *, exclude: int) -> float | None:
        """The best value another trial had by ``step``: at ``step``, or at its latest step before it."""
        return self._best_latest(trials, exclude, lambda t: [s for s in t.intermediate_values if s <= step])

    def best_in_time(self, trials: list[Any], seconds: float, *, exclude: int) -> float | None:
        """The best value another trial had reached within ``seconds`` of its own training."""
        return self._best_latest(trials, exclude, lambda t: [s for s, at in self.times.get(t.number, {}).items()
                                                             if at <= seconds])

    def prune(self, study: Any, trial: Any) -> bool:
        decided = bool(super().prune(study, trial))  # the real pruner first: it records its rungs on every report
        return self._far_behind(study, trial) or decided  # when both prune, the far-behind reason is the telling one

    def _far_behind(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if step >= self.min_step and min(self.margin, self.time_margin) < 1:
            value = trial.intermediate_values[step]
            trials = study.get_trials(deepcopy=False, states=_STATES)
            best = self.best_by(trials, step, exclude=trial.number) if self.margin < 1 else None
            if best is not None and (not math.isfinite(value) or value < (1 - self.margin) * best):
                self.reasons[trial.number] = (f"pruned at epoch {step}: far behind, {value:.4f} < "
                                              f"{1 - self.margin:.2f} x the best {best:.4f} by that epoch")
                return True
            seconds = self.times.get(trial.number, {}).get(step)
            best = None
            if seconds is not None and self.time_margin < 1:
                best = self.best_in_time(trials, seconds, exclude=trial.number)
            if best is not None and (not math.isfinite(value) or value < (1 - self.time_margin) * best):
                self.reasons[trial.number] = (f"pruned at epoch {step}: far behind in time, {value:.4f} after "
                                              f"{seconds:.0f}s < {1 - self.time_margin:.2f} x the best {best:.4f} "
                                              "reached in as much training time")
                return True
        return False

    def _get_bracket_id(self, study: Any, trial: Any) -> int:
        """Hyperband's bracket of ``trial``: from the seed and the trial number when seeded (Optuna uses the study's
        name, which differs per run)."""
        if self.seed is None or not getattr(self, "_pruners", None):
            return super()._get_bracket_id(study, trial)  # type: ignore[misc]
        n = binascii.crc32(f"hpo-{self.seed}_{trial.number}".encode()) % self._total_trial_allocation_budget
        for bracket_id in range(self._n_brackets):
            n -= self._trial_allocation_budgets[bracket_id]
            if n < 0:
                return bracket_id
        return self._n_brackets - 1


_COMPOSED: dict[type, type] = {}


def _composed(base: type) -> type:
    """The class of a FarBehindPruner wrapping a ``base`` pruner: FarBehindPruner first, then ``base``."""
    if base is FarBehindPruner or issubclass(base, FarBehindPruner):
        raise TypeError("a FarBehindPruner cannot wrap another FarBehindPruner")
    if base not in _COMPOSED:
        _COMPOSED[base] = type(f"FarBehind{base.__name__}", (FarBehindPruner, base), {})
    return _COMPOSED[base]
