"""runpod_worker/handler.py in-process: validation, progress, cancellation, the concurrency modifier, the worker core
it shares with the local worker loop (hpo.worker), and the SDK's public API as its only use of the SDK.

No TensorFlow: the trainer is a stand-in with run_trial's contract. The real worker loop is covered in
test_runpod_e2e.py (real TensorFlow workers) and test_runpod_dispatch.py (the SDK loop with a sleeping trainer).
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from hpo import worker as core
from hpo.protocol import MAX_JOB_BYTES, TrialJob, TrialResult

ROOT = Path(__file__).resolve().parents[1]


def _load_handler():
    spec = importlib.util.spec_from_file_location("hpo_worker_handler", ROOT / "runpod_worker" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hpo_worker_handler"] = module
    spec.loader.exec_module(module)
    return module


handler_mod = _load_handler()

PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


def job_input(**changes):
    data = TrialJob(trial_id="run#0", dataset="synthetic_images", params=PARAMS, max_epochs=3, seed=0,
                    compute_health=False).to_dict()
    data.update(changes)
    return data


class FakeTrainer:
    """run_trial's contract: reports each epoch, stops after the epoch in which should_stop() is true."""

    def __init__(self, epoch_s: float = 0.01) -> None:
        self.epoch_s = epoch_s
        self.calls: list[str] = []
        self.finished = threading.Event()
        self.stopped_after: int | None = None

    def __call__(self, job, on_epoch=None, should_stop=None, *, executed_on=None, **_):
        self.calls.append(job.trial_id)
        history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        try:
            for epoch in range(1, job.max_epochs + 1):
                time.sleep(self.epoch_s)
                metrics = {"loss": 1.0 / epoch, "accuracy": 0.3, "val_loss": 1.0, "val_accuracy": 0.25 + epoch / 100}
                for k, v in metrics.items():
                    history[k].append(v)
                on_epoch(epoch, metrics)
                if should_stop():
                    self.stopped_after = epoch
                    return TrialResult(trial_id=job.trial_id, status="stopped", history=history, epochs_run=epoch,
                                       executed_on=executed_on)
            return TrialResult(trial_id=job.trial_id, status="completed", history=history,
                               epochs_run=job.max_epochs, best_epoch=job.max_epochs,
                               val_metrics={"accuracy": history["val_accuracy"][-1]}, executed_on=executed_on)
        finally:
            self.finished.set()


def make_worker(trainer=None, **kw):
    return handler_mod.Worker(trainer=trainer or FakeTrainer(), **kw)


def run(worker, payload, job_id="job-1"):
    return asyncio.run(worker.handler({"id": job_id, "input": payload}))


# -- bad inputs --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload, words", [
    ({k: v for k, v in job_input().items() if k != "params"}, ["missing required field 'params'"]),
    (job_input(dataset="imagenet"), ["unknown dataset 'imagenet'", "synthetic_images"]),
    (job_input(max_epochs="three"), ["field 'max_epochs' must be integer"]),
    (job_input(params=[1, 2]), ["field 'params' must be object"]),
    (job_input(data_fraction=1.5), ["data_fraction"]),
    (job_input(extra=1), ["unknown field(s) extra"]),
    (job_input(dataset_options={"vocab_size": 100}), ["invalid dataset options"]),
    ("just a string", ["must be a JSON object"]),
    ([job_input()], ["must be a JSON object"]),
    ({"command": "reboot"}, ["unknown command"]),
    ({"blob": "x" * (2 * 2**20)}, ["bytes", "at most"]),
])
def test_bad_input_is_a_clear_error_not_a_traceback(payload, words):
    trainer = FakeTrainer()
    out = run(make_worker(trainer), payload)
    assert set(out) == {"error", "error_kind"} and out["error_kind"] == "invalid_input"
    for word in words:
        assert word in out["error"], out["error"]
    assert "Traceback" not in out["error"] and len(out["error"]) < 2000
    assert trainer.calls == []  # nothing was trained


