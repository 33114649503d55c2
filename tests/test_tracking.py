"""Experiment tracking (issue 18): tracking=mlflow logs one MLflow run per trial, read back here with the MLflow
client and compared with trials.csv; tensorboard=true writes per-trial event files, read back with a small TFRecord
reader; neither imports TensorFlow; a missing extra is a clear ConfigError (exit 2); tracking errors never fail a
trial or the run."""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import hpo
import hpo.session as session_module
from hpo.backends import Backend
from hpo.cli import main
from hpo.exceptions import ConfigError
from hpo.protocol import TrialResult
from hpo.scoring import overall_health
from hpo.tracking import TENSORBOARD_DIR, mlflow_tracking_uri
from hpo.tracking.mlflow_logger import MODEL_ARTIFACT_DIR, TAG_TRIAL

FAST = dict(max_epochs_per_trial=3, quiet=True, pruner="none", plot_generation="none", warm_start=False)
HEALTH = {"neuron_utilization": 0.8, "gradient_health": 0.7, "generalization": 0.9, "training_stability": 0.6,
          "convergence": 0.5, "efficiency": 0.4}


@pytest.fixture(autouse=True)
def _local_store(monkeypatch):
    """Every test logs to the run folder's own store, whatever the machine's environment says."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


class Epochs(Backend):
    """A fake trainer with per-epoch history (no TensorFlow): trial k trains 1 + k % max_epochs epochs, its numbers
    a known function of its params; the ``fail``-th call fails; each trial 'saves' a model file naming its trial."""

    name = "epochs"

    def __init__(self, fail: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.fail = fail
        self.histories: dict[str, dict[str, list[float]]] = {}
        self._lock = threading.Lock()

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        with self._lock:
            call, self.calls = self.calls, self.calls + 1
        if call == self.fail:
            return TrialResult(trial_id=job.trial_id, status="failed", error="planted failure", executed_on="fake:0")
        base = 0.4 + 0.1 * job.params["conv_blocks"] - job.params["dropout"] / 10
        epochs = 1 + call % job.max_epochs
        history = {"val_accuracy": [round(base + 0.05 * e, 6) for e in range(epochs)],
                   "val_loss": [round(1.5 - 0.2 * e, 6) for e in range(epochs)],
                   "accuracy": [round(base + 0.06 * e, 6) for e in range(epochs)],
                   "loss": [round(1.4 - 0.25 * e, 6) for e in range(epochs)],
                   "learning_rate": [0.001 * (epochs - e) / epochs for e in range(epochs)]}
        self.histories[job.trial_id] = history
        if save_model_to:
            Path(save_model_to).write_bytes(f"model of {job.trial_id}".encode())
        return TrialResult(trial_id=job.trial_id, status="completed", history=history, epochs_run=epochs,
                           best_epoch=epochs, val_metrics={"accuracy": history["val_accuracy"][-1],
                                                           "loss": history["val_loss"][-1]},
                           test_metrics={"accuracy": history["val_accuracy"][-1] - 0.01, "loss": 1.0},
                           health=dict(HEALTH, overall_health=overall_health(HEALTH)), train_seconds=0.5 + call, param_count=1000 + call,
                           executed_on=f"fake:{call}", device="CPU")


def _csv_rows(run_dir: Path) -> dict[int, dict[str, str]]:
    with open(run_dir / "trials.csv", newline="") as fh:
        return {int(row["number"]): row for row in csv.DictReader(fh)}


def _csv_params(row: dict[str, str]) -> dict[str, str]:
    """A trials.csv row's search parameters (columns param_<name>; param_count is a fixed column)."""
    return {k[len("param_"):]: v for k, v in row.items() if k.startswith("param_") and k != "param_count" and v}


