"""hpo: hyperparameter optimization for Keras models, on local workers or RunPod serverless GPUs.

    import hpo
    result = hpo.optimize(dataset="fashion_mnist", trials=8)

Importing hpo is light: TensorFlow is imported only where training happens (worker processes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = [
    "__version__",
    "optimize",
    "load_results",
    "OptimizationConfig",
    "OptimizationResult",
    "HPOError",
    "ConfigError",
    "DatasetError",
]

from .exceptions import ConfigError, DatasetError, HPOError

if TYPE_CHECKING:
    from .config import OptimizationConfig
    from .results import OptimizationResult
    from .rundir import load_results
    from .session import optimize

_LAZY = {
    "optimize": ("session", "optimize"),
    "load_results": ("rundir", "load_results"),
    "OptimizationConfig": ("config", "OptimizationConfig"),
    "OptimizationResult": ("results", "OptimizationResult"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
