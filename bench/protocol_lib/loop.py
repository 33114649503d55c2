"""The ask/tell loop shared by the Optuna methods of both tables: sampler, pruner, the deadline, the records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .record import EpochGuard, MethodRun

__all__ = ["search_loop", "make_sampler", "make_pruner", "Trained"]

#: what a trainer returns: (validation accuracy of its best epoch or None, status, epochs trained, pruned)
Trained = tuple[float | None, str, int | None, bool]


def make_sampler(kind: str, seed: int) -> Any:
    """random, or multivariate TPE (grouped for conditional parameters) with 5 start-up trials."""
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)
    raise ValueError(f"unknown sampler {kind!r}; allowed: random, tpe")


def make_pruner(kind: str, max_epochs: int) -> Any:
    """none, sh (successive halving from 1 epoch, factor 3) or hb (Hyperband over 1..max_epochs, factor 3)."""
    import optuna

    if kind == "sh":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if kind == "hb":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {kind!r}; allowed: none, sh, hb")


def search_loop(run: MethodRun, *, sampler: str, pruner: str, epochs: int,
                suggest: Callable[[Any], dict[str, Any]],
                train: Callable[[Any, dict[str, Any], int, EpochGuard, bool], Trained],
                too_big: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Trials until no further one can end an epoch by the deadline. ``train(trial, params, epochs, guard,
    pruning)`` trains one configuration, saves its best epoch to ``run.model_path(trial.number)``, reports each
    epoch to ``trial`` and stops when it should be pruned (when ``pruning``) or is out of time."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, run.seed),
                                pruner=make_pruner(pruner, epochs), study_name=f"bench-{run.method}-{run.seed}")
    guard = EpochGuard(run)
    rejected = 0
    while guard.can_start() and rejected < 1000:
        trial = study.ask()
        params = suggest(trial)
        if too_big is not None and too_big(params):
            study.tell(trial, state=TrialState.FAIL)  # failed trials use no start-up slot of TPE
            rejected += 1
            continue
        guard.start_trial()
        val, status, epochs_run, pruned = train(trial, params, epochs, guard, pruner != "none")
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif status != "failed" and val is not None:
            study.tell(trial, val)
        else:
            study.tell(trial, state=TrialState.FAIL)
        run.record(trial.number, val, candidate=not pruned and status != "failed",
                   state="pruned" if pruned else status, epochs=epochs_run, params=params)
    run.note(rejected_configurations=rejected, trials=len(study.trials) - rejected)
