"""The one interface the orchestrator sees: submit a TrialJob, get epoch reports and a TrialResult back."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable

from ..protocol import EpochReport, TrialJob, TrialResult

__all__ = ["Backend", "CancelToken", "EpochHandler"]

EpochHandler = Callable[[EpochReport], None]


class CancelToken:
    """Handed to :meth:`Backend.run` with each job; the orchestrator cancels a trial through it (prune, Ctrl-C).

    ``hard`` asks the backend not to wait for the current epoch to end (interrupts); otherwise the trainer stops
    after the epoch it is in.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.hard = False

    def cancel(self, reason: str, *, hard: bool = False) -> None:
        if not self._event.is_set():
            self.reason = reason
        self.hard = self.hard or hard
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class Backend(abc.ABC):
    """Executes trials. Implementations: :class:`~hpo.backends.local.LocalBackend` (worker subprocesses) and
    :class:`~hpo.backends.runpod.RunPodBackend` (serverless HTTP API).

    ``run`` is called from several orchestrator threads at once and blocks until the trial ends. It never raises for
    a trial's own failure (that is a failed TrialResult); it raises :class:`~hpo.exceptions.BackendUnavailable` when
    the backend itself cannot run the trial, so the orchestrator can retry or fall back.
    """

    name: str = "backend"
    #: trials the dispatcher keeps submitted beyond concurrent_workers (a remote queue: a worker that finishes finds
    #: its next job waiting); 0 for backends that run what they are given at once
    queue_ahead: int = 0

    @property
    def notes(self) -> list[str]:
        """What the run's summary should say about this backend (e.g. why trials ran locally)."""
        return []

    def probe(self) -> str | None:
        """Why the backend cannot run trials right now (a short reason), or None when it can."""
        return None

    def start(self) -> None:
        """Prepare (start workers, check the service). Raise BackendUnavailable if it cannot work."""

    @abc.abstractmethod
    def run(self, job: TrialJob, *, on_epoch: EpochHandler | None = None, cancel: CancelToken | None = None,
            timeout_s: float | None = None, save_model_to: str | None = None) -> TrialResult:
        """Run one trial to its end (completed, failed, or stopped through ``cancel``)."""

    def close(self) -> None:
        """Release workers and connections; running trials are stopped."""

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
