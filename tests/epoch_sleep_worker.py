"""Test-only RunPod worker: bench/sleep_handler.py's idea (runpod_worker/handler.py, the real protocol and the real
SDK worker loop, a trainer that sleeps instead of training), but the sleep is per *epoch*: ``HPO_TEST_EPOCH_S``
seconds each. A short job (1-3 epochs) ends in well under a second while a long one (hundreds of epochs) outlasts every
wait of the test that cuts it short -- with bench's per-job total, every job took the same seconds, short ones too.

Started by tests (``start_workers(sim, n, handler=EPOCH_SLEEP_WORKER, env={"HPO_TEST_EPOCH_S": "0.2"})``); imports no
TensorFlow.
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

EPOCH_S = float(os.environ.get("HPO_TEST_EPOCH_S", "0.2"))


def sleeping_trainer(job: TrialJob, on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, *, executed_on: str | None = None,
                     **_: Any) -> TrialResult:
    """run_trial's contract (epochs reported in order, a stop honoured after the epoch, no epoch started that would
    not end within ``time_limit_s``), with sleep for training."""
    started = time.perf_counter()
    history: dict[str, list[float | None]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    base = 0.5 + (job.seed % 17) / 100.0
    stopped = False
    for epoch in range(1, job.max_epochs + 1):
        if job.time_limit_s is not None and epoch * EPOCH_S > job.time_limit_s:
            break  # run_trial's rule: no epoch that would not end in time; complete at the epochs it trained
        time.sleep(max(0.0, started + epoch * EPOCH_S - time.perf_counter()))
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
                       train_seconds=time.perf_counter() - started, executed_on=executed_on or "test",
                       device="sleep")


if __name__ == "__main__":
    worker_handler.serve(worker_handler.Worker(trainer=sleeping_trainer))
