"""RunPod serverless worker: trains one hpo TrialJob per request and answers with its TrialResult.

RunPod glue only. A request is parsed, trained and answered by the worker core (:mod:`hpo.worker`), which the local
worker loop uses too, with :func:`hpo.training.run_trial`, the function local workers run: a trial gives the same
numbers, and a bad job the same refusal, wherever it runs. The SDK is used through its public API
(``runpod.serverless.start`` with a handler and a concurrency modifier, ``runpod.serverless.progress_update``) and
one hook of its worker loop (:func:`install_prompt_take`, below).

    request input                         answer (the job's output)
    {TrialJob as JSON}                    {"trial_result": {TrialResult as JSON}}      (a failed trial is a result too)
    {"command": "health"}                 {"health": {"tensorflow", "gpus", "datasets", "worker_id", ...}}
    anything else                         {"error": "<what is wrong>", "error_kind": "invalid_input"}  -> job FAILED
    (an unexpected exception)             {"error": "internal worker error (<type>: <first line>) ...",
                                           "error_kind": "internal"}; the traceback, secrets masked, goes to the log

Own data (``data_uri``, ``data_sha256``) is fetched before training (:func:`hpo.objectstore.fetch`: downloaded once
into the cache, on the network volume when one is mounted, and hash-checked); data that cannot be reached or does not
match its hash is answered ``{"error": ..., "error_kind": "invalid_input"}`` before any training. A job with
``return_model`` trains with a temporary ``.keras`` file that :func:`hpo.artifacts.attach_model` uploads to the bucket
(``model_uri``) or, without one and when small, returns inline (``model_inline``).

A job's ``time_limit_s`` counts from when the client sent it: with ``deadline_unix`` (the client's clock) the
seconds it waited in the endpoint's queue are taken off before training (:meth:`hpo.protocol.TrialJob.by_deadline`).

The handler never raises (cancellation excepted). Size, depth and key checks come before anything walks the input
recursively, then ``TrialJob.from_dict`` checks the params against the search space (:func:`hpo.worker.parse_input`).

While a trial trains, every epoch is published with ``runpod.serverless.progress_update`` as
``{"hpo_progress": {"trial_id", "worker", "epochs": [EpochReport, ...], "elapsed_s", "eta_s", "training_done"}}``;
the epoch list is cumulative (a client that polls slower than epochs end misses none), and ``eta_s`` (from the
epochs' timing, the job's early-stopping rule and the learned evaluation time) lets the client poll fast just when
the trial should end. Training runs in a thread so the event loop keeps serving; when RunPod cancels the job
(``/cancel``, execution timeout) the SDK cancels this handler's task, the handler tells the trainer to stop after the
batch it is training (the part of the epoch it trained is validated, as a local trial cut), waits for it, and
re-raises ``CancelledError``.

The SDK's job-take loop looks for the next job once a second while the worker is busy, so a worker that answers a
job idles up to a second before it asks for the next (5-10 % of a 10-s trial). :func:`prompt_job_scaler` makes it
ask the moment a job ends (one hook of the SDK's ``JobScaler``, checked against the pinned SDK; the SDK's own loop when
the hook is not there or ``HPO_WORKER_PROMPT_TAKE=0``). The client keeps jobs queued on the endpoint
(``queue_ahead``), so the next job is waiting.

Environment:
    HPO_WORKER_CONCURRENCY   jobs one worker runs at a time (default 1). Keras seeds and sessions are per process,
                             so only 1 gives bit-reproducible trials.
    HPO_WORKER_WARMUP        1 (default): import and configure TensorFlow before taking the first job.
    HPO_WORKER_PROMPT_TAKE   1 (default): ask for the next job the moment one ends; 0: the SDK's once-a-second look.
    BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, BUCKET_NAME
                             object storage for own data and returned models (RunPod's names; hpo.objectstore)
    HPO_CACHE_DIR            where fetched data is cached (default /runpod-volume/hpo-cache when a network volume
                             is mounted, else ~/.cache/hpo)

Run ``python runpod_worker/handler.py`` (no RunPod environment) to train ``test_input.json`` once and exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parents[1] / "src"
if (_SRC / "hpo").is_dir() and str(_SRC) not in sys.path:  # a checkout that is not installed
    sys.path.insert(0, str(_SRC))

from hpo import artifacts, catalog, datafiles, objectstore  # noqa: E402 - no TensorFlow, no boto3 until used
from hpo.exceptions import ConfigError, DatasetError  # noqa: E402
from hpo.protocol import EpochReport, TrialJob, TrialResult  # noqa: E402
from hpo.redact import mask_text  # noqa: E402
from hpo.worker import (MAX_INPUT_BYTES, InvalidInput, Trainer, TrialRun, internal_error, invalid_input,  # noqa: E402
                        parse_input)

__all__ = ["Worker", "Trainer", "health_info", "serve", "MAX_INPUT_BYTES"]

log = logging.getLogger("hpo.worker")

#: Most epochs repeated in each progress update (the client keeps the ones it has seen).
PROGRESS_EPOCHS = 200


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


def _job_id(job: Any) -> str:
    """The SDK job's id for log lines: short and printable whatever the job holds."""
    raw = job.get("id") if isinstance(job, dict) else None
    text = raw if isinstance(raw, str) else repr(type(raw).__name__)
    return text[:80] if text.isprintable() else ascii(text[:80])


