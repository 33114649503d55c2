"""The controlled methods: hpo's search space (hpo.search_space.suggest), model builder and trainer
(hpo.training.run_trial: the same seeds, split, cosine schedule, early stopping patience 3, best-epoch weights) --
only the search differs. Configurations over hpo's ``max_params`` are rejected before training, as hpo does, and
told to Optuna as failed (they use no start-up slot and no time to speak of).

- ``default``: a 2-epoch probe of the default configuration measures the per-trial overhead and the seconds per
  epoch; then the default trains once more from scratch for the time left, as hpo's final does: the job carries the
  time left (``time_limit_s``), so hpo's trainer starts no epoch that would not end in time and its cosine schedule
  follows the time (``hpo.training.TimedCosine``), however far the epochs stray from the probe's one-epoch estimate;
  no early stopping. Both are candidates.
- ``random`` / ``tpe``: ``trial_epochs`` per trial; ``tpe-sh`` / ``tpe-hb``: up to ``max_epochs``, pruned by
  Optuna's successive halving / Hyperband pruner on each epoch's validation accuracy.

Every trial ends after the epoch past which the next would miss the deadline (kept as a candidate with its best
epoch); no trial starts that could not finish one epoch in time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .loop import Trained, search_loop
from .record import EpochGuard, MethodRun

__all__ = ["run_default", "run_search", "load_info", "max_params"]

PATIENCE = 3  # hpo's early_stopping_patience default
RECORD_S = 0.5  # default-only's long run: seconds kept after its trainer ends (the record written)
HEADROOM = 2  # ... and its most epochs, x the count the probe's epoch time gives (the time limit ends it first)


def max_params() -> int:
    from hpo.config import OptimizationConfig

    return int({f.name: f for f in dataclasses.fields(OptimizationConfig)}["max_params"].default)


def load_info(run: MethodRun) -> Any:
    """Load the run's split once (hpo.datasets caches the raw arrays per process; run_trial re-splits them) and
    start TensorFlow, so that a trial's first epoch times model building, tracing and one epoch only."""
    from hpo import datasets
    from hpo.training import configure_tensorflow

    configure_tensorflow()

    data = datasets.load(run.dataset, validation_split=run.plan["validation_split"], seed=run.seed,
                         data_fraction=run.plan["data_fraction"])
    run.note(data_ready_s=run.elapsed())
    return data.info


def _train(run: MethodRun, guard: EpochGuard, n: int, params: dict[str, Any], max_epochs: int, patience: int,
           report: Any = None, prune: Any = None, time_limit_s: float | None = None) -> tuple[Any, bool]:
    """One trial through hpo's trainer; (TrialResult, pruned). With ``time_limit_s`` the trainer ends it in time
    (and its schedule with it), not ``guard``."""
    from hpo.protocol import TrialJob
    from hpo.training import run_trial

    job = TrialJob(trial_id=f"bench-{run.method}#{n}", dataset=run.dataset, params=params, max_epochs=max_epochs,
                   seed=(run.seed + n) % 2**32, split_seed=run.seed, validation_split=run.plan["validation_split"],
                   data_fraction=run.plan["data_fraction"], patience=patience, min_epochs=1, compute_health=False,
                   lr_schedule="cosine", use_multi_gpu=False, time_limit_s=time_limit_s)
    pruned = False

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        guard.on_epoch(metrics.get("elapsed_s"))
        if report is not None and metrics.get("val_accuracy") is not None:
            report(float(metrics["val_accuracy"]), epoch)

    def should_stop() -> bool:
        nonlocal pruned
        if prune is not None and prune():
            pruned = True
            return True
        return time_limit_s is None and guard.out_of_time()

    result = run_trial(job, on_epoch=on_epoch, should_stop=should_stop, save_model_to=str(run.model_path(n)))
    guard.ended(result.train_seconds)
    return result, pruned


def _val(result: Any) -> float | None:
    return (result.val_metrics or {}).get("accuracy")


def run_default(run: MethodRun) -> None:
    from hpo.search_space import default_params

    info = load_info(run)
    params = default_params(info.modality, input_shape=info.input_shape)
    guard, probe = EpochGuard(run), EpochGuard(run)
    result, _ = _train(run, probe, 0, params, max_epochs=2, patience=2)
    times = probe.times
    run.record(0, _val(result), candidate=result.status != "failed", state=result.status,
               epochs=result.epochs_run, params=params)
    if len(times) < 2:
        run.note(default_epochs=None, why="the probe did not finish two epochs")
        return
    per_epoch = max(1e-3, times[1] - times[0])
    overhead = max(0.0, times[0] - per_epoch)
    left = run.left() - RECORD_S
    epochs = int((left - overhead - probe.reserve(per_epoch)) // per_epoch)  # reserve: the probe's end too
    run.note(probe_epoch_s=per_epoch, probe_overhead_s=overhead, default_epochs=epochs)
    if epochs < 1:
        return
    # the probe timed one epoch: room for twice its count, the time limit ends it (the schedule ends there too)
    result, _ = _train(run, guard, 1, params, max_epochs=HEADROOM * epochs, patience=HEADROOM * epochs,
                       time_limit_s=round(left, 1))
    run.record(1, _val(result), candidate=result.status != "failed", state=result.status,
               epochs=result.epochs_run, params=params)


def run_search(run: MethodRun, sampler: str, pruner: str) -> None:
    """``sampler`` random | tpe, ``pruner`` none | sh | hb, over hpo's space with hpo's trainer."""
    from hpo.search_space import count_params, suggest

    info = load_info(run)
    limit = max_params()

    def too_big(params: dict[str, Any]) -> bool:
        return count_params(params, info.modality, info.input_shape, info.num_classes, info.vocab_size) > limit

    def train(trial: Any, params: dict[str, Any], epochs: int, guard: EpochGuard, pruning: bool) -> Trained:
        result, pruned = _train(run, guard, trial.number, params, epochs, PATIENCE,
                                report=lambda v, e: trial.report(v, e),
                                prune=(lambda: trial.should_prune()) if pruning else None)
        return _val(result), result.status, result.epochs_run, pruned

    epochs = int(run.plan["trial_epochs"] if pruner == "none" else run.plan["max_epochs"])
    search_loop(run, sampler=sampler, pruner=pruner, epochs=epochs,
                suggest=lambda trial: suggest(trial, info.modality, input_shape=info.input_shape), train=train,
                too_big=too_big)
