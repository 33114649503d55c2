"""hpo itself: ``hpo.optimize`` with its defaults, ``concurrent_workers`` 1 or 2, and the run's time budget.

The budget: an hpo option that ends the run by a wall-clock time, found by name among hpo's options (a field with
``budget`` in its name other than ``epoch_budget``, in minutes when it ends in ``_minutes``, else in seconds when it
ends in ``_s`` or ``_seconds``), given the time left of T when ``optimize`` is called. Without one,
``timeout_minutes`` (which only stops *starting* trials): the run then overstays T and the report shows by how much;
trials that end after T never count at T. ``--hpo-option key=value`` adds or overrides options.

What is recorded: every finished trial (hpo's progress events: number, state, objective = validation accuracy in
mode=simple), and each trial's saved model: hpo keeps only the best one (best_model.keras), so the model file of
every trial is hard-linked here by wrapping :class:`hpo.results.ModelFiles` before hpo moves or deletes it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from .record import MethodRun

__all__ = ["run_hpo", "budget_option"]


def budget_option(field_names: list[str], seconds: float) -> tuple[str, float] | None:
    """(option, value) of hpo's wall-clock budget option for ``seconds``, or None when hpo has none."""
    for name in sorted(field_names):
        if "budget" not in name or name == "epoch_budget":
            continue
        if name.endswith("_minutes"):
            return name, seconds / 60.0
        if name.endswith(("_s", "_seconds")):
            return name, seconds
    return None


def _keep_models(run: MethodRun) -> bool:
    try:
        from hpo.results import ModelFiles
    except ImportError:
        return False
    if not all(hasattr(ModelFiles, a) for a in ("path", "promote", "drop")):
        return False
    promote, drop = ModelFiles.promote, ModelFiles.drop

    def keep(self: Any, number: int) -> None:
        src = self.path(number)
        dst = run.model_path(number)
        if src is not None and src.exists() and not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

    def promote_kept(self: Any, number: int) -> None:
        keep(self, number)
        promote(self, number)

    def drop_kept(self: Any, number: int) -> None:
        keep(self, number)
        drop(self, number)

    ModelFiles.promote, ModelFiles.drop = promote_kept, drop_kept  # type: ignore[method-assign]
    return True


def run_hpo(run: MethodRun, workers: int, extra: dict[str, str]) -> None:
    import hpo
    from hpo.config import OptimizationConfig

    kept = _keep_models(run)

    def progress(event: dict[str, Any], snap: dict[str, Any]) -> None:
        if event.get("event") != "finished":
            return
        n = int(event["trial"])
        state = str(event.get("state"))
        run.record(n, event.get("value"), candidate=state == "completed", state=state, model=run.model_path(n))

    options: dict[str, Any] = dict(dataset=run.dataset, seed=run.seed, concurrent_workers=workers,
                                   validation_split=run.plan["validation_split"],
                                   data_fraction=run.plan["data_fraction"], trials=100_000, quiet=True,
                                   plot_generation="none", output_dir=str(run.dir / "hpo"), run_name="bench")
    left = max(1.0, run.left())
    found = budget_option([f.name for f in dataclasses.fields(OptimizationConfig)], left)
    if found is not None:
        options[found[0]] = found[1]
    else:
        options["timeout_minutes"] = left / 60.0
    options.update(extra)
    run.note(hpo_options={k: v for k, v in options.items() if k not in ("output_dir",)},
             budget_option=found[0] if found else "timeout_minutes (no wall-clock budget option in hpo)",
             per_trial_models=kept)
    run.note(optimize_called_s=run.elapsed())
    result = hpo.optimize(progress=progress, **options)
    run.note(hpo_completed=result.completed, hpo_pruned=result.pruned, hpo_failed=result.failed,
             hpo_stop_reason=result.stop_reason, hpo_best_val=result.best_val_accuracy,
             hpo_trials=[{k: t.get(k) for k in ("number", "state", "val_accuracy", "epochs", "params")}
                         for t in result.trials])
