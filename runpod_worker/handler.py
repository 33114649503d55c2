"""RunPod serverless worker: trains one hpo TrialJob per request and answers with its TrialResult.

Thin on purpose: the job is validated with :mod:`hpo.protocol` and trained by :func:`hpo.training.run_trial`, the same
function local workers run, so a trial gives the same numbers wherever it runs.

    request input                         answer (the job's output)
    {TrialJob as JSON}                    {"trial_result": {TrialResult as JSON}}      (a failed trial is a result too)
    {"command": "health"}                 {"health": {"tensorflow", "gpus", "datasets", "worker_id", ...}}
    anything else                         {"error": "<what is wrong>", "error_kind": "invalid_input"}  -> job FAILED
    (an unexpected exception)             {"error": "internal worker error (<type>: <first line>) ...",
                                           "error_kind": "internal"}; the traceback, secrets masked, goes to the log

The handler never raises (cancellation excepted). Before anything walks the input recursively, its size
(MAX_INPUT_BYTES), nesting depth (MAX_INPUT_DEPTH) and key types are measured iteratively; the job is then parsed by
``TrialJob.from_dict``, which also checks its params against the search space the orchestrator samples from
(``hpo.search_space.validate_params``) -- the very parsing the local worker loop uses, so both refuse alike.

While a trial trains, every epoch is published with ``runpod.serverless.progress_update`` as
``{"hpo_progress": {"trial_id", "worker", "epochs": [EpochReport, ...], "eta_s", "training_done"}}``; the epoch list
is cumulative (a client that polls slower than epochs end misses none). Training runs in a thread so the event loop
keeps serving; when RunPod cancels the job (``/cancel``, execution timeout) the SDK cancels this handler's task, the
handler tells the trainer to stop after the epoch it is in, waits for it, and re-raises ``CancelledError``.

Environment:
    HPO_WORKER_CONCURRENCY   jobs one worker runs at a time (default 1). Keras seeds and sessions are per process,
                             so only 1 gives bit-reproducible trials.
    HPO_WORKER_PREFETCH_S    ask for the next job this many seconds before the current one is expected to end
                             (default 1.25; 0 turns it off). See ``Worker.concurrency_modifier``.
    HPO_WORKER_WARMUP        1 (default): import and configure TensorFlow before taking the first job.

Run ``python runpod_worker/handler.py`` (no RunPod environment) to train ``test_input.json`` once and exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import platform
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parents[1] / "src"
if (_SRC / "hpo").is_dir() and str(_SRC) not in sys.path:  # a checkout that is not installed
    sys.path.insert(0, str(_SRC))

from hpo import catalog, datafiles  # noqa: E402 - standard library only
from hpo.exceptions import ProtocolError  # noqa: E402
from hpo.protocol import (MAX_JOB_INPUT_BYTES, MAX_JSON_DEPTH, EpochReport, TrialJob, TrialResult,  # noqa: E402
                          check_json_bounds)
from hpo.redact import mask_text  # noqa: E402

__all__ = ["Worker", "Trainer", "health_info", "serve", "MAX_INPUT_BYTES"]

log = logging.getLogger("hpo.worker")

#: Inputs larger than this are refused before parsing (a TrialJob is well under MAX_JOB_BYTES = 1 KiB).
MAX_INPUT_BYTES = MAX_JOB_INPUT_BYTES
#: Inputs nested deeper than this are refused before anything walks them recursively.
MAX_INPUT_DEPTH = MAX_JSON_DEPTH
#: Most epochs repeated in each progress update (the client keeps the ones it has seen).
PROGRESS_EPOCHS = 200

Trainer = Callable[..., TrialResult]  # run_trial(job, on_epoch, should_stop, *, executed_on=...) -> TrialResult


def _env_number(name: str, default: float, *, minimum: float, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    if not math.isfinite(value) or value < minimum:
        log.warning("%s=%r is below %s; using %s", name, raw, minimum, default)
        return default
    return value


_LOCAL_ID = f"local-{os.getpid()}-{int(time.time())}"


def _worker_id() -> str:
    """The id the SDK puts in its job-take URL: RunPod's (and the simulator's) RUNPOD_POD_ID; a local name when the
    worker runs without RunPod's environment (test_input.json mode, in-process tests)."""
    return os.environ.get("RUNPOD_POD_ID", "").strip() or _LOCAL_ID


