"""The run loop in-process: hpo.optimize(), concurrency with honest per-trial numbers, failures, rejections."""

import json
import os
import signal

import optuna
import pytest

import hpo
from hpo.backends import Backend
from hpo.backends.local import LocalBackend
from hpo.protocol import TrialJob, TrialResult
from hpo.training import run_trial

FAST = dict(max_epochs_per_trial=2, data_fraction=0.5, quiet=True, pruner="none", plot_generation="none")


def test_optimize_in_process_returns_the_result_structure(tmp_path):
    events = []
    result = hpo.optimize(dataset="synthetic_images", trials=2, output_dir=str(tmp_path), run_name="nb",
                          progress=lambda event, snap: events.append(event["event"]), **FAST)
    assert isinstance(result, hpo.OptimizationResult)
    assert result.completed == 2 and len(result.trials) == 2
    assert result.run_dir == str(tmp_path / "nb")
    assert result.best_value == max(t["value"] for t in result.trials)
    assert result.best_params == next(t["params"] for t in result.trials
                                      if t["number"] == result.best_trial_number)
    assert 0.0 <= result.best_test_accuracy <= 1.0
    assert events.count("started") == 2 and events.count("finished") == 2
    loaded = hpo.load_results(tmp_path / "nb")
    assert loaded.best_trial_number == result.best_trial_number and loaded.best_value == result.best_value
    assert [t["number"] for t in loaded.trials] == [t["number"] for t in result.trials]


def test_options_are_validated_like_the_cli(tmp_path):
    with pytest.raises(hpo.ConfigError, match="did you mean trials"):
        hpo.optimize(dataset="synthetic_images", trails=2, output_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_two_workers_four_trials_each_trial_keeps_its_own_metrics(tmp_path):
    result = hpo.optimize(dataset="synthetic_images", trials=4, concurrent_workers=2, output_dir=str(tmp_path),
                          run_name="par", **FAST)
    assert result.completed == 4
    assert len({t["executed_on"] for t in result.trials}) == 2  # both workers trained
    study = optuna.load_study(study_name="par", storage=f"sqlite:///{tmp_path / 'par' / 'study.db'}")
    for trial in study.trials:
        job = TrialJob.from_dict(trial.user_attrs["job"])
        assert job.params == trial.params
        alone = run_trial(job)  # the same job run alone, in this process
        stored = trial.user_attrs["result"]
        assert alone.val_metrics["accuracy"] == pytest.approx(stored["val_metrics"]["accuracy"], abs=1e-6)
        assert alone.test_metrics["accuracy"] == pytest.approx(stored["test_metrics"]["accuracy"], abs=1e-6)
        assert trial.value == pytest.approx(stored["val_metrics"]["accuracy"], abs=1e-12)


class CrashOnce(LocalBackend):
    """Kills its worker process in the middle of the second trial."""

    def run(self, job, **kw):
        if job.trial_id.endswith("#1"):
            inner = kw.get("on_epoch")

            def on_epoch(report):
                if inner:
                    inner(report)
                os.kill(self.worker_pids()[0], signal.SIGKILL)

            kw["on_epoch"] = on_epoch
        return super().run(job, **kw)


def test_a_crashed_trial_fails_alone_and_the_study_completes(tmp_path):
    backend = CrashOnce(workers=1, log_dir=tmp_path / "logs")
    result = hpo.optimize(dataset="synthetic_images", trials=3, output_dir=str(tmp_path), run_name="crash",
                          backend=backend, **FAST)
    states = {t["number"]: t["state"] for t in result.trials}
    assert states == {0: "complete", 1: "fail", 2: "complete"}
    failed = next(t for t in result.trials if t["number"] == 1)
    assert "crashed" in failed["reason"]
    assert failed["params"]  # recorded with its params


class AlwaysFails(Backend):
    name = "broken"

    def __init__(self):
        self.calls = 0

    def run(self, job, **kw):
        self.calls += 1
        return TrialResult(trial_id=job.trial_id, status="failed", error="CUDA_ERROR_OUT_OF_MEMORY")


def test_consecutive_failures_stop_the_run_with_a_clear_reason(tmp_path):
    backend = AlwaysFails()
    result = hpo.optimize(dataset="synthetic_images", trials=20, max_consecutive_failures=3,
                          output_dir=str(tmp_path), run_name="bad", backend=backend, **FAST)
    assert backend.calls == 3 and result.failed == 3 and result.completed == 0
    assert "3 trials failed in a row" in result.stop_reason and "CUDA_ERROR_OUT_OF_MEMORY" in result.stop_reason
    assert not (tmp_path / "bad" / "best.json").exists()


class Raises(Backend):
    name = "raises"

    def run(self, job, **kw):
        raise RuntimeError("boom")


def test_a_backend_exception_is_a_failed_trial_not_a_crash(tmp_path):
    result = hpo.optimize(dataset="synthetic_images", trials=2, max_consecutive_failures=5,
                          output_dir=str(tmp_path), run_name="raise", backend=Raises(), **FAST)
    assert result.failed == 2 and all("RuntimeError: boom" in t["reason"] for t in result.trials)


class Instant(Backend):
    """A fake trainer: val accuracy is a known function of the params (no TensorFlow)."""

    name = "instant"

    def __init__(self):
        self.jobs = []

    def run(self, job, **kw):
        self.jobs.append(job)
        acc = 0.5 + 0.1 * job.params["conv_blocks"] - job.params["dropout"] / 10
        return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=1, best_epoch=1,
                           val_metrics={"accuracy": acc, "loss": 1 - acc}, test_metrics={"accuracy": acc - 0.01},
                           executed_on="instant", history={"val_accuracy": [acc]})


