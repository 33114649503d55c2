"""The exception hierarchy. The type of an exception decides what happens next.

- ``ConfigError`` / ``DatasetError``: the user's input is wrong or data is missing. The run stops before any trial
  starts; the CLI prints the message (no traceback) and exits with code 2.
- ``TrialFailed``: one trial failed. It is recorded with its params and reason and the study goes on.
- ``BackendUnavailable``: the execution backend cannot be reached. The orchestrator retries or falls back.
"""

from __future__ import annotations

__all__ = [
    "HPOError",
    "ConfigError",
    "DatasetError",
    "ProtocolError",
    "TrialFailed",
    "BackendUnavailable",
    "RunAborted",
]


class HPOError(Exception):
    """Root of every error hpo raises on purpose."""


class ConfigError(HPOError, ValueError):
    """An option is unknown, mistyped or out of range. The message says what was wrong and what is allowed;
    ``field`` names the option when one option is to blame (the REST API reports it as the error's location)."""

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DatasetError(HPOError):
    """A dataset is unknown, or its files are missing and cannot be downloaded (the message says where to put them)."""


class ProtocolError(HPOError, ValueError):
    """A TrialJob / TrialResult JSON document is malformed (missing, unknown or mistyped fields, wrong version)."""


class TrialFailed(HPOError):
    """One trial failed; the study records it and goes on."""


class BackendUnavailable(HPOError):
    """The execution backend cannot be reached (network, service down). Retry or fall back."""


class RunAborted(HPOError):
    """The whole run stopped on purpose (e.g. too many consecutive failed trials)."""