class InvalidInput(ValueError):
    """The request input is not something this worker runs."""


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _internal_error(job_id: str, exc: Exception) -> dict[str, Any]:
    """The answer to an unexpected exception: its type and first line (masked), never a traceback; the traceback
    goes to the worker's log, masked."""
    try:
        log.error("job %s: internal error\n%s", job_id, mask_text(traceback.format_exc()))
    except Exception:  # noqa: BLE001 - logging must not turn an answer into a raise
        pass
    try:
        text = str(exc)
        detail = text.strip().splitlines()[0][:300] if text.strip() else ""
    except Exception:  # noqa: BLE001 - an exception whose str() raises
        detail = ""
    reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return {"error": mask_text(f"internal worker error ({reason}); the worker's log has the details"),
            "error_kind": "internal"}


def _job_id(job: Any) -> str:
    """The SDK job's id for log lines: short and printable whatever the job holds."""
    raw = job.get("id") if isinstance(job, dict) else None
    text = raw if isinstance(raw, str) else repr(type(raw).__name__)
    return text[:80] if text.isprintable() else ascii(text[:80])


class _Running:
    """One job in flight: its stop flag, the epochs it reported, and when it is expected to end."""

    def __init__(self, sdk_job: dict[str, Any], trial: TrialJob) -> None:
        self.sdk_job = sdk_job
        self.job_id = str(sdk_job.get("id"))
        self.trial = trial
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.reports: list[dict[str, Any]] = []
        self.epoch_ends: list[float] = []
        self.best_acc = -math.inf
        self.best_epoch: int | None = None
        self.training_done = False
        self.released = False
        self._lock = threading.Lock()

    def record(self, report: EpochReport) -> None:
        with self._lock:
            self.reports.append(report.to_dict())
            self.epoch_ends.append(time.monotonic())
            acc = report.metrics.get("val_accuracy")
            if acc is not None and acc > self.best_acc:
                self.best_acc, self.best_epoch = acc, report.epoch
            t = self.trial
            patience_out = (report.epoch >= t.min_epochs and self.best_epoch is not None
                            and report.epoch - self.best_epoch >= t.patience)
            self.training_done = report.epoch >= t.max_epochs or patience_out or self.stop.is_set()

    @property
    def epochs(self) -> int:
        return len(self.epoch_ends)

    def expected_end(self, tail_s: float) -> float | None:
        """Monotonic time the trainer is expected to return (None until an epoch has ended)."""
        with self._lock:
            k = len(self.epoch_ends)
            if k == 0:
                return None
            last = self.epoch_ends[-1]
            per_epoch = (last - self.epoch_ends[0]) / (k - 1) if k >= 2 else last - self.started
            left = 0 if self.training_done else max(0, self.trial.max_epochs - k)
            return last + left * per_epoch + tail_s