def test_oversized_configurations_are_rejected_before_dispatch_and_not_counted(tmp_path):
    backend = Instant()
    result = hpo.optimize(dataset="synthetic_images", trials=6, max_params=20_000, output_dir=str(tmp_path),
                          run_name="small", backend=backend, **FAST)
    from hpo import search_space

    assert result.completed == 6 and len(backend.jobs) == 6
    for job in backend.jobs:
        assert search_space.count_params(job.params, "image", (16, 16, 3), 4) <= 20_000
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path / 'small' / 'study.db'}")
    rejected = [t for t in study.trials if t.user_attrs.get("rejected")]
    assert rejected and all("max_params=20000" in t.user_attrs["reason"] for t in rejected)
    assert len(result.trials) == 6  # rejected configurations are not trials of the run


def test_impossible_max_params_stops_with_advice(tmp_path):
    result = hpo.optimize(dataset="synthetic_images", trials=3, max_params=10, output_dir=str(tmp_path),
                          run_name="tiny", backend=Instant(), **FAST)
    assert result.completed == 0 and "raise max_params" in result.stop_reason


def test_pins_reach_every_job_and_the_best_is_the_true_maximum(tmp_path):
    backend = Instant()
    result = hpo.optimize(dataset="synthetic_images", trials=8, conv_blocks=3, output_dir=str(tmp_path),
                          run_name="pin", backend=backend, sampler="random", **FAST)
    assert all(j.params["conv_blocks"] == 3 for j in backend.jobs)
    values = [0.5 + 0.3 - j.params["dropout"] / 10 for j in backend.jobs]
    assert result.best_value == pytest.approx(max(values))
    best = json.loads((tmp_path / "pin" / "best.json").read_text())
    assert best["params"]["conv_blocks"] == 3 and best["value"] == pytest.approx(max(values))


def test_resume_by_name_continues_to_the_total_and_rejects_a_different_dataset(tmp_path):
    backend = Instant()
    hpo.optimize(dataset="synthetic_images", trials=2, output_dir=str(tmp_path), run_name="r", backend=backend,
                 **FAST)
    second = hpo.optimize(dataset="synthetic_images", trials=5, output_dir=str(tmp_path), run_name="r",
                          backend=backend, **FAST)
    assert second.completed == 5 and len(backend.jobs) == 5
    assert len({json.dumps(j.params, sort_keys=True) for j in backend.jobs}) == 5
    latest = hpo.optimize(dataset="synthetic_images", trials=6, output_dir=str(tmp_path), resume=True,
                          backend=backend, **FAST)
    assert latest.completed == 6 and latest.run_dir == str(tmp_path / "r")
    with pytest.raises(hpo.ConfigError, match="exists with dataset=synthetic_images"):
        hpo.optimize(dataset="synthetic_text", trials=6, output_dir=str(tmp_path), run_name="r", backend=backend)


def test_run_names_are_filesystem_safe(tmp_path):
    result = hpo.optimize(dataset="synthetic_images", trials=1, output_dir=str(tmp_path), backend=Instant(), **FAST)
    name = os.path.basename(result.run_dir)
    assert name.startswith("synthetic_images-") and ":" not in name


def test_concurrent_cpu_workers_share_the_cores(tmp_path, monkeypatch):
    from hpo.config import OptimizationConfig
    from hpo.session import make_backend

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    one = make_backend(OptimizationConfig(dataset="synthetic_images"), tmp_path)
    four = make_backend(OptimizationConfig(dataset="synthetic_images", concurrent_workers=4), tmp_path)
    many = make_backend(OptimizationConfig(dataset="synthetic_images", concurrent_workers=16), tmp_path)
    assert "HPO_TF_THREADS" not in one._env or one._env["HPO_TF_THREADS"] == os.environ.get("HPO_TF_THREADS")
    assert four._env["HPO_TF_THREADS"] == "2" and many._env["HPO_TF_THREADS"] == "1"
