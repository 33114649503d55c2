"""Issue 13 acceptance: a table-driven fuzz of the RunPod handler, then the real worker completes a real job.

Every input below is wrong; each must be answered with ``{"error", "error_kind": "invalid_input"}`` -- never an
exception, never a trained trial -- and a wrong search-space parameter must be named in the error. The in-process part
calls the handler coroutine directly (FakeTrainer: no TensorFlow); the last tests run the real local worker loop and
the real ``runpod`` SDK worker (runpod_worker/handler.py, real TensorFlow) against the loopback simulator.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import requests

from hpo import search_space
from hpo.protocol import TrialJob, TrialResult

from .test_handler import PARAMS, FakeTrainer, handler_mod

NAN, INF = float("nan"), float("inf")

#: garbage of every JSON type (and the floats JSON cannot carry)
GARBAGE = [None, True, False, 0, -1, 1, 2**31, 10**30, 1.5, -0.0, NAN, INF, -INF, "", "x", "x" * 1000, [],
           [1, "a", None], {}, {"a": 1}, {"a": {"b": [1, {"c": None}]}}, [[[[[[[[]]]]]]]]]

IMAGE = dict(PARAMS, dense_layers=1, dense_units=128)  # dense_units active: it can be missing or wrong too
LSTM = {"embedding_dim": 32, "lstm_layers": 1, "lstm_units": 32, "bidirectional": False, "dropout": 0.0,
        "dense_units": 0, "learning_rate": 0.01, "optimizer": "adam", "batch_size": 32}
BASES = {"synthetic_images": IMAGE, "synthetic_text": LSTM}

#: per TrialJob field: the GARBAGE values that are in fact valid there (all others must be refused)
VALID = {"trial_id": ["x"], "max_epochs": [1], "seed": [0, 1, 2**31], "dataset_options": [{}],
         "split_seed": [None, 0, 1, 2**31], "min_epochs": [1], "patience": [1], "data_fraction": [1],
         "use_multi_gpu": [True, False], "target_gpus": [0, 1], "compute_health": [True, False],
         "schema_version": [1], "schedule_epochs": [None], "data_uri": [None], "data_sha256": [None],
         "modality": [None], "input_shape": [[]], "num_classes": [None], "vocab_size": [None], "model": [None],
         "return_model": [True, False], "time_limit_s": [None, 1, 1.5], "keep_predictions": [True, False],
         "ensemble": [0, 1], "gather": [[]], "deadline_unix": [None], "warm_from": [None, 0, 1, 2**31]}
FIELDS = [f for f in TrialJob.__dataclass_fields__]


def job_input(base: str = "synthetic_images", /, **changes) -> dict:
    """A valid job for dataset ``base`` with ``changes`` applied (any field, ``dataset`` too)."""
    data = TrialJob(trial_id="fuzz#0", dataset=base, params=BASES[base], max_epochs=2, seed=0,
                    compute_health=False).to_dict()
    data.update(changes)
    return data


def answer(payload, trainer=None) -> dict:
    worker = handler_mod.Worker(trainer=trainer or FakeTrainer())
    out = asyncio.run(worker.handler({"id": "fuzz-job", "input": payload}))
    assert isinstance(out, dict)
    return out


class RecordingTrainer:
    """For inputs that must be refused: notes a call and answers at once (a regression fails, never hangs)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, job, on_epoch=None, should_stop=None, *, executed_on=None, **_):
        self.calls.append(job.trial_id)
        return TrialResult(trial_id=job.trial_id, status="failed", error="should not have run")


def refused(payload, *words: str) -> str:
    trainer = RecordingTrainer()
    out = answer(payload, trainer)
    assert out.get("error_kind") == "invalid_input" and isinstance(out.get("error"), str), out
    assert trainer.calls == [], "a refused input was trained"
    assert "Traceback" not in out["error"] and len(out["error"]) < 4000
    for word in words:
        assert word in out["error"], (word, out["error"])
    return out["error"]


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _deep_list(n: int) -> list:
    deep: list = []
    for _ in range(n):
        deep = [deep]
    return deep


def _deep_dict(n: int) -> dict:
    deep: dict = {}
    for _ in range(n):
        deep = {"a": deep}
    return deep


# -- the whole input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", GARBAGE, ids=lambda v: repr(v)[:30])
def test_garbage_as_the_whole_input(payload):
    refused(payload)


# -- each field of the job -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", FIELDS)
def test_garbage_in_each_field_is_refused_and_the_field_named(field):
    for value in GARBAGE:
        payload = job_input(**{field: value})
        if any(_same(value, ok) for ok in VALID.get(field, [])):
            trainer = FakeTrainer()
            out = answer(payload, trainer)
            assert "trial_result" in out and trainer.calls == [payload["trial_id"]], (field, value, out)
            continue
        error = refused(payload)
        assert field in error or field.replace("_", " ") in error, (field, value, error)


@pytest.mark.parametrize("field", [f for f in FIELDS if f in ("trial_id", "dataset", "params", "max_epochs", "seed")])
def test_a_missing_required_field_is_named(field):
    payload = job_input()
    del payload[field]
    refused(payload, f"missing required field '{field}'")