@pytest.mark.parametrize("params, words", [
    (dict(PARAMS, learning_rate=-1), ["params.learning_rate=-1", "out of range", "[0.0001, 0.01] (log scale)"]),
    (dict(PARAMS, batch_size=0), ["params.batch_size=0", "one of 32, 64, 128, 256"]),
    (dict(PARAMS, foo=1), ["unknown parameter 'foo'"]),
    (dict(PARAMS, dense_layers=1, dense_units=10**9), ["params.dense_units=1000000000", "one of 64, 128, 256, 512"]),
    (dict(PARAMS, dense_units=128), ["params.dense_units is given but applies only when dense_layers > 0"]),
    ({k: v for k, v in PARAMS.items() if k != "optimizer"}, ["missing parameter optimizer"]),
    (dict(PARAMS, conv_blocks=4), ["params.conv_blocks=4", "input shape 16x16x3", "[1, 3]"]),
    (dict(PARAMS, embedding_dim=64), ["unknown parameter 'embedding_dim' (a parameter of the other search space)"]),
])
def test_params_are_validated_against_the_search_space(params, words):
    """Issue 13 (4): learning_rate=-1, batch_size=0, an unknown name, a huge layer: refused, nothing trained."""
    trainer = FakeTrainer()
    out = run(make_worker(trainer), job_input(params=params))
    assert out.get("error_kind") == "invalid_input", out
    for word in words:
        assert word in out["error"], out["error"]
    assert trainer.calls == []


def test_text_params_are_validated_against_the_lstm_space():
    lstm = {"embedding_dim": 32, "lstm_layers": 1, "lstm_units": 32, "bidirectional": False, "dropout": 0.0,
            "dense_units": 0, "learning_rate": 0.01, "optimizer": "adam", "batch_size": 32}
    trainer = FakeTrainer()
    worker = make_worker(trainer)
    out = run(worker, job_input(dataset="synthetic_text", params=dict(lstm, lstm_layers=3)))
    assert out["error_kind"] == "invalid_input" and "params.lstm_layers=3" in out["error"], out
    out = run(worker, job_input(dataset="synthetic_text", params=PARAMS))  # a CNN config for a text dataset
    assert "unknown parameter 'conv_blocks'" in out["error"] and "missing parameter embedding_dim" in out["error"]
    assert trainer.calls == []
    assert "trial_result" in run(worker, job_input(dataset="synthetic_text", params=lstm))
    assert trainer.calls == ["run#0"]


def test_the_trainer_gets_the_validated_params():
    seen = []

    def trainer(job, on_epoch=None, should_stop=None, *, executed_on=None, **_):
        seen.append(dict(job.params))
        return TrialResult(trial_id=job.trial_id, status="completed")

    run(make_worker(trainer), job_input(params=dict(PARAMS, dropout=0)))  # a JSON integer for a float param
    assert seen == [dict(PARAMS, dropout=0.0)] and type(seen[0]["dropout"]) is float


@pytest.mark.parametrize("queued_s, expected", [(30.0, 90.0), (0.0, 120.0), (-50.0, 120.0), (500.0, 1.0)])
def test_the_trainer_gets_the_time_limit_less_the_seconds_the_job_waited_in_the_queue(capsys, queued_s, expected):
    """The client's deadline (its clock at sending + time_limit_s): a job that waited 30 s trains for 90 of 120 s; a
    worker clock behind the client's never lengthens the limit; a deadline long past leaves 1 s."""
    limits = []

    def trainer(job, on_epoch=None, should_stop=None, *, executed_on=None, **_):
        limits.append(job.time_limit_s)
        return TrialResult(trial_id=job.trial_id, status="completed")

    out = run(make_worker(trainer), job_input(time_limit_s=120.0, deadline_unix=time.time() - queued_s + 120.0))
    assert out["trial_result"]["status"] == "completed"
    assert limits[0] == pytest.approx(expected, abs=0.5)
    said = capsys.readouterr().out
    assert ("time limit 120 s ->" in said) == (expected < 120), said


@pytest.mark.parametrize("payload, words", [
    ({1: "x"}, ["key that is not a string"]),
    (job_input(params={**PARAMS, 3: 1}), ["key that is not a string"]),
    ({"a": {"b": {"c": json.loads("[" * 34 + "1" + "]" * 34)}}}, ["nested more than 32"]),
    ({"x": {1, 2}}, ["not a JSON value"]),
    ({"x": 10**5000}, ["not plain JSON"]),
])
def test_odd_inputs_are_refused_before_any_recursive_processing(payload, words):
    out = run(make_worker(), payload)
    assert out["error_kind"] == "invalid_input", out
    for word in words:
        assert word in out["error"], out["error"]


def test_deep_nesting_of_100k_levels_is_an_error_not_a_recursion_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for payload in ({"params": deep}, {"command": "health", "x": {"y": deep}}, dict(job_input(), params=deep)):
        out = run(make_worker(), payload)
        assert out["error_kind"] == "invalid_input" and "nested more than 32 levels" in out["error"], out


