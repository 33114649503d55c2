"""Execution backends: where trials run. The orchestrator sees only :class:`Backend`."""

from ._base import Backend, CancelToken, EpochHandler

__all__ = ["Backend", "CancelToken", "EpochHandler", "LocalBackend"]


def __getattr__(name: str):  # lazy: keep `import hpo.backends` light
    if name == "LocalBackend":
        from .local import LocalBackend

        return LocalBackend
    raise AttributeError(name)