# -- each search-space parameter of both spaces ----------------------------------------------------------------------

MISSING = object()


def _bad_values(p: search_space.Param, shape) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [("null", None), ("list", [1]), ("object", {"v": 1}), ("missing", MISSING)]
    if p.kind == "categorical":
        first = p.choices[0]
        if isinstance(first, bool):
            out += [("int-for-bool", 1), ("string-for-bool", "true")]
        elif isinstance(first, int):
            out += [("not-a-choice", max(p.choices) + 1), ("huge", 10**9), ("negative", -max(p.choices)),
                    ("zero", 0) if 0 not in p.choices else ("minus-one", -1), ("string", str(first)),
                    ("float", float(first)), ("bool", True)]
        else:
            out += [("not-a-choice", "nope"), ("upper-case", first.upper()), ("number", 1), ("bool", False)]
        return out
    low, high = search_space._bounds(p, shape)
    if p.kind == "int":
        out += [("below", int(low) - 1), ("above", int(high) + 1), ("huge", 10**9), ("float", float(low)),
                ("string", str(low)), ("bool", True), ("nan", NAN)]
    else:
        below = low / 10 if p.log else low - 0.1
        above = high * 10 if p.log else high + 0.1
        out += [("below", below), ("above", above), ("negative", -1), ("nan", NAN), ("inf", INF), ("-inf", -INF),
                ("string", str(high)), ("bool", True), ("huge", 10**30)]
    return out


def _param_cases():
    for dataset, modality, shape in (("synthetic_images", "image", (16, 16, 3)), ("synthetic_text", "text", None)):
        for p in search_space.space_for(modality):
            for label, value in _bad_values(p, shape):
                yield pytest.param(dataset, p.name, value, id=f"{modality}-{p.name}-{label}")


def _names_param(error: str, name: str) -> bool:
    return any(form in error for form in (f"params.{name}", f"parameter {name}", f"params[{name!r}]",
                                          f"parameter {name!r}"))


@pytest.mark.parametrize("dataset, name, value", list(_param_cases()))
def test_every_param_out_of_range_wrong_type_or_missing_is_refused_by_name(dataset, name, value):
    params = dict(BASES[dataset])
    if value is MISSING:
        del params[name]
    else:
        params[name] = value
    error = refused(job_input(dataset, params=params))
    assert _names_param(error, name), error


@pytest.mark.parametrize("dataset, extra, named", [
    ("synthetic_images", {"foo": 1}, "foo"),
    ("synthetic_images", {"lstm_units": 32}, "lstm_units"),  # a parameter of the other space
    ("synthetic_images", {"": 1}, ""),
    ("synthetic_text", {"conv_blocks": 1}, "conv_blocks"),
    ("synthetic_text", {"learning_rate ": 0.01}, "learning_rate "),
])
def test_an_unknown_param_is_refused_by_name(dataset, extra, named):
    error = refused(job_input(dataset, params=dict(BASES[dataset], **extra)))
    assert f"unknown parameter {named!r}" in error, error


def test_an_inactive_conditional_param_is_refused_by_name():
    error = refused(job_input(params=dict(IMAGE, dense_layers=0)))
    assert "params.dense_units is given but applies only when dense_layers > 0" in error


# -- depth, keys, size -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["whole-dict", "field", "params", "param-value", "dataset_options", "list-in-dict"])
def test_nesting_100k_deep_is_an_error(where):
    deep = _deep_list(100_000)
    payload = {"whole-dict": _deep_dict(100_000), "field": job_input(trial_id=deep),
               "params": job_input(params={"dropout": {"x": deep}}), "param-value": job_input(params=deep),
               "dataset_options": job_input(dataset_options={"vocab_size": deep}),
               "list-in-dict": {"a": [deep]}}[where]
    refused(payload, "nested more than 32 levels deep")


@pytest.mark.parametrize("payload", [
    {1: "x"}, {None: 1}, {(1, 2): 1}, {1.5: 1}, {True: 1}, {"x": {"y": {3: 1}}},
    job_input(params={**IMAGE, 1: 0.1}), job_input(dataset_options={2: 3}), {**job_input(), 5: 1},
], ids=lambda v: repr(v)[:30])
def test_non_string_keys_are_an_error(payload):
    refused(payload, "key that is not a string")


@pytest.mark.parametrize("payload", [{"x": b"bytes"}, {"x": {1, 2}}, {"x": object()}, job_input(seed=2 + 3j)],
                         ids=["bytes", "set", "object", "complex"])
def test_python_values_that_are_not_json_are_an_error(payload):
    refused(payload, "not a JSON value")


TEN_MB = 10 * 2**20


