"""Execution backends: where trials run. The dispatcher and the session see only :class:`Backend` (its contract:
hpo.backends._base; checked for every backend by tests/test_backend_contract.py)."""

from ._base import Backend, CancelToken, EpochHandler, started_late

__all__ = ["Backend", "CancelToken", "EpochHandler", "LocalBackend", "started_late"]


def __getattr__(name: str):  # lazy: keep `import hpo.backends` light
    if name == "LocalBackend":
        from .local import LocalBackend

        return LocalBackend
    raise AttributeError(name)