class Worker:
    """The SDK's handler and concurrency modifier, and the jobs in flight.

    ``trainer`` has run_trial's signature; the dispatch benchmark swaps in one that sleeps.
    """

    def __init__(self, trainer: Trainer | None = None, *, concurrency: int | None = None,
                 max_input_bytes: int = MAX_INPUT_BYTES) -> None:
        if trainer is None:
            from hpo.training import run_trial  # imports TensorFlow only when a trial runs

            trainer = run_trial
        self.trainer = trainer
        self.concurrency = int(concurrency if concurrency is not None
                               else _env_number("HPO_WORKER_CONCURRENCY", 1, minimum=1, integer=True))
        self.max_input_bytes = max_input_bytes
        self.worker_id = _worker_id()
        self.executed_on = f"runpod:{self.worker_id}"
        self._running: dict[str, TrialRun] = {}  # SDK job id -> the job in flight
        self._tail_s = 0.0  # learned: time from the last epoch's end to the trainer's return (evaluation)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency + 2,
                                                               thread_name_prefix="hpo-trial")
        self._publish = bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))  # local test runs have nowhere to post to

    # -- the SDK's hooks (public API: runpod.serverless.start's config) ------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"handler": self.handler, "concurrency_modifier": self.concurrency_modifier}

    def concurrency_modifier(self, current: int) -> int:
        """Called by the SDK's job-take loop before each decision to ask for jobs: the configured concurrency, never
        None, and constant (the SDK resizes its job queue only while no job is in flight)."""
        return self.concurrency

    async def handler(self, job: Any) -> dict[str, Any]:
        """The SDK's handler: never raises (but re-raises cancellation). Bad input -> ``invalid_input``; anything
        unexpected -> ``internal`` with a one-line reason, the traceback (secrets masked) on the worker's log."""
        job_id = _job_id(job)
        try:
            try:
                request = self.parse(job.get("input") if isinstance(job, dict) else None)
            except InvalidInput as exc:
                answer = invalid_input(exc)
                print(f"hpo-worker: job {job_id} rejected: {answer['error']}", flush=True)
                return answer
            if request is None:
                return {"health": await asyncio.get_running_loop().run_in_executor(
                    self._executor, health_info, self.worker_id, self.concurrency)}
            limited = request.by_deadline(time.time())  # the seconds the job waited in the queue are spent
            if limited.time_limit_s != request.time_limit_s:
                print(f"hpo-worker: job {job_id} ({request.trial_id}) started about "
                      f"{request.time_limit_s - limited.time_limit_s:.1f} s after it was sent; time limit "
                      f"{request.time_limit_s:g} s -> {limited.time_limit_s:g} s", flush=True)
            return await self._train(job, limited)
        except Exception as exc:  # noqa: BLE001 - the last resort: the handler answers, whatever went wrong
            return internal_error(job_id, exc)

    def parse(self, raw: Any) -> TrialJob | None:
        """The TrialJob in ``raw``, or None for the health command; InvalidInput with a clear message otherwise
        (:func:`hpo.worker.parse_input`, exactly as the local worker loop parses)."""
        request = parse_input(raw, max_input_bytes=self.max_input_bytes, commands=("health",))
        return None if isinstance(request, str) else request

    # -- training ---------------------------------------------------------------------------------------------
    def _progress(self, run: TrialRun) -> dict[str, Any]:
        end = run.expected_end(self._tail_s)
        return {"hpo_progress": {"trial_id": run.job.trial_id, "worker": self.executed_on,
                                 "epochs": run.reports[-PROGRESS_EPOCHS:],
                                 "elapsed_s": round(time.monotonic() - run.started, 3),
                                 "eta_s": None if end is None else round(max(0.0, end - time.monotonic()), 3),
                                 "training_done": run.training_done}}

    async def _fetch_data(self, sdk_job: dict[str, Any], trial: TrialJob) -> dict[str, Any] | None:
        """Fetch and hash-check the job's own data before training; the error answer when it cannot be used."""
        if trial.data_uri is None:
            return None
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, objectstore.fetch, trial.data_uri,
                                                             trial.data_sha256)
        except (DatasetError, ConfigError) as exc:
            answer = {"error": mask_text(f"the job's data cannot be used: {exc}"), "error_kind": "invalid_input"}
            print(f"hpo-worker: job {_job_id(sdk_job)} ({trial.trial_id}) rejected: {answer['error']}", flush=True)
            return answer
        return None

    def _run_job(self, run: TrialRun, on_report: Any) -> dict[str, Any]:
        """Train ``run`` (in a worker thread); with ``return_model``, into a temporary .keras file that is attached
        to the result (bucket or inline) and then removed."""
        if not run.job.return_model:
            return run.train(self.trainer, on_report=on_report, executed_on=self.executed_on)
        folder = tempfile.mkdtemp(prefix="hpo-model-")
        try:
            path = os.path.join(folder, "model.keras")
            answer = run.train(self.trainer, on_report=on_report, executed_on=self.executed_on, save_model_to=path)
            if not isinstance(answer.get("trial_result"), dict) or run.stop.is_set():
                return answer  # no result, or a cancelled job: its answer goes nowhere, so no upload either
            result = TrialResult.from_dict(answer["trial_result"])
            try:
                store = objectstore.default_store()
            except ConfigError as exc:  # a misconfigured bucket: the model may still come back inline
                store = None
                result = result.replace(details={**result.details, "model_storage_error": mask_text(str(exc))})
            return {"trial_result": artifacts.attach_model(result, path, run.job.trial_id, store).to_dict()}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _train(self, sdk_job: dict[str, Any], trial: TrialJob) -> dict[str, Any]:
        import runpod

        refused = await self._fetch_data(sdk_job, trial)
        if refused is not None:
            return refused
        run = TrialRun(trial, key=_job_id(sdk_job))
        self._running[run.key] = run
        loop = asyncio.get_running_loop()

        def on_report(run: TrialRun, report: EpochReport) -> None:  # in the training thread
            if not self._publish or run.stop.is_set() or report.epoch >= trial.max_epochs:
                return  # the result follows at once; a last progress post would only race it
            try:
                runpod.serverless.progress_update(sdk_job, self._progress(run))
            except Exception:  # noqa: BLE001 - progress is best effort
                log.exception("progress update failed")

        future = loop.run_in_executor(self._executor, functools.partial(self._run_job, run, on_report))
        try:
            answer = await asyncio.shield(future)
        except asyncio.CancelledError:
            run.cancel()
            at = run.epochs
            print(f"hpo-worker: job {run.key} ({trial.trial_id}) cancelled after epoch {at}; stopping after the "
                  "batch in training", flush=True)
            while not future.done():
                try:
                    await asyncio.wait({future})
                except asyncio.CancelledError:
                    continue
            print(f"hpo-worker: job {run.key} ({trial.trial_id}) cancelled; training stopped after epoch "
                  f"{run.epochs} (cancel arrived after epoch {at})", flush=True)
            raise
        finally:
            self._running.pop(run.key, None)
            if run.epoch_ends and future.done() and not future.cancelled():
                tail = max(0.0, time.monotonic() - run.epoch_ends[-1])
                self._tail_s = 0.5 * self._tail_s + 0.5 * min(tail, 600.0)
        result = answer.get("trial_result")
        if isinstance(result, dict):
            print(f"hpo-worker: job {run.key} ({trial.trial_id}) {result.get('status')} after "
                  f"{result.get('epochs_run')} epoch(s) in {time.monotonic() - run.started:.1f} s", flush=True)
        return answer