@pytest.mark.parametrize("where", ["blob", "field", "param", "key", "list", "options-key"])
def test_a_10_mb_payload_is_an_error(where):
    big = "x" * TEN_MB
    payload = {"blob": {"blob": big}, "field": job_input(trial_id=big), "param": job_input(params={"dropout": big}),
               "key": {big: 1}, "list": {"blob": ["xxxxxxxx"] * (TEN_MB // 8)},
               "options-key": job_input(dataset_options={big: 1})}[where]
    refused(payload, "bytes", "at most")


def test_after_all_that_the_same_worker_trains_a_good_job():
    trainer = FakeTrainer()
    worker = handler_mod.Worker(trainer=trainer)
    bad = [None, _deep_list(100_000), {1: 2}, job_input(params=dict(IMAGE, learning_rate=-1)),
           job_input(params=dict(IMAGE, batch_size=0)), job_input(params=dict(IMAGE, foo=1)),
           job_input(params=dict(IMAGE, dense_units=10**9)), {"blob": "x" * TEN_MB}, job_input(seed=NAN)]
    for payload in bad:
        out = asyncio.run(worker.handler({"id": "b", "input": payload}))
        assert out["error_kind"] == "invalid_input", out
    out = asyncio.run(worker.handler({"id": "g", "input": job_input()}))
    assert out["trial_result"]["status"] == "completed" and trainer.calls == ["fuzz#0"], out
    assert math.isclose(out["trial_result"]["val_metrics"]["accuracy"], 0.27)


# -- the real worker loops -------------------------------------------------------------------------------------------

TINY = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
        "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
        "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}
BAD_PARAMS = {"learning_rate": dict(TINY, learning_rate=-1), "batch_size": dict(TINY, batch_size=0),
              "foo": dict(TINY, foo=1), "dense_units": dict(TINY, dense_layers=1, dense_units=10**9)}


def tiny_job(trial_id: str, params: dict) -> TrialJob:
    return TrialJob(trial_id=trial_id, dataset="synthetic_images", params=params, max_epochs=1, seed=3,
                    data_fraction=0.2, compute_health=False)


def test_the_local_worker_loop_refuses_bad_params_with_the_handlers_words(tmp_path):
    """The local worker process parses jobs with the same TrialJob.from_dict: the same refusal, word for word."""
    from hpo.backends.local import LocalBackend

    backend = LocalBackend(workers=1, log_dir=tmp_path / "logs")
    backend.start()
    try:
        for name, params in BAD_PARAMS.items():
            job = tiny_job(f"local#{name}", params)
            result = backend.run(job)
            handler_error = refused(job.to_dict())
            assert result.status == "failed" and result.error == handler_error, (result.error, handler_error)
            assert _names_param(result.error, name), result.error
            assert result.epochs_run == 0 and not result.history
        good = backend.run(tiny_job("local#ok", TINY))
        assert good.status == "completed", good.error
    finally:
        backend.close()


API_KEY = "rpa_FAKE_fuzz_SECRET_51c3a9"


def test_the_real_sdk_worker_refuses_bad_jobs_then_completes_a_real_one(tmp_path):
    from hpo.testing.runpod_sim import RunPodSimulator, start_workers, stop_workers

    headers = {"Authorization": f"Bearer {API_KEY}"}
    with RunPodSimulator(api_key=API_KEY, worker_timeout_s=60.0, take_hold_s=5.0) as sim:
        procs = start_workers(sim, 1, log_dir=tmp_path, prefix="fuzz-worker")
        try:
            def submit(payload) -> str:
                r = requests.post(f"{sim.endpoint_url}/run", json={"input": payload}, headers=headers, timeout=30)
                r.raise_for_status()
                return r.json()["id"]

            def finished(job_id: str, timeout: float) -> dict:
                sim.wait_for(lambda s: s.job(job_id)["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"),
                             timeout, what=f"job {job_id} finished")
                return sim.job(job_id)

            bad = {name: (tiny_job(f"sdk#{name}", params).to_dict(), name) for name, params in BAD_PARAMS.items()}
            bad["deep"] = ({"params": _deep_list(200)}, "nested more than 32 levels")
            bad["huge"] = (dict(tiny_job("sdk#huge", TINY).to_dict(), blob="x" * (2 * 2**20)), "at most")
            bad["garbage"] = ([1, "a", None], "must be a JSON object")
            bad["null-seed"] = (dict(tiny_job("sdk#null", TINY).to_dict(), seed=None), "field 'seed' must be integer")
            ids = {name: submit(payload) for name, (payload, _) in bad.items()}
            for name, (_, words) in bad.items():
                job = finished(ids[name], 300)
                assert job["status"] == "FAILED", (name, job)
                assert words in (job.get("error") or ""), (name, job.get("error"))
                assert "Traceback" not in job["error"]
                if name in BAD_PARAMS:
                    assert _names_param(job["error"], name), job["error"]
            good = finished(submit(tiny_job("sdk#ok", TINY).to_dict()), 600)
            assert good["status"] == "COMPLETED", \
                f"the good job ended {good['status']}: {good.get('error')!r}\n{procs[0].log_text()[-3000:]}"
            result = good["output"]["trial_result"]
            assert result["status"] == "completed" and result["epochs_run"] == 1, result
            assert result["executed_on"] == f"runpod:{good['worker_id']}"
            assert all(p.alive() for p in procs)
            assert API_KEY not in procs[0].log_text()
        finally:
            stop_workers(procs)