def _float(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def _mlflow_runs(run_dir: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_tracking_uri(run_dir))
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, {int(r.data.tags[TAG_TRIAL]): r for r in runs}


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TensorBoard event files in ``folder`` (TFRecord framing, parsed with tensorboardX's protos)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for path in files:
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_mlflow_and_tensorboard_log_every_trial_as_trials_csv_says_and_a_resume_logs_only_the_rest(tmp_path):
    backend = Epochs(fail=2)
    result = hpo.optimize(dataset="synthetic_images", trials=4, output_dir=str(tmp_path), run_name="tracked",
                          tracking="mlflow", tensorboard=True, backend=backend, **FAST)
    run_dir = Path(result.run_dir)
    assert result.completed == 3 and result.failed == 1 and not result.notes
    assert (run_dir / "mlflow.db").is_file()
    rows = _csv_rows(run_dir)
    client, runs = _mlflow_runs(run_dir, "tracked")
    assert sorted(runs) == sorted(rows) == [0, 1, 2, 3]  # one MLflow run per trial

    for number, row in rows.items():
        run = runs[number]
        assert run.data.params == _csv_params(row)
        tags = run.data.tags
        assert tags["hpo.state"] == row["state"] and tags["hpo.executed_on"] == row["executed_on"]
        assert tags["mlflow.runName"] == f"trial-{number}" and tags["hpo.dataset"] == "synthetic_images"
        if row["state"] == "fail":
            assert run.info.status == "FAILED" and "planted failure" in tags["hpo.reason"]
            assert "final_val_accuracy" not in run.data.metrics
            continue
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert metrics["final_val_accuracy"] == _float(row["val_accuracy"])
        assert metrics["final_test_accuracy"] == _float(row["test_accuracy"])
        assert metrics["final_val_loss"] == _float(row["val_loss"])
        assert metrics["overall_health"] == _float(row["overall_health"])
        assert metrics["objective"] == _float(row["value"])
        assert metrics["epochs"] == int(row["epochs"])
        assert {k: metrics[f"health/{k}"] for k in HEALTH} == HEALTH
        epochs = int(row["epochs"])
        history = backend.histories[f"tracked#{number}"]
        assert len(history["val_accuracy"]) == epochs
        for key in ("val_accuracy", "val_loss", "accuracy", "loss", "learning_rate"):
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert logged == list(enumerate(history[key], start=1)), key  # step = epoch, one per epoch

        scalars = read_scalars(run_dir / TENSORBOARD_DIR / f"trial-{number}")
        assert set(scalars) == set(history)
        for key, values in history.items():
            assert [s for s, _ in scalars[key]] == list(range(1, epochs + 1))
            assert [v for _, v in scalars[key]] == pytest.approx(values, rel=1e-6)

    # the best trial's run holds the model that became best_model.keras (the fake wrote its trial id in it)
    best = runs[result.best_trial_number]
    local = Path(client.download_artifacts(best.info.run_id, f"{MODEL_ARTIFACT_DIR}/best_model.keras",
                                           str(tmp_path / "download")))
    assert local.read_bytes() == (run_dir / "best_model.keras").read_bytes()
    others = [n for n in rows if n != result.best_trial_number and rows[n]["state"] == "complete"]
    for number in others:
        names = [Path(a.path).name for a in client.list_artifacts(runs[number].info.run_id, MODEL_ARTIFACT_DIR)]
        # an earlier best may hold the model it had then; never the final best's bytes
        for name in names:
            got = Path(client.download_artifacts(runs[number].info.run_id, f"{MODEL_ARTIFACT_DIR}/{name}",
                                                 str(tmp_path / f"dl-{number}")))
            assert got.read_bytes() != local.read_bytes()

    resumed = hpo.optimize(dataset="synthetic_images", trials=6, output_dir=str(tmp_path), run_name="tracked",
                           tracking="mlflow", tensorboard=True, backend=Epochs(), **FAST)
    assert resumed.completed + resumed.failed == 6
    _, again = _mlflow_runs(run_dir, "tracked")
    numbers = sorted(_csv_rows(run_dir))  # a configuration over max_params is rejected: not in trials.csv
    assert sorted(again) == numbers and len(numbers) == 6  # each trial once: the first 4 were not logged again
    assert {n: again[n].info.run_id for n in runs} == {n: r.info.run_id for n, r in runs.items()}
    assert sorted(p.name for p in (run_dir / TENSORBOARD_DIR).iterdir()) == sorted(f"trial-{n}" for n in numbers)
    assert all(len(list((run_dir / TENSORBOARD_DIR / f"trial-{n}").glob("events.*"))) == 1 for n in range(4))


def test_tracking_loads_no_tensorflow(tmp_path):
    """A run with tracking=mlflow and tensorboard=true (a fake backend: no trainer) imports neither TensorFlow nor
    Keras: tracking logs from the TrialResult the dispatcher already has."""
    script = textwrap.dedent(f"""
        import sys
        import hpo
        from hpo.backends import Backend
        from hpo.protocol import TrialResult

        class One(Backend):
            name = "one"
            def run(self, job, **kw):
                h = {{"val_accuracy": [0.5, 0.6], "loss": [1.0, 0.8]}}
                return TrialResult(trial_id=job.trial_id, status="completed", history=h, epochs_run=2,
                                   best_epoch=2, val_metrics={{"accuracy": 0.6}}, executed_on="one")

        r = hpo.optimize(dataset="synthetic_images", trials=2, output_dir={str(tmp_path)!r}, run_name="r",
                         tracking="mlflow", tensorboard=True, backend=One(), max_epochs_per_trial=2, quiet=True,
                         pruner="none", plot_generation="none")
        import hpo.tracking.mlflow_logger, hpo.tracking.tensorboard_logger, mlflow, tensorboardX
        assert r.completed == 2 and not r.notes, r.notes
        heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert len(list((tmp_path / "r" / TENSORBOARD_DIR).glob("trial-*/events.out.tfevents.*"))) == 2
    assert (tmp_path / "r" / "mlflow.db").is_file()


@pytest.mark.parametrize("option, module, extra", [
    ({"tracking": "mlflow"}, "mlflow", "hpo[mlflow]"),
    ({"tensorboard": "true"}, "tensorboardX", "hpo[tensorboard]"),
])
def test_a_missing_extra_is_a_config_error_naming_it_before_the_run_is_written(tmp_path, monkeypatch, capsys,
                                                                             option, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    backend = Epochs()
    with pytest.raises(ConfigError) as info:
        hpo.optimize(dataset="synthetic_images", trials=1, output_dir=str(tmp_path / "api"), run_name="r",
                     backend=backend, **option, **FAST)
    assert f'pip install "{extra}"' in str(info.value) and info.value.field == next(iter(option))
    assert backend.calls == 0
    written = [p.name for p in (tmp_path / "api" / "r").iterdir()] if (tmp_path / "api" / "r").exists() else []
    assert not [n for n in written if not n.startswith(".hpo")], written  # no config.json, study.db, trials.csv

    monkeypatch.setattr(session_module, "make_backend", lambda config, run_dir: Epochs())
    key, value = next(iter(option.items()))
    code = main(["optimize", "dataset=synthetic_images", "trials=1", f"output_dir={tmp_path / 'cli'}",
                 "run_name=r", f"{key}={value}", "quiet=true", "plot_generation=none"])
    err = capsys.readouterr().err
    assert code == 2 and f'pip install "{extra}"' in err and "Traceback" not in err
    assert not (tmp_path / "cli" / "r" / "config.json").exists() and not (tmp_path / "cli" / "r" / "study.db").exists()


def test_tracking_errors_never_fail_a_trial_or_the_run_and_hide_secrets(tmp_path, monkeypatch, caplog):
    # an MLflow server that does not answer (a closed loopback port), its URI carrying a password
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://hpo:s3cret-Pw-123@127.0.0.1:9/")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    caplog.set_level(logging.WARNING, logger="hpo.tracking")
    result = hpo.optimize(dataset="synthetic_images", trials=2, output_dir=str(tmp_path), run_name="down",
                          tracking="mlflow", backend=Epochs(), **FAST)
    assert result.completed == 2 and result.failed == 0
    notes = [n for n in result.notes if n.startswith("MLflow tracking:")]
    assert len(notes) == 1 and "opening the store failed" in notes[0]
    logged = caplog.text + json.dumps(result.notes)
    assert "MLflow tracking" in caplog.text and "s3cret-Pw-123" not in logged

    # a listener that fails on every trial: each trial still completes, the run goes on, one note
    from hpo.tracking.tensorboard_logger import TensorBoardListener

    def broken(self, record, model):
        raise OSError(f"disk full while logging trial {record['number']}")

    monkeypatch.setattr(TensorBoardListener, "trial_finished", broken)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    caplog.clear()
    again = hpo.optimize(dataset="synthetic_images", trials=3, output_dir=str(tmp_path), run_name="broken",
                         tensorboard=True, backend=Epochs(), **FAST)
    assert again.completed == 3 and again.failed == 0
    assert [n for n in again.notes if n.startswith("TensorBoard tracking:")] == [
        "TensorBoard tracking: logging trial 0 failed (OSError: disk full while logging trial 0); the run itself is "
        "unaffected, see the log for further failures"]
    assert all(f"logging trial {n} failed" in caplog.text for n in range(3))


def test_a_real_local_trial_logs_its_model_and_history(tmp_path):
    """One trial on the local backend (real Keras training in a worker process): its MLflow run holds the model
    saved as best_model.keras and one val_accuracy per epoch trained."""
    result = hpo.optimize(dataset="synthetic_images", trials=1, max_epochs_per_trial=2, data_fraction=0.2,
                          output_dir=str(tmp_path), run_name="real", tracking="mlflow", tensorboard=True,
                          quiet=True, pruner="none", plot_generation="none")
    assert result.completed == 1 and not result.notes
    run_dir = Path(result.run_dir)
    row = _csv_rows(run_dir)[0]
    client, runs = _mlflow_runs(run_dir, "real")
    run = runs[0]
    assert run.data.params == _csv_params(row)
    assert run.data.metrics["final_val_accuracy"] == _float(row["val_accuracy"])
    assert run.data.metrics["final_test_accuracy"] == _float(row["test_accuracy"])
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, int(row["epochs"]) + 1))
    assert client.get_metric_history(run.info.run_id, "learning_rate")  # the trainer reports it each epoch
    model = Path(client.download_artifacts(run.info.run_id, f"{MODEL_ARTIFACT_DIR}/best_model.keras",
                                           str(tmp_path / "dl")))
    assert model.read_bytes() == (run_dir / "best_model.keras").read_bytes() and model.stat().st_size > 1000
    scalars = read_scalars(run_dir / TENSORBOARD_DIR / "trial-0")
    assert [s for s, _ in scalars["val_accuracy"]] == list(range(1, int(row["epochs"]) + 1))
