"""The worker core: one job request in, one answer out. Shared by the local worker loop (:mod:`hpo.backends._worker`,
JSON lines on stdin/stdout) and the RunPod handler (``runpod_worker/handler.py``, the ``runpod`` SDK), so both refuse,
train, stop and answer alike; each keeps only its transport.

    request                               answer
    {TrialJob as JSON}                    {"trial_result": {TrialResult as JSON}}      (a failed trial is a result too)
    anything else                         {"error": "<what is wrong>", "error_kind": "invalid_input"}
    a trainer that broke its contract     {"error": "the trainer raised ...", "error_kind": "worker_error"}
    an unexpected exception               {"error": "internal worker error (<type>: <first line>) ...",
                                           "error_kind": "internal"}; the traceback, secrets masked, goes to the log

:func:`parse_input` measures size (MAX_INPUT_BYTES), nesting depth (MAX_INPUT_DEPTH) and key types iteratively before
anything walks the input recursively, then parses it with ``TrialJob.from_dict`` (params checked against the search
space the orchestrator samples from). :class:`TrialRun` is one job in flight: the trainer polls its stop flag (set by
a cancel, a prune, the parent's decision), and it keeps the epochs reported and the job's early-stopping rule, so the
transport knows when training is over and when the trainer should return. :func:`handle` is the whole path for a
synchronous transport. Nothing here imports TensorFlow; the trainer is passed in (``hpo.training.run_trial``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .exceptions import ProtocolError
from .protocol import MAX_JOB_INPUT_BYTES, MAX_JSON_DEPTH, EpochReport, TrialJob, TrialResult, check_json_bounds
from .redact import mask_text

__all__ = ["MAX_INPUT_BYTES", "MAX_INPUT_DEPTH", "InvalidInput", "StopFlag", "Trainer", "TrialRun", "parse_input",
           "handle", "invalid_input", "worker_error", "internal_error", "result_of", "stops_early", "type_name"]

log = logging.getLogger("hpo.worker")

#: Inputs larger than this are refused before parsing (a TrialJob is well under MAX_JOB_BYTES = 1 KiB).
MAX_INPUT_BYTES = MAX_JOB_INPUT_BYTES
#: Inputs nested deeper than this are refused before anything walks them recursively.
MAX_INPUT_DEPTH = MAX_JSON_DEPTH

#: run_trial's signature: trainer(job, on_epoch(epoch, metrics), should_stop(), *, executed_on=..., save_model_to=...)
Trainer = Callable[..., TrialResult]
Answer = dict[str, Any]


class InvalidInput(ValueError):
    """The request input is not something this worker runs."""


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def parse_input(raw: Any, *, max_input_bytes: int = MAX_INPUT_BYTES, commands: Sequence[str] = ()) -> TrialJob | str:
    """The TrialJob in ``raw``, or the name of one of ``commands`` (``{"command": name}``); InvalidInput with a clear
    message otherwise. Size, nesting depth and key types are measured first, without recursion."""
    accepted = " or ".join(["a TrialJob", *(f'{{"command": "{c}"}}' for c in commands)])
    if not isinstance(raw, dict):
        raise InvalidInput(f"the input must be a JSON object ({accepted}), got {type_name(raw)}")
    try:
        check_json_bounds(raw, max_bytes=max_input_bytes, max_depth=MAX_INPUT_DEPTH)
    except ProtocolError as exc:
        raise InvalidInput(str(exc)) from None
    try:
        size = len(json.dumps(raw, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"the input is not plain JSON: {str(exc)[:200]}") from None
    if size > max_input_bytes:
        raise InvalidInput(f"the input is {size:,} bytes; a job is at most {max_input_bytes:,} bytes "
                           "(datasets are baked into the worker image: send names and numbers, not data)")
    if "command" in raw:
        name = raw.get("command")
        if isinstance(name, str) and name in commands and len(raw) == 1:
            return name
        allowed = (f"the only command is {{\"command\": \"{commands[0]}\"}}" if len(commands) == 1 else
                   f"commands: {', '.join(commands)}" if commands else "this worker takes TrialJobs only")
        raise InvalidInput(f"unknown command {json.dumps(name)[:60]}; {allowed}")
    try:
        return TrialJob.from_dict(raw)
    except ProtocolError as exc:
        raise InvalidInput(f"invalid TrialJob: {exc}") from None


# -- answers ----------------------------------------------------------------------------------------------------------

def invalid_input(exc: BaseException) -> Answer:
    return {"error": mask_text(str(exc)), "error_kind": "invalid_input"}


def worker_error(text: str) -> Answer:
    return {"error": mask_text(text), "error_kind": "worker_error"}


def internal_error(label: str, exc: BaseException) -> Answer:
    """The answer to an unexpected exception: its type and first line (masked), never a traceback; the traceback
    goes to the worker's log, masked."""
    try:
        log.error("job %s: internal error\n%s", label, mask_text(traceback.format_exc()))
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


def result_of(answer: Answer, raw: Any = None) -> TrialResult:
    """The TrialResult an answer stands for: the trial's own, or a failed trial with the answer's error (a refused or
    broken job). ``raw`` (the request) names the trial when the answer has no result."""
    if isinstance(answer.get("trial_result"), dict):
        return TrialResult.from_dict(answer["trial_result"])
    trial_id = raw.get("trial_id") if isinstance(raw, dict) else None
    usable = isinstance(trial_id, str) and 0 < len(trial_id) <= 200
    return TrialResult(trial_id=trial_id if usable else "?", status="failed",  # type: ignore[arg-type]
                       error=str(answer.get("error") or "the worker gave no answer"))