class Worker:
    """The handler, its concurrency modifier and the bookkeeping they share.

    ``trainer`` has run_trial's signature; the dispatch benchmark swaps in one that sleeps.
    """

    def __init__(self, trainer: Trainer | None = None, *, concurrency: int | None = None,
                 prefetch_s: float | None = None, max_input_bytes: int = MAX_INPUT_BYTES) -> None:
        if trainer is None:
            from hpo.training import run_trial  # imports TensorFlow only when a trial runs

            trainer = run_trial
        self.trainer = trainer
        self.concurrency = int(concurrency if concurrency is not None
                               else _env_number("HPO_WORKER_CONCURRENCY", 1, minimum=1, integer=True))
        self.prefetch_s = float(prefetch_s if prefetch_s is not None
                                else _env_number("HPO_WORKER_PREFETCH_S", 1.25, minimum=0.0))
        self.max_input_bytes = max_input_bytes
        self.worker_id = _worker_id()
        self.executed_on = f"runpod:{self.worker_id}"
        self._running: dict[str, _Running] = {}
        self._tail_s = 0.0  # learned: time from the last epoch's end to the trainer's return (evaluation)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency + 2,
                                                               thread_name_prefix="hpo-trial")
        self._publish = bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))  # local test runs have nowhere to post to

    # -- the SDK's hooks ------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"handler": self.handler, "concurrency_modifier": self.concurrency_modifier}

    def concurrency_modifier(self, current: int) -> int:
        """Called by the SDK's job-take loop before each decision to ask for jobs (about once a second while full).

        Returns the configured concurrency (never None). It also implements *prefetch*: the SDK counts a job as
        occupying its slot until the result is posted, then sleeps up to a second before asking again, so with one
        job per worker each job would cost up to a second of idle GPU. A job expected to end within
        ``prefetch_s`` is therefore let go of the SDK's occupancy count now, and the loop asks for the next job
        while this one finishes; the next job waits in the SDK's queue and starts the moment this one ends (the
        SDK never runs more than ``concurrency`` handlers at once). The estimate comes from the epochs' timing.
        """
        try:
            self._release_finishing_jobs()
        except Exception:  # noqa: BLE001 - the modifier must always answer
            log.exception("prefetch bookkeeping failed")
        return self.concurrency

    def _release_finishing_jobs(self) -> None:
        if self.prefetch_s <= 0 or not self._running:
            return
        from runpod.serverless.modules.worker_state import JobsProgress

        now = time.monotonic()
        for state in list(self._running.values()):
            if state.released:
                continue
            end = state.expected_end(self._tail_s)
            if end is not None and end - now <= self.prefetch_s:
                state.released = True
                JobsProgress().remove(state.job_id)
                log.debug("job %s expected to end in %.2f s: asking for the next job", state.job_id, end - now)

    async def handler(self, job: Any) -> dict[str, Any]:
        """The SDK's handler: never raises (but re-raises cancellation). Bad input -> ``invalid_input``; anything
        unexpected -> ``internal`` with a one-line reason, the traceback (secrets masked) on the worker's log."""
        job_id = _job_id(job)
        try:
            try:
                request = self.parse(job.get("input") if isinstance(job, dict) else None)
            except InvalidInput as exc:
                message = mask_text(str(exc))
                print(f"hpo-worker: job {job_id} rejected: {message}", flush=True)
                return {"error": message, "error_kind": "invalid_input"}
            if request is None:
                return {"health": await asyncio.get_running_loop().run_in_executor(
                    self._executor, health_info, self.worker_id, self.concurrency)}
            return await self._train(job, request)
        except Exception as exc:  # noqa: BLE001 - the last resort: the handler answers, whatever went wrong
            return _internal_error(job_id, exc)

    # -- validation -------------------------------------------------------------------------------------------
    def parse(self, raw: Any) -> TrialJob | None:
        """The TrialJob in ``raw``, or None for the health command; InvalidInput with a clear message otherwise.

        Size, nesting depth and key types are measured first, without recursion; then the job is parsed and
        validated by :meth:`TrialJob.from_dict` (params against the search space), exactly as the local worker
        loop does."""
        if not isinstance(raw, dict):
            raise InvalidInput(f"the input must be a JSON object (a TrialJob or {{\"command\": \"health\"}}), "
                               f"got {_type_name(raw)}")
        try:
            check_json_bounds(raw, max_bytes=self.max_input_bytes, max_depth=MAX_INPUT_DEPTH)
        except ProtocolError as exc:
            raise InvalidInput(str(exc)) from None
        try:
            size = len(json.dumps(raw, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidInput(f"the input is not plain JSON: {str(exc)[:200]}") from None
        if size > self.max_input_bytes:
            raise InvalidInput(f"the input is {size:,} bytes; a job is at most {self.max_input_bytes:,} bytes "
                               "(datasets are baked into the worker image: send names and numbers, not data)")
        if "command" in raw:
            if raw.get("command") == "health" and len(raw) == 1:
                return None
            raise InvalidInput(f"unknown command {json.dumps(raw.get('command'))[:60]}; the only command is "
                               "{\"command\": \"health\"}")
        try:
            return TrialJob.from_dict(raw)
        except ProtocolError as exc:
            raise InvalidInput(f"invalid TrialJob: {exc}") from None

    # -- training ---------------------------------------------------------------------------------------------
    def _progress(self, state: _Running) -> dict[str, Any]:
        end = state.expected_end(self._tail_s)
        return {"hpo_progress": {"trial_id": state.trial.trial_id, "worker": self.executed_on,
                                 "epochs": state.reports[-PROGRESS_EPOCHS:],
                                 "elapsed_s": round(time.monotonic() - state.started, 3),
                                 "eta_s": None if end is None else round(max(0.0, end - time.monotonic()), 3),
                                 "training_done": state.training_done}}

    async def _train(self, sdk_job: dict[str, Any], trial: TrialJob) -> dict[str, Any]:
        import runpod

        state = _Running(sdk_job, trial)
        self._running[state.job_id] = state
        loop = asyncio.get_running_loop()

        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:  # in the training thread
            state.record(EpochReport(trial_id=trial.trial_id, epoch=epoch, metrics=metrics))
            if not self._publish or state.stop.is_set() or epoch >= trial.max_epochs:
                return  # the result follows at once; a last progress post would only race it
            try:
                runpod.serverless.progress_update(sdk_job, self._progress(state))
            except Exception:  # noqa: BLE001 - progress is best effort
                log.exception("progress update failed")

        def train() -> TrialResult:
            return self.trainer(trial, on_epoch, state.stop.is_set, executed_on=self.executed_on)

        future = loop.run_in_executor(self._executor, train)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            state.stop.set()
            at = state.epochs
            print(f"hpo-worker: job {state.job_id} ({trial.trial_id}) cancelled after epoch {at}; stopping at the "
                  "end of the epoch in progress", flush=True)
            while not future.done():
                try:
                    await asyncio.wait({future})
                except asyncio.CancelledError:
                    continue
            print(f"hpo-worker: job {state.job_id} ({trial.trial_id}) cancelled; training stopped after epoch "
                  f"{state.epochs} (cancel arrived after epoch {at})", flush=True)
            raise
        except Exception as exc:  # noqa: BLE001 - run_trial never raises; another trainer might
            return {"error": f"the trainer raised {type(exc).__name__}: {exc}", "error_kind": "worker_error"}
        finally:
            self._running.pop(state.job_id, None)
            if state.epoch_ends and future.done() and not future.cancelled():
                tail = max(0.0, time.monotonic() - state.epoch_ends[-1])
                self._tail_s = 0.5 * self._tail_s + 0.5 * min(tail, 600.0)
        if result.trial_id != trial.trial_id:  # a trainer bug must never credit another trial's numbers
            return {"error": f"the trainer answered for trial {result.trial_id!r}, not {trial.trial_id!r}",
                    "error_kind": "worker_error"}
        print(f"hpo-worker: job {state.job_id} ({trial.trial_id}) {result.status} after {result.epochs_run} "
              f"epoch(s) in {time.monotonic() - state.started:.1f} s", flush=True)
        return {"trial_result": result.to_dict()}


def health_info(worker_id: str = "", concurrency: int = 1) -> dict[str, Any]:
    """What this worker can do: TensorFlow version, visible GPUs, datasets on disk (baked into the image)."""
    from hpo import __version__
    from hpo.training import configure_tensorflow

    configure_tensorflow()
    import tensorflow as tf

    baked = {name: ("generated" if catalog.is_generated(name) else
                    ("baked" if datafiles.locate(name) is not None else "missing (downloaded on first use)"))
             for name in catalog.DATASET_NAMES}
    return {"hpo_version": __version__, "tensorflow": tf.__version__, "python": platform.python_version(),
            "gpus": [gpu.name for gpu in tf.config.list_physical_devices("GPU")],
            "cuda_build": bool(tf.test.is_built_with_cuda()), "datasets": baked, "worker_id": worker_id,
            "concurrency": concurrency, "prefetch_s": _env_number("HPO_WORKER_PREFETCH_S", 1.25, minimum=0.0)}


def serve(worker: Worker) -> None:
    """Start the SDK's worker loop (or, without RunPod's environment, run test_input.json once)."""
    import runpod

    here = Path(__file__).resolve().parent
    if (not os.environ.get("RUNPOD_WEBHOOK_GET_JOB") and not Path("test_input.json").exists()
            and (here / "test_input.json").exists()):
        os.chdir(here)  # the SDK's local mode reads ./test_input.json
    runpod.serverless.start(worker.config())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    worker = Worker()
    if os.environ.get("HPO_WORKER_WARMUP", "1") != "0":
        from hpo.training import configure_tensorflow

        started = time.monotonic()
        configure_tensorflow()  # the expensive import happens before the first job is taken, not inside it
        print(f"hpo-worker: TensorFlow ready in {time.monotonic() - started:.1f} s", flush=True)
    print(f"hpo-worker: {worker.executed_on} serving (concurrency {worker.concurrency}, prefetch "
          f"{worker.prefetch_s:g} s)", flush=True)
    serve(worker)


if __name__ == "__main__":
    main()
