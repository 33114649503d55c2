"""The one interface the dispatcher and the session see: submit a TrialJob, get epoch reports and a TrialResult back.

Every capability they use is here, with its documented default: ``name``, ``queue_ahead``, ``notes``, ``probe``,
``start``, ``run`` and ``close``. Nothing about a backend is found by probing (no ``getattr`` / ``hasattr``);
tests/test_backend_contract.py runs one contract suite against the local, RunPod and fallback backends.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
import time
from collections.abc import Callable

from ..protocol import EpochReport, TrialJob, TrialResult

__all__ = ["Backend", "CancelToken", "EpochHandler", "started_late"]

EpochHandler = Callable[[EpochReport], None]


def started_late(job: TrialJob, since: float) -> TrialJob:
    """``job`` as its trainer should get it now: ``time_limit_s`` counts from the call to :meth:`Backend.run`
    (``since``, a ``time.monotonic()`` reading), so what a backend spent before the trainer starts (a worker process
    started for the job, a remote attempt before a fallback) is taken off; at least 1 s is left."""
    late = time.monotonic() - since
    if job.time_limit_s is None or late < 0.05:
        return job
    return dataclasses.replace(job, time_limit_s=round(max(1.0, job.time_limit_s - late), 1))


class CancelToken:
    """Handed to :meth:`Backend.run` with each job; the dispatcher cancels a trial through it (prune, Ctrl-C).

    ``hard`` asks the backend not to wait for the current epoch to end (interrupts); otherwise the trainer stops
    after the epoch it is in. ``discard`` (set by the first cancel only): a prune, the trial's result is only its
    validation figure, so a trainer that hears of it skips the test evaluation (:class:`hpo.worker.StopFlag`).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.hard = False
        self.discard = False

    def cancel(self, reason: str, *, hard: bool = False, discard: bool = False) -> None:
        if not self._event.is_set():
            self.reason, self.discard = reason, discard
        self.hard = self.hard or hard
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class Backend(abc.ABC):
    """Executes trials. Implementations: :class:`~hpo.backends.local.LocalBackend` (worker subprocesses),
    :class:`~hpo.backends.runpod.RunPodBackend` (serverless HTTP API) and
    :class:`~hpo.backends.fallback.FallbackBackend` (a remote backend with a local one behind it).

    The contract (tests/test_backend_contract.py checks it for all three):

    - :meth:`run` is called from several dispatcher threads at once and blocks until the trial ends. It returns a
      TrialResult with the job's ``trial_id``: ``completed``; ``failed`` for the trial's own failure (never an
      exception), including a trial that runs past ``timeout_s`` (its error names the time limit); ``stopped`` when
      ``cancel`` fires (soft: after the epoch in progress; hard: at once; the reason is the token's, which the
      result's ``error`` may repeat). ``on_epoch`` gets each epoch once, in increasing order. It raises
      :class:`~hpo.exceptions.BackendUnavailable` only when the backend itself cannot run the trial (it cannot
      start, it is closed, the service is down), so the caller can retry or fall back.
    - ``job.time_limit_s`` (time_budget_minutes) counts from the call to :meth:`run`: the trainer gets what is left
      when it starts (:func:`started_late`; a worker process started for the job, a failed remote attempt). RunPod:
      the job carries ``deadline_unix`` (the call's wall clock plus the limit) and the worker takes the seconds it
      waited in the endpoint's queue off (:meth:`~hpo.protocol.TrialJob.by_deadline`).
    - ``save_model_to``: where a trial that trains on this machine (``executed_on`` "local:...") saves its best
      model as a ``.keras`` file; a remote trial's model is brought back there (RunPod: through the bucket or
      inline, :mod:`hpo.artifacts`).
    - :meth:`start` and :meth:`close` may be called more than once; :meth:`close` stops the trials still running
      (their ``run`` returns ``stopped``) and releases workers and connections.
    """

    #: short name for progress lines and the run summary ("local", "runpod")
    name: str = "backend"

    @property
    def queue_ahead(self) -> int:
        """Trials the dispatcher keeps submitted beyond ``concurrent_workers`` (a remote queue: a worker that
        finishes finds its next job waiting); 0 for backends that run what they are given at once."""
        return 0

    @property
    def notes(self) -> list[str]:
        """What the run's summary should say about this backend (e.g. why trials ran locally); [] when nothing."""
        return []

    def probe(self) -> str | None:
        """Why the backend cannot run trials right now (a short reason), or None when it can. Quick, never raises."""
        return None

    def start(self) -> None:
        """Prepare (start workers, check the service); a second call does nothing. Raises BackendUnavailable if the
        backend cannot work."""

    @abc.abstractmethod
    def run(self, job: TrialJob, *, on_epoch: EpochHandler | None = None, cancel: CancelToken | None = None,
            timeout_s: float | None = None, save_model_to: str | None = None) -> TrialResult:
        """Run one trial to its end (completed, failed, or stopped through ``cancel``); see the class doc."""

    def close(self) -> None:
        """Stop the trials still running, release workers and connections; a second call does nothing."""

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
