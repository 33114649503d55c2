"""A persistent local trainer process: ``python -m hpo.backends._worker``.

Speaks JSON lines on stdin/stdout with :class:`hpo.backends.local.LocalBackend`:

    parent -> worker   {"type": "run", "job": {TrialJob}, "save_model_to": path|null, "executed_on": str}
                       {"type": "continue" | "stop", "trial_id": str, "epoch": int, "discard": bool}
                                                                  the decision after each epoch report
                                                                  (discard: a prune, :class:`hpo.worker.StopFlag`)
                       {"type": "stop", "trial_id": str, "now": true, "discard": bool}
                                                                  a stop that comes during an epoch (a cut): the
                                                                  trial stops after the batch in training
                       {"type": "exit"}
    worker -> parent   {"type": "ready", "pid": int}
                       {"type": "epoch", "report": {EpochReport}}
                       {"type": "result", "result": {TrialResult}, "rss_mb": float}

Each job goes through the worker core the RunPod handler uses too (:func:`hpo.worker.handle`: parse -> run_trial ->
answer), so both refuse a bad job in the same words; here the answer is sent as a TrialResult (a refused job is a
failed trial). After each epoch the worker waits (briefly) for the parent's decision, so a pruned or cancelled trial
stops exactly at the epoch it was judged on; a cut asked during an epoch stops it at the next batch. TensorFlow is
imported once per process, not per trial. Anything else that writes to stdout (a library's print) is redirected to
stderr so it cannot corrupt the protocol stream.
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
    # a stop that comes during an epoch ("now": a cut) stops the trial in training at its next batch: the run in
    # training, and the trial ids stopped before their run began (the message may overtake the start)
    current: dict[str, Any] = {"run": None, "early": {}}
    current_lock = threading.Lock()

    def stop_now(message: dict[str, Any]) -> None:
        with current_lock:
            run = current["run"]
            if run is not None and run.job.trial_id == message.get("trial_id"):
                run.cancel(discard=message.get("discard") is True)
            else:
                current["early"][message.get("trial_id")] = message.get("discard") is True

    def started(run: Any) -> None:
        with current_lock:
            current["run"] = run
            if run.job.trial_id in current["early"]:
                run.cancel(discard=current["early"].pop(run.job.trial_id))

    def read_stdin() -> None:
        for line in sys.stdin:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                print(f"hpo worker: ignoring malformed line {line[:200]!r}", file=sys.stderr)
                continue
            if message.get("type") == "stop" and message.get("now") is True:
                stop_now(message)
            elif message.get("type") in ("stop", "continue"):
                decisions.put(message)
            else:
                inbox.put(message)
        inbox.put(None)  # parent closed stdin: finish
        decisions.put({"type": "stop", "trial_id": None, "epoch": None})

    threading.Thread(target=read_stdin, name="hpo-worker-stdin", daemon=True).start()

    from hpo.protocol import EpochReport
    from hpo.training import configure_tensorflow, run_trial
    from hpo.worker import TrialRun, handle, result_of

    configure_tensorflow()  # the expensive import, once
    send({"type": "ready", "pid": os.getpid()})

    while True:
        message = inbox.get()
        if message is None or message.get("type") == "exit":
            return 0
        if message.get("type") != "run":
            continue
        raw = message.get("job")

        def on_report(run: TrialRun, report: EpochReport) -> None:  # wait for the parent's decision on this epoch
            send({"type": "epoch", "report": report.to_dict()})
            deadline = time.monotonic() + DECISION_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0:
                try:
                    decision = decisions.get(timeout=left)
                except queue.Empty:
                    break
                if decision.get("trial_id") is None or (decision.get("trial_id") == run.job.trial_id
                                                        and decision.get("epoch") == report.epoch):
                    if decision["type"] == "stop":
                        run.cancel(discard=decision.get("discard") is True)
                    break

        # parse (the RunPod handler's validation too: params inside the search space) -> run_trial -> answer; a bad
        # job is a failed trial, not a dead worker
        answer = handle(raw, run_trial, on_report=on_report, executed_on=message.get("executed_on"),
                        save_model_to=message.get("save_model_to"), on_start=started,
                        label=str(raw.get("trial_id"))[:80] if isinstance(raw, dict) else "?")
        with current_lock:
            current["run"] = None
        result = result_of(answer, raw)
        send({"type": "result", "result": result.to_dict(), "rss_mb": _rss_mb()})


if __name__ == "__main__":
    sys.exit(main())
