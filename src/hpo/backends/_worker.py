"""A persistent local trainer process: ``python -m hpo.backends._worker``.

Speaks JSON lines on stdin/stdout with :class:`hpo.backends.local.LocalBackend`:

    parent -> worker   {"type": "run", "job": {TrialJob}, "save_model_to": path|null, "executed_on": str}
                       {"type": "continue" | "stop", "trial_id": str, "epoch": int}
                                                                  the decision after each epoch report
                       {"type": "exit"}
    worker -> parent   {"type": "ready", "pid": int}
                       {"type": "epoch", "report": {EpochReport}}
                       {"type": "result", "result": {TrialResult}, "rss_mb": float}

After each epoch the worker waits (briefly) for the parent's decision, so a pruned or cancelled trial stops exactly
at the epoch it was judged on. TensorFlow is imported once per process, not per trial. Anything else that writes to stdout (a library's print) is
redirected to stderr so it cannot corrupt the protocol stream.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any, TextIO


#: how long a worker waits for the parent's decision after an epoch before it trains on anyway
DECISION_TIMEOUT_S = 30.0


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001
        return -1.0


def main() -> int:
    channel: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # fd 1 (stdout) now goes to stderr: stray prints cannot break the protocol
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock:
            channel.write(json.dumps(message, allow_nan=False) + "\n")
            channel.flush()

    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    decisions: queue.Queue[dict[str, Any]] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                print(f"hpo worker: ignoring malformed line {line[:200]!r}", file=sys.stderr)
                continue
            if message.get("type") in ("stop", "continue"):
                decisions.put(message)
            else:
                inbox.put(message)
        inbox.put(None)  # parent closed stdin: finish
        decisions.put({"type": "stop", "trial_id": None, "epoch": None})

    threading.Thread(target=read_stdin, name="hpo-worker-stdin", daemon=True).start()

    from hpo.protocol import EpochReport, TrialJob, TrialResult
    from hpo.training import configure_tensorflow, run_trial

    configure_tensorflow()  # the expensive import, once
    send({"type": "ready", "pid": os.getpid()})

    while True:
        message = inbox.get()
        if message is None or message.get("type") == "exit":
            return 0
        if message.get("type") != "run":
            continue
        raw = message.get("job")
        try:
            job = TrialJob.from_dict(raw)  # the RunPod handler's validation too: params inside the search space
        except Exception as exc:  # noqa: BLE001 - a bad job is a failed trial, not a dead worker
            trial_id = raw.get("trial_id") if isinstance(raw, dict) else None
            send({"type": "result", "rss_mb": _rss_mb(),
                  "result": TrialResult(trial_id=trial_id if isinstance(trial_id, str) else "?", status="failed",
                                        error=f"invalid TrialJob: {exc}").to_dict()})
            continue

        stop = threading.Event()

        def on_epoch(epoch: int, metrics: dict[str, float], _job: TrialJob = job, _stop: threading.Event = stop) -> None:
            send({"type": "epoch", "report": EpochReport(trial_id=_job.trial_id, epoch=epoch,
                                                         metrics=metrics).to_dict()})
            deadline = time.monotonic() + DECISION_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0:
                try:
                    decision = decisions.get(timeout=left)
                except queue.Empty:
                    break
                if decision.get("trial_id") is None or (decision.get("trial_id") == _job.trial_id
                                                        and decision.get("epoch") == epoch):
                    if decision["type"] == "stop":
                        _stop.set()
                    break

        result = run_trial(job, on_epoch, stop.is_set, save_model_to=message.get("save_model_to"),
                           executed_on=message.get("executed_on"))
        send({"type": "result", "result": result.to_dict(), "rss_mb": _rss_mb()})


if __name__ == "__main__":
    sys.exit(main())