def test_an_unexpected_exception_is_an_internal_error_without_traceback_or_secret(monkeypatch, caplog):
    secret = "rpa_HANDLER_SECRET_4f1c2e"
    monkeypatch.setenv("RUNPOD_API_KEY", secret)
    worker = make_worker()

    def broken(raw):
        raise RuntimeError(f"boom with {secret} inside\nsecond line")

    monkeypatch.setattr(worker, "parse", broken)
    with caplog.at_level("ERROR", logger="hpo.worker"):
        out = run(worker, job_input())
    assert out["error_kind"] == "internal", out
    assert "RuntimeError: boom with *** inside" in out["error"], out["error"]
    assert secret not in out["error"] and "Traceback" not in out["error"] and "second line" not in out["error"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "broken" in logged  # the traceback is on the worker's log ...
    assert secret not in logged  # ... with the secret masked


@pytest.mark.parametrize("job", [None, 5, "x", [], {"id": 7}, {"id": "j", "input": None}, {"input": {}}])
def test_a_malformed_sdk_job_gets_an_answer(job):
    out = asyncio.run(make_worker().handler(job))
    assert out["error_kind"] == "invalid_input", out
    expected = "missing required field 'trial_id'" if job == {"input": {}} else "the input must be a JSON object"
    assert expected in out["error"], out


def test_the_worker_id_is_runpods_pod_id_without_sdk_internals(monkeypatch):
    monkeypatch.setenv("RUNPOD_POD_ID", "pod-abc")
    worker = make_worker()
    assert worker.worker_id == "pod-abc" and worker.executed_on == "runpod:pod-abc"
    monkeypatch.delenv("RUNPOD_POD_ID")
    assert make_worker().worker_id.startswith("local-")


def test_after_bad_inputs_the_worker_serves_the_next_job():
    trainer = FakeTrainer()
    worker = make_worker(trainer)
    assert "error" in run(worker, {"blob": "x" * (2 * 2**20)})
    assert "error" in run(worker, job_input(seed="0"))
    out = run(worker, job_input())
    result = TrialResult.from_dict(out["trial_result"])
    assert result.status == "completed" and result.trial_id == "run#0" and result.epochs_run == 3
    assert result.executed_on == f"runpod:{worker.worker_id}"


def test_a_job_within_the_size_limit_is_accepted():
    assert len(json.dumps(job_input())) < MAX_JOB_BYTES
    assert "trial_result" in run(make_worker(), job_input())


def test_the_answer_has_no_top_level_error_key_for_a_failed_trial():
    """The SDK turns a top-level "error" into a FAILED job; a failed *trial* is a result, wrapped."""
    def failing(job, on_epoch=None, should_stop=None, *, executed_on=None, **_):
        return TrialResult(trial_id=job.trial_id, status="failed", error="training diverged: loss became nan")

    out = run(make_worker(failing), job_input())
    assert list(out) == ["trial_result"]
    assert out["trial_result"]["error"] == "training diverged: loss became nan"


def test_a_trainer_that_answers_for_another_trial_is_refused():
    def confused(job, on_epoch=None, should_stop=None, *, executed_on=None, **_):
        return TrialResult(trial_id="other#9", status="completed")

    out = run(make_worker(confused), job_input())
    assert out["error_kind"] == "worker_error" and "other#9" in out["error"]


def test_progress_is_published_every_epoch_with_all_epochs_so_far(monkeypatch):
    import runpod

    sent = []
    monkeypatch.setattr(runpod.serverless, "progress_update", lambda job, data: sent.append((job["id"], data)))
    worker = make_worker(FakeTrainer())
    worker._publish = True
    run(worker, job_input(max_epochs=4), job_id="j-7")
    # epochs 1-3: the last epoch's result follows at once, so no progress update races it
    assert [len(d["hpo_progress"]["epochs"]) for _, d in sent] == [1, 2, 3]
    assert {job_id for job_id, _ in sent} == {"j-7"}
    last = sent[-1][1]["hpo_progress"]
    assert last["trial_id"] == "run#0" and last["worker"] == worker.executed_on
    assert [e["epoch"] for e in last["epochs"]] == [1, 2, 3]
    assert last["eta_s"] is not None and last["eta_s"] >= 0


# -- cancellation ------------------------------------------------------------------------------------------------

def test_cancel_stops_training_within_one_epoch_and_reraises(capsys):
    trainer = FakeTrainer(epoch_s=0.15)
    worker = make_worker(trainer)

    async def scenario():
        task = asyncio.create_task(worker.handler({"id": "j-c", "input": job_input(max_epochs=50)}))
        while not worker._running or worker._running["j-c"].epochs < 2:
            await asyncio.sleep(0.01)
        at_cancel = worker._running["j-c"].epochs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return at_cancel

    at_cancel = asyncio.run(scenario())
    assert trainer.finished.is_set()  # the handler waited for the training thread before re-raising
    assert trainer.stopped_after is not None and trainer.stopped_after <= at_cancel + 1
    assert f"training stopped after epoch {trainer.stopped_after}" in capsys.readouterr().out
    assert not worker._running


# -- the concurrency modifier --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(None, 1), ("3", 3), ("0", 1), ("abc", 1), ("-2", 1)])
def test_concurrency_from_the_environment_never_none(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("HPO_WORKER_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("HPO_WORKER_CONCURRENCY", value)
    worker = make_worker()
    for current in (1, 2, 5):
        assert worker.concurrency_modifier(current) == expected


def _running_state(worker, job_id, *, epochs_done, max_epochs, epoch_s, patience=3):
    state = core.TrialRun(TrialJob(trial_id=f"t-{job_id}", dataset="synthetic_images", params=PARAMS,
                                   max_epochs=max_epochs, seed=0, patience=patience), key=job_id)
    now = time.monotonic()
    state.started = now - epochs_done * epoch_s
    state.epoch_ends = [state.started + (i + 1) * epoch_s for i in range(epochs_done)]
    worker._running[job_id] = state
    return state


def test_the_concurrency_modifier_only_answers_the_concurrency_and_leaves_the_sdk_alone():
    """No prefetch through SDK internals: a job about to end stays counted by the SDK until it is answered."""
    from runpod.serverless.modules.worker_state import JobsProgress

    progress = JobsProgress()
    progress.clear()
    worker = make_worker(concurrency=2)
    _running_state(worker, "near", epochs_done=4, max_epochs=5, epoch_s=0.05)  # ends within 0.05 s
    _running_state(worker, "far", epochs_done=1, max_epochs=5, epoch_s=1.0)
    progress.add({"id": "near", "input": {}})
    progress.add({"id": "far", "input": {}})
    try:
        assert [worker.concurrency_modifier(c) for c in (1, 2, 7)] == [2, 2, 2]
        assert progress.get_job_count() == 2 and set(progress.get_job_list().split(",")) == {"near", "far"}
    finally:
        progress.clear()


PUBLIC_SDK = {"runpod.serverless.start", "runpod.serverless.progress_update"}


def test_the_handler_uses_only_the_sdks_public_api():
    """Every use of the ``runpod`` package in handler.py: ``import runpod`` and attributes in the SDK's public
    ``runpod.serverless.__all__`` -- and one documented exception: ``install_prompt_take`` subclasses the SDK's
    ``rp_scale.JobScaler`` (tests/test_worker_loop.py), nowhere else (worker_state, JobsProgress, ... never)."""
    import runpod.serverless

    tree = ast.parse((ROOT / "runpod_worker" / "handler.py").read_text())
    imported, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.split(".")[0] == "runpod"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "runpod":
            imported.add(f"{node.module}:{','.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "runpod":
                used.add(".".join(["runpod", *reversed(parts)]))
    assert imported == {"runpod", "runpod.serverless.modules:rp_scale"}, imported
    internal = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                and any(isinstance(n, ast.ImportFrom) and n.module == "runpod.serverless.modules" for n in ast.walk(f))]
    assert internal == ["install_prompt_take"], internal
    calls = {u for u in used if u.count(".") == 2}  # runpod.serverless.<name>
    assert calls == PUBLIC_SDK and all(c.split(".")[-1] in runpod.serverless.__all__ for c in calls), used
    assert used <= PUBLIC_SDK | {"runpod.serverless"}, used


def test_expected_end_uses_early_stopping_and_the_learned_tail():
    worker = make_worker()
    state = _running_state(worker, "x", epochs_done=0, max_epochs=10, epoch_s=1.0, patience=2)
    for epoch, acc in [(1, 0.5), (2, 0.4), (3, 0.4)]:
        state.record(epoch, {"val_accuracy": acc})
    assert state.training_done  # two epochs without improvement: Keras stops now, only evaluation is left
    assert state.expected_end(0.3) == pytest.approx(state.epoch_ends[-1] + 0.3)
    assert core.stops_early(state.job, 3, 1) and not core.stops_early(state.job, 2, 1)
    assert not core.stops_early(state.job, 3, None)


# -- one worker core for the handler and the local worker loop ---------------------------------------------------

ORCHESTRATION = ("hpo.session", "hpo.rundir", "hpo.search", "hpo.study", "hpo.pruners", "hpo.dispatch",
                 "hpo.backends", "hpo.cli", "hpo.api", "hpo.run_manager", "hpo.results", "hpo.progress")


def test_the_worker_side_imports_no_orchestration_and_no_tensorflow_until_a_trial_runs():
    import subprocess

    code = ("import importlib.util, sys\n"
            "import hpo.worker\n"
            f"spec = importlib.util.spec_from_file_location('h', {str(ROOT / 'runpod_worker' / 'handler.py')!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('hpo', 'tensorflow', 'keras', 'optuna'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert "hpo.worker" in loaded
    assert not {m for m in loaded if any(m == o or m.startswith(o + ".") for o in ORCHESTRATION)}, loaded
    assert not {m for m in loaded if m.split(".")[0] in ("tensorflow", "keras", "optuna")}, loaded


SAME_ANSWERS = [None, [1], {"command": "health"}, {"command": "reboot"}, {1: "x"},
                job_input(max_epochs="three"), job_input(params=dict(PARAMS, learning_rate=-1)),
                {"blob": "x" * (2 * 2**20)}]


@pytest.mark.parametrize("payload", SAME_ANSWERS, ids=lambda p: repr(p)[:30])
def test_the_local_loops_core_refuses_what_the_handler_refuses_in_the_same_words(payload):
    trainer = FakeTrainer()
    local = core.handle(payload, trainer)
    remote = run(make_worker(trainer), payload)
    assert local["error_kind"] == "invalid_input" and trainer.calls == []
    if payload == {"command": "health"}:  # the one command is the handler's (RunPod glue), not the core's
        assert "this worker takes TrialJobs only" in local["error"] and "health" in remote
    elif not isinstance(payload, dict) or "command" in payload:  # the same words, less the handler's command
        assert remote["error"] == local["error"].replace("(a TrialJob)", '(a TrialJob or {"command": "health"})') \
            .replace("this worker takes TrialJobs only", 'the only command is {"command": "health"}')
    else:
        assert local == remote
    result = core.result_of(local, payload)  # what the local loop sends its parent: a failed trial with the words
    assert result.status == "failed" and result.error == local["error"] and result.epochs_run == 0


def test_the_core_trains_stops_and_answers_like_the_handler():
    trainer = FakeTrainer()
    reports = []

    def on_report(trial_run, report):
        reports.append(report.epoch)
        if report.epoch == 2:
            trial_run.cancel()  # the local loop does this when the parent answers "stop"

    answer = core.handle(job_input(max_epochs=5), trainer, on_report=on_report, executed_on="local:x")
    result = core.result_of(answer)
    assert result.status == "stopped" and result.epochs_run == 2 and reports == [1, 2]
    assert trainer.stopped_after == 2 and result.executed_on == "local:x"
    full = run(make_worker(FakeTrainer()), job_input(max_epochs=5))["trial_result"]
    assert full["status"] == "completed" and full["epochs_run"] == 5


def test_the_core_answers_a_broken_trainer_as_a_worker_error_and_never_raises():
    def raises(job, on_epoch=None, should_stop=None, **_):
        raise MemoryError("CUDA out of memory")

    answer = core.handle(job_input(), raises)
    assert answer == {"error": "the trainer raised MemoryError: CUDA out of memory", "error_kind": "worker_error"}
    assert run(make_worker(raises), job_input()) == answer
    assert core.result_of(answer, job_input()).trial_id == "run#0"

    class Exploding(dict):  # an input whose very inspection breaks: the last-resort answer
        def __contains__(self, key):
            raise RuntimeError("boom\nsecond line")

    out = core.handle(Exploding(job_input()), FakeTrainer(), label="x")
    assert out["error_kind"] == "internal" and "RuntimeError: boom" in out["error"] and "second" not in out["error"]


def test_health_command_reports_tensorflow_gpus_and_datasets(monkeypatch):
    monkeypatch.setattr(handler_mod, "health_info",
                        lambda worker_id, concurrency: {"tensorflow": "x", "gpus": [], "worker_id": worker_id})
    worker = make_worker()
    out = run(worker, {"command": "health"})
    assert out == {"health": {"tensorflow": "x", "gpus": [], "worker_id": worker.worker_id}}
