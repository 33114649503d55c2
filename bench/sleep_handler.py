"""Benchmark-only RunPod worker: the real handler, the real protocol and the real SDK worker loop, without training.

It is ``runpod_worker/handler.py`` (input validation, a progress update every epoch, cancellation, the concurrency
modifier) with :func:`hpo.training.run_trial` replaced by a trainer that sleeps
``HPO_BENCH_SLEEP_S`` seconds per job, split evenly over the job's ``max_epochs`` "epochs", and answers a
completed TrialResult. It imports no TensorFlow, so dozens of these fit on a small machine.

Started by bench/dispatch_efficiency.py with the simulator's webhook environment; by hand:
``HPO_BENCH_SLEEP_S=2 python bench/sleep_handler.py`` runs runpod_worker/test_input.json once.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "src", ROOT / "runpod_worker"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import handler as worker_handler  # noqa: E402 - runpod_worker/handler.py, the real one

from hpo.protocol import TrialJob, TrialResult  # noqa: E402

SLEEP_S = float(os.environ.get("HPO_BENCH_SLEEP_S", "10"))


def sleeping_trainer(job: TrialJob, on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, *, executed_on: str | None = None,
                     **_: Any) -> TrialResult:
    """run_trial's contract (epochs reported, stop honoured after an epoch), with sleep instead of training."""
    started = time.perf_counter()
    per_epoch = SLEEP_S / job.max_epochs
    history: dict[str, list[float | None]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    base = 0.5 + (job.seed % 17) / 100.0
    stopped = False
    for epoch in range(1, job.max_epochs + 1):
        time.sleep(max(0.0, started + epoch * per_epoch - time.perf_counter()))
        metrics = {"loss": 1.0 / epoch, "accuracy": base + 0.01 * epoch, "val_loss": 1.1 / epoch,
                   "val_accuracy": base + 0.005 * epoch}
        for key, value in metrics.items():
            history[key].append(value)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if should_stop is not None and should_stop():
            stopped = True
            break
    epochs = len(history["loss"])
    return TrialResult(trial_id=job.trial_id, status="stopped" if stopped else "completed", history=history,
                       epochs_run=epochs, best_epoch=epochs,
                       val_metrics={"accuracy": history["val_accuracy"][-1], "loss": history["val_loss"][-1]},
                       test_metrics={"accuracy": history["val_accuracy"][-1]}, param_count=1000,
                       train_seconds=time.perf_counter() - started, executed_on=executed_on or "bench",
                       device="sleep")


if __name__ == "__main__":
    worker = worker_handler.Worker(trainer=sleeping_trainer)
    print(f"bench worker {worker.executed_on}: sleeping {SLEEP_S:g} s per job",
          flush=True)
    worker_handler.serve(worker)
