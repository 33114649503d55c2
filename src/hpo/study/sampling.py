"""TPE whose random start-up counts only trials that trained: a configuration hpo rejects before training (over
``max_params``, or one too many in a shared study) is told PRUNED so that TPE learns to avoid it, but it must not use
up one of the start-up trials, or a space with many oversized corners would leave TPE's model almost no random
coverage to learn from."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = ["StartupTPESampler", "rejected_count"]


def rejected_count(study: Any) -> int:
    """Trials of ``study`` that hpo rejected before training (user attribute ``rejected``)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.user_attrs.get("rejected"))


class StartupTPESampler(optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler` with ``n_startup_trials`` counted over trials that trained: the rejected
    ones (see :func:`rejected_count`) are added to the start-up count, read once per trial asked."""

    def __init__(self, *, n_startup_trials: int = 10, **kwargs: Any) -> None:
        super().__init__(n_startup_trials=n_startup_trials, **kwargs)
        self.startup_trials = n_startup_trials  # the start-up trials that train
        self._counted_for: tuple[int, int] | None = None  # (study id, trial number) the count was read for

    def _count_rejected(self, study: Any, trial: Any) -> None:
        key = (study._study_id, trial.number)
        if key != self._counted_for:
            self._counted_for = key
            self._n_startup_trials = self.startup_trials + rejected_count(study)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        self._count_rejected(study, trial)
        return super().sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        self._count_rejected(study, trial)
        return super().sample_independent(study, trial, param_name, param_distribution)
