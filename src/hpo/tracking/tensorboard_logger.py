"""tensorboard=true: each trial's per-epoch metrics as TensorBoard scalars in RUN_DIR/tensorboard/trial-N/.

Written with tensorboardX's SummaryWriter (pure Python and protobuf: it never imports TensorFlow), from the trial's
history (``global_step`` = epoch, 1-based; tags as the history's keys: val_accuracy, val_loss, accuracy, loss,
learning_rate), plus the trial's params and outcome as a text summary. ``tensorboard --logdir RUN_DIR/tensorboard``
shows every trial side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..redact import mask_text
from . import TrialListener

__all__ = ["TensorBoardListener", "EVENTS_GLOB"]

EVENTS_GLOB = "events.out.tfevents.*"


class TensorBoardListener(TrialListener):
    name = "TensorBoard"

    def __init__(self, root: Path) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter
        self.root = Path(root)

    def trial_finished(self, record: dict[str, Any], model: Path | None) -> None:
        folder = self.root / f"trial-{record['number']}"
        if folder.is_dir() and any(folder.glob(EVENTS_GLOB)):
            return  # logged by an earlier session of this run
        finished = record.get("finished")
        walltime = finished.timestamp() if finished is not None else None
        writer = self._writer(logdir=str(folder))
        try:
            for key, values in sorted((record.get("history") or {}).items()):
                for epoch, value in enumerate(values or [], start=1):
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                        writer.add_scalar(str(key), float(value), global_step=epoch, walltime=walltime)
            summary = {"state": record["state"], "params": record["params"], "value": record.get("value"),
                       "val_accuracy": record.get("val_accuracy"), "test_accuracy": record.get("test_accuracy"),
                       "overall_health": record.get("overall_health"), "epochs": record.get("epochs"),
                       "executed_on": record.get("executed_on")}
            text = mask_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
            writer.add_text("trial", f"```\n{text}\n```", global_step=0, walltime=walltime)
        finally:
            writer.close()
