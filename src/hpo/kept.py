"""Where a trial's files for the final's ensemble lie (``final_ensemble``): the one convention shared by the trainer,
which writes them beside the trial's model file, and the run's model files (:class:`hpo.results.ModelFiles`), which
keep the best completed trials' in the folder :data:`KEPT_DIR` next to them, where a final's trainer reads them.

    models/trial-7.keras          the trial's model (a final's: the ensemble, when it chose one)
    models/trial-7.npz            its predictions: ``val`` and ``test`` class probabilities (float32)
    models/trial-7.single.keras   a final that chose an ensemble: its own model alone
    models/kept/trial-7.keras     kept (linked): the trial's own model alone, and its ``.npz``
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["KEPT_DIR", "CANDIDATES", "kept_dir", "predictions_path", "single_path", "trial_number"]

KEPT_DIR = "kept"
#: the most completed trials kept for a final's ensemble (the best by objective)
CANDIDATES = 4
_TRIAL = re.compile(r"^trial-(\d+)$")


def predictions_path(model: Path) -> Path:
    return model.with_suffix(".npz")


def single_path(model: Path) -> Path:
    return model.with_name(model.stem + ".single.keras")


def kept_dir(model: Path) -> Path:
    return model.parent / KEPT_DIR


def trial_number(model: Path) -> int | None:
    """The trial number of a model file named ``trial-N.keras`` (None for any other name)."""
    found = _TRIAL.match(model.stem)
    return int(found.group(1)) if found else None
