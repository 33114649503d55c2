"""tracking=mlflow: one MLflow run per trial, in an experiment named after the hpo run (its run_name).

Each run holds the trial's params; its per-epoch metrics (``step`` = epoch, 1-based: val_accuracy, val_loss,
accuracy, loss, learning_rate -- whatever the trial's history has); its final figures (``final_val_accuracy``,
``final_val_loss``, ``final_test_accuracy``, ``final_test_loss``: the weights the trial kept), ``objective``,
``overall_health`` and ``health/<component>``, ``epochs``, ``train_seconds``, ``param_count``; tags
``hpo.trial_number``, ``hpo.state``, ``hpo.executed_on``, ``hpo.device`` (and why it failed or was pruned); and
``model/best_model.keras`` when the trial's model was the run's best. Status: FINISHED (complete), KILLED (pruned),
FAILED (failed). Uses the tracking client only (``mlflow-skinny`` suffices); never imports TensorFlow.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ..redact import mask_text, register_secret
from . import TrialListener

__all__ = ["MlflowListener", "TAG_TRIAL", "MODEL_ARTIFACT_DIR"]

TAG_TRIAL = "hpo.trial_number"
MODEL_ARTIFACT_DIR = "model"
_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "fail": "FAILED"}
_FINAL = (("final_val_accuracy", "val_accuracy"), ("final_val_loss", "val_loss"),
          ("final_test_accuracy", "test_accuracy"), ("final_test_loss", "test_loss"),
          ("overall_health", "overall_health"), ("epochs", "epochs"), ("epochs_trained", "epochs_trained"),
          ("best_epoch", "best_epoch"), ("train_seconds", "train_seconds"), ("param_count", "param_count"))
_MAX_BATCH = 1000  # MLflow's log_batch limit of metrics per call
_MAX_TAG = 5000


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ms(moment: Any) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


class MlflowListener(TrialListener):
    name = "MLflow"
    wants_models = True

    def __init__(self, uri: str, run_dir: Path, *, experiment: str, tags: dict[str, str] | None = None,
                 default_store: bool = True) -> None:
        for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"):  # never in a log line or note
            register_secret(os.environ.get(var))
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..."
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment_name = uri, experiment
        self.client = MlflowClient(tracking_uri=uri)
        # The run folder's own store keeps its artifacts beside it; a given URI uses its server's artifact root.
        location = (Path(run_dir) / "mlartifacts").resolve().as_uri() if default_store else None
        self.experiment_id = self._experiment(experiment, location, dict(tags or {}, **{"hpo.run_name": experiment}))
        self._tags = {k: str(v) for k, v in (tags or {}).items()}
        self._runs = self._logged_runs()  # trial number -> run id (a resumed run logs only the rest)
        self._with_model: set[int] = set()

    def _experiment(self, name: str, location: str | None, tags: dict[str, str]) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=location, tags=tags)
            except MlflowException as exc:  # another process sharing the study created it meanwhile
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise exc from None
        if found.lifecycle_stage != "active":
            raise RuntimeError(f"the MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                               "or use another run_name")
        return found.experiment_id

    def _logged_runs(self) -> dict[int, str]:
        runs: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            for run in page:
                value = run.data.tags.get(TAG_TRIAL, "")
                if value.isdigit():
                    runs.setdefault(int(value), run.info.run_id)
            token = getattr(page, "token", None)
            if not token:
                return runs

    # -- one trial ----------------------------------------------------------------------------------------------------
    def trial_finished(self, record: dict[str, Any], model: Path | None) -> None:
        number = record["number"]
        if number in self._runs:  # logged by an earlier session of this run
            if model is not None:
                self.add_model(number, model)
            return
        run = self.client.create_run(self.experiment_id, start_time=_ms(record.get("started")),
                                     tags=self._run_tags(record), run_name=f"trial-{number}")
        run_id = run.info.run_id
        self._runs[number] = run_id
        try:
            self._log_numbers(run_id, record)
            if model is not None:
                self.client.log_artifact(run_id, str(model), artifact_path=MODEL_ARTIFACT_DIR)
                self._with_model.add(number)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, _STATUS.get(record["state"], "FINISHED"),
                                   end_time=_ms(record.get("finished")))

    def _run_tags(self, record: dict[str, Any]) -> dict[str, str]:
        tags = dict(self._tags)
        tags.update({TAG_TRIAL: str(record["number"]), "hpo.state": record["state"],
                     "hpo.run_name": self.experiment_name})
        for key in ("executed_on", "device", "reason", "fallback_reason", "process"):
            if record.get(key):
                tags[f"hpo.{key}"] = mask_text(str(record[key]))[:_MAX_TAG]
        if record.get("retry_of") is not None:
            tags["hpo.retry_of"] = str(record["retry_of"])
        return tags

    def _log_numbers(self, run_id: str, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        now = _ms(record.get("finished")) or int(time.time() * 1000)
        params = [Param(str(k), str(v)) for k, v in sorted(record["params"].items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(run_id, params=params[i:i + 100])
        metrics = []
        for key, values in sorted((record.get("history") or {}).items()):
            for epoch, value in enumerate(values or [], start=1):
                if _number(value) is not None:
                    metrics.append(Metric(str(key), float(value), now, epoch))
        last = int(record.get("epochs") or 0)
        finals = [(name, record.get(key)) for name, key in _FINAL]
        value = record.get("value")
        if isinstance(value, list):
            finals += [(f"objective_{i}", v) for i, v in enumerate(value)]
        else:
            finals.append(("objective", value))
        finals += [(f"health/{k}", v) for k, v in sorted((record.get("health") or {}).items())
                   if k != "overall_health"]
        metrics += [Metric(name, float(v), now, last) for name, v in finals if _number(v) is not None]
        for i in range(0, len(metrics), _MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _MAX_BATCH])

    def add_model(self, number: int, model: Path) -> None:
        run_id = self._runs.get(number)
        if run_id is None or number in self._with_model:
            return
        present = {Path(f.path).name for f in self.client.list_artifacts(run_id, MODEL_ARTIFACT_DIR)}
        if model.name not in present:
            self.client.log_artifact(run_id, str(model), artifact_path=MODEL_ARTIFACT_DIR)
        self._with_model.add(number)