def health_info(worker_id: str = "", concurrency: int = 1) -> dict[str, Any]:
    """What this worker can do: TensorFlow version, visible GPUs, datasets on disk (baked into the image)."""
    from hpo.version import __version__
    from hpo.training import configure_tensorflow

    configure_tensorflow()
    import tensorflow as tf

    baked = {name: ("generated" if catalog.is_generated(name) else
                    ("baked" if datafiles.locate(name) is not None else "missing (downloaded on first use)"))
             for name in catalog.DATASET_NAMES}
    try:
        store = objectstore.default_store()
        storage = f"{store.where} (bucket {store.bucket})" if store is not None else None
    except ConfigError as exc:
        storage = f"misconfigured: {exc}"
    return {"hpo_version": __version__, "tensorflow": tf.__version__, "python": platform.python_version(),
            "gpus": [gpu.name for gpu in tf.config.list_physical_devices("GPU")],
            "cuda_build": bool(tf.test.is_built_with_cuda()), "datasets": baked, "worker_id": worker_id,
            "concurrency": concurrency, "object_storage": mask_text(storage)}


def prompt_job_scaler(base: type) -> type:
    """``base`` (the SDK's ``JobScaler``) taking the next job the moment one ends.

    The SDK's ``get_jobs`` loop awaits ``set_scale()`` first on every turn, then sleeps a second when the worker is
    full. This subclass waits at the end of ``set_scale`` while the worker is full until one of its jobs ends (its
    result already posted: ``handle_job`` returns after that), at most a second at a time, so the loop finds room and
    asks at once. Nothing else changes: the fetch, the queue, cancellation and shutdown are the SDK's."""

    class PromptJobScaler(base):  # type: ignore[misc, valid-type]
        prompt_take = True

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__(config)
            self._job_ended = asyncio.Event()

        async def set_scale(self) -> None:
            await super().set_scale()
            while self.is_alive():
                self._job_ended.clear()  # (no await between the check and the wait: no end is missed)
                if self.current_occupancy() < self.current_concurrency:
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._job_ended.wait(), timeout=1.0)

        async def handle_job(self, session: Any, job: dict[str, Any]) -> None:
            try:
                await super().handle_job(session, job)
            finally:
                self._job_ended.set()

    PromptJobScaler.__name__ = PromptJobScaler.__qualname__ = "PromptJobScaler"
    return PromptJobScaler


def install_prompt_take() -> bool:
    """Use :func:`prompt_job_scaler` for the SDK's worker loop (``HPO_WORKER_PROMPT_TAKE`` not 0, and the SDK has the
    hooks it relies on); whether it is in use."""
    from runpod.serverless.modules import rp_scale

    scaler = rp_scale.JobScaler
    if getattr(scaler, "prompt_take", False):
        return True
    hooks = ("set_scale", "handle_job", "is_alive", "current_occupancy", "get_jobs")
    if os.environ.get("HPO_WORKER_PROMPT_TAKE", "1") == "0" or not all(hasattr(scaler, h) for h in hooks):
        return False
    rp_scale.JobScaler = prompt_job_scaler(scaler)
    return True


def serve(worker: Worker) -> None:
    """Start the SDK's worker loop (or, without RunPod's environment, run test_input.json once)."""
    import runpod

    prompt = install_prompt_take()
    print(f"hpo-worker: next job taken {'as soon as one ends' if prompt else 'by the SDK loop (once a second)'}",
          flush=True)

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
    print(f"hpo-worker: {worker.executed_on} serving (concurrency {worker.concurrency})", flush=True)
    serve(worker)


if __name__ == "__main__":
    main()