def stops_early(job: TrialJob, epochs_run: int, best_epoch: int | None) -> bool:
    """The job's early-stopping rule, as the trainer applies it: at least ``min_epochs`` trained and ``patience``
    epochs without a better validation accuracy."""
    return epochs_run >= job.min_epochs and best_epoch is not None and epochs_run - best_epoch >= job.patience


# -- one job in flight ------------------------------------------------------------------------------------------------

class StopFlag:
    """The trainer's ``should_stop``: called after every epoch and before every batch, true once the trial is to
    stop. ``discard``: the stop
    is a prune, so the trial's result is only its validation figure (it is never the run's answer nor an ensemble's
    member): the trainer skips what only a kept trial needs, the test evaluation and the predictions kept for an
    ensemble. Set by the first stop only (a cut that came first keeps the trial whole)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.discard = False

    def set(self, *, discard: bool = False) -> None:
        if not self._event.is_set():
            self.discard = discard
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()


class TrialRun:
    """One job in flight on a worker: the stop flag its trainer polls after every epoch, the epochs it reported,
    whether training is over (the last epoch, the early-stopping rule, or a stop), and when the trainer is expected
    to return. ``key`` is the transport's name for the job (the RunPod job id)."""

    def __init__(self, job: TrialJob, key: str | None = None) -> None:
        self.job = job
        self.key = key if key is not None else job.trial_id
        self.started = time.monotonic()
        self.stop = StopFlag()
        self.reports: list[dict[str, Any]] = []
        self.epoch_ends: list[float] = []
        self.best_acc = -math.inf
        self.best_epoch: int | None = None
        self.training_done = False
        self._lock = threading.Lock()

    def cancel(self, *, discard: bool = False) -> None:
        """The trainer stops after the batch in progress (``discard``: a prune, :class:`StopFlag`)."""
        self.stop.set(discard=discard)

    @property
    def should_stop(self) -> StopFlag:
        return self.stop

    @property
    def epochs(self) -> int:
        return len(self.epoch_ends)

    def record(self, epoch: int, metrics: dict[str, Any]) -> EpochReport:
        """Note an epoch the trainer finished; its report."""
        report = EpochReport(trial_id=self.job.trial_id, epoch=epoch, metrics=metrics)
        with self._lock:
            self.reports.append(report.to_dict())
            self.epoch_ends.append(time.monotonic())
            acc = metrics.get("val_accuracy")
            if acc is not None and acc > self.best_acc:
                self.best_acc, self.best_epoch = acc, epoch
            self.training_done = (epoch >= self.job.max_epochs or stops_early(self.job, epoch, self.best_epoch)
                                  or self.stop.is_set())
        return report

    def expected_end(self, tail_s: float = 0.0) -> float | None:
        """Monotonic time the trainer is expected to return (None until an epoch has ended); ``tail_s``: the time
        from the last epoch's end to the trainer's return (evaluation)."""
        with self._lock:
            k = len(self.epoch_ends)
            if k == 0:
                return None
            last = self.epoch_ends[-1]
            per_epoch = (last - self.epoch_ends[0]) / (k - 1) if k >= 2 else last - self.started
            left = 0 if self.training_done else max(0, self.job.max_epochs - k)
            return last + left * per_epoch + tail_s

    def train(self, trainer: Trainer, *, on_report: Callable[[TrialRun, EpochReport], None] | None = None,
              executed_on: str | None = None, save_model_to: str | None = None) -> Answer:
        """Run the trainer on this job; the answer. ``on_report(run, report)`` is called after every epoch, in the
        training thread (publish progress; wait for the parent's decision and :meth:`cancel`)."""
        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
            report = self.record(epoch, metrics)
            if on_report is not None:
                on_report(self, report)

        options: dict[str, Any] = {"executed_on": executed_on}
        if save_model_to:
            options["save_model_to"] = save_model_to
        try:
            result = trainer(self.job, on_epoch, self.should_stop, **options)
        except Exception as exc:  # noqa: BLE001 - run_trial never raises; another trainer might
            return worker_error(f"the trainer raised {type(exc).__name__}: {exc}")
        if not isinstance(result, TrialResult):
            return worker_error(f"the trainer answered a {type(result).__name__}, not a TrialResult")
        if result.trial_id != self.job.trial_id:  # a trainer bug must never credit another trial's numbers
            return worker_error(f"the trainer answered for trial {result.trial_id!r}, not {self.job.trial_id!r}")
        return {"trial_result": result.to_dict()}


def handle(raw: Any, trainer: Trainer, *, on_report: Callable[[TrialRun, EpochReport], None] | None = None,
           executed_on: str | None = None, save_model_to: str | None = None, label: str = "?",
           max_input_bytes: int = MAX_INPUT_BYTES, on_start: Callable[[TrialRun], None] | None = None) -> Answer:
    """Parse ``raw``, train it, answer (see the module doc); never raises. ``label`` names the job in the log.
    ``on_start(run)``: the run, before it trains (a transport that may stop it at any time keeps it)."""
    try:
        try:
            job = parse_input(raw, max_input_bytes=max_input_bytes)  # no commands: always a TrialJob
        except InvalidInput as exc:
            return invalid_input(exc)
        run = TrialRun(job, label)  # type: ignore[arg-type]
        if on_start is not None:
            on_start(run)
        return run.train(trainer, on_report=on_report, executed_on=executed_on, save_model_to=save_model_to)
    except Exception as exc:  # noqa: BLE001 - the last resort: the worker answers, whatever went wrong
        return internal_error(label, exc)
