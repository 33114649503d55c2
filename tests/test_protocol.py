import dataclasses
import json
import subprocess
import sys

import pytest

from hpo.exceptions import ProtocolError
from hpo.protocol import (MAX_JOB_BYTES, MAX_SEED, SCHEMA_VERSION, EpochReport, TrialJob, TrialResult,
                          check_json_bounds)

LSTM = {"embedding_dim": 64, "lstm_layers": 1, "lstm_units": 64, "bidirectional": True, "dropout": 0.2,
        "dense_units": 0, "learning_rate": 0.001, "optimizer": "adam", "batch_size": 64}


def typical_job() -> TrialJob:
    params = {"conv_blocks": 3, "filters": 64, "kernel_size": 3, "activation": "relu", "batch_norm": True,
              "global_pooling": False, "dense_layers": 2, "dense_units": 256, "dropout": 0.34567891234567,
              "learning_rate": 0.00123456789012345, "optimizer": "adamw", "batch_size": 128,
              "weight_decay": 0.0000123456789012345, "augmentation": "light"}
    return TrialJob(trial_id="cifar100-20261129-101500#123", dataset="cifar100", params=params, max_epochs=50,
                    seed=1042, dataset_options={}, min_epochs=3, patience=5, validation_split=0.2,
                    data_fraction=0.5, use_multi_gpu=True, target_gpus=4, compute_health=True)


def test_typical_job_is_under_one_kilobyte_and_round_trips():
    job = typical_job()
    text = job.to_json()
    assert len(text.encode()) < MAX_JOB_BYTES
    assert TrialJob.from_json(text) == job


def test_text_job_round_trips():
    job = TrialJob(trial_id="t#1", dataset="imdb", params=LSTM,
                   max_epochs=3, seed=1, dataset_options={"vocab_size": 10000, "sequence_length": 200})
    assert TrialJob.from_dict(json.loads(job.to_json())) == job


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d.pop("dataset"), "missing required field 'dataset'"),
    (lambda d: d.update(extra=1), "unknown field(s) extra"),
    (lambda d: d.update(max_epochs="5"), "field 'max_epochs' must be integer"),
    (lambda d: d.update(max_epochs=5.0), "field 'max_epochs' must be integer"),
    (lambda d: d.update(use_multi_gpu=1), "field 'use_multi_gpu' must be boolean"),
    (lambda d: d.update(params=[1, 2]), "field 'params' must be object"),
    (lambda d: d.update(params={"a": [1]}), "field 'params' must be object"),
    (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
    (lambda d: d.update(validation_split=1.5), "validation_split must be in (0, 1)"),
    (lambda d: d.update(max_epochs=0), "must be >= 1"),
])
def test_strict_parsing_names_the_field(mutate, fragment):
    data = typical_job().to_dict()
    mutate(data)
    with pytest.raises(ProtocolError) as info:
        TrialJob.from_dict(data)
    assert fragment in str(info.value)


def test_not_json_and_not_an_object():
    with pytest.raises(ProtocolError, match="not valid JSON"):
        TrialJob.from_json("{nope")
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        TrialJob.from_json("[1, 2]")


def test_result_round_trip_and_non_finite_floats_become_null():
    result = TrialResult(trial_id="t#1", status="failed", history={"loss": [1.0, float("nan")]},
                         epochs_run=2, val_metrics={"accuracy": 0.5}, error="training diverged",
                         details={"gradient_norms": {"dense": [0.1]}})
    text = result.to_json()
    assert "NaN" not in text
    back = TrialResult.from_json(text)
    assert back.history["loss"] == [1.0, None]
    assert back.error == "training diverged" and back.val_accuracy == 0.5
    assert back.schema_version == SCHEMA_VERSION


def test_result_status_is_checked():
    with pytest.raises(ProtocolError, match="field 'status' must be one of"):
        TrialResult.from_dict({"trial_id": "x", "status": "done"})


def test_epoch_report_round_trip():
    report = EpochReport(trial_id="t#1", epoch=3, metrics={"val_accuracy": 0.75, "loss": 0.4})
    assert EpochReport.from_json(report.to_json()) == report


# -- validation of a job read from JSON (issue 13: the worker trains nothing outside the search space) --------------

@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d["params"].update(learning_rate=-1), "params.learning_rate=-1 is out of range"),
    (lambda d: d["params"].update(batch_size=0), "params.batch_size=0 is not allowed; allowed: one of 32"),
    (lambda d: d["params"].update(foo=1), "unknown parameter 'foo'"),
    (lambda d: d["params"].update(dense_units=10**9), "params.dense_units=1000000000 is not allowed"),
    (lambda d: d["params"].pop("dropout"), "missing parameter dropout (float in [0.0, 0.5])"),
    (lambda d: d["params"].update(conv_blocks=5), "params.conv_blocks=5 is out of range for input shape 32x32x3"),
    (lambda d: d.update(dataset="imagenet"), "unknown dataset 'imagenet'; allowed: mnist"),
    (lambda d: d.update(dataset_options={"vocab_size": 100}), "invalid dataset options for cifar100"),
    (lambda d: d.update(seed=-1), f"seed=-1 is out of range; allowed: integer in [0, {MAX_SEED}]"),
    (lambda d: d.update(split_seed=2**40), "split_seed=1099511627776 is out of range"),
    (lambda d: d.update(max_epochs=10**12), "max_epochs=1000000000000 is out of range"),
    (lambda d: d.update(target_gpus=10**6), "target_gpus=1000000 is out of range"),
    (lambda d: d.update(deadline_unix=1.8e9), "deadline_unix=1800000000.0 is not allowed; allowed: null, or seconds "
     "since the epoch in (0, 1e+11] with time_limit_s set"),  # no time_limit_s
    (lambda d: d.update(time_limit_s=60.0, deadline_unix=-5.0), "deadline_unix=-5.0 is not allowed"),
    (lambda d: d.update(time_limit_s=60.0, deadline_unix=1e300), "deadline_unix=1e+300 is not allowed"),
    (lambda d: d.update(trial_id=""), "trial_id=\"\" is not allowed"),
    (lambda d: d.update(trial_id="a\nb"), "printable characters"),
    (lambda d: d.update({7: 1}), "an object key that is not a string (7)"),
    (lambda d: d["params"].update({(): 1}), "key that is not a string"),
    (lambda d: d.update(seed=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
     "nested more than 32 levels"),
])
def test_a_job_from_json_is_validated_for_meaning(mutate, fragment):
    data = typical_job().to_dict()
    mutate(data)
    with pytest.raises(ProtocolError) as info:
        TrialJob.from_dict(data)
    assert fragment in str(info.value)


def test_every_problem_of_the_params_is_listed():
    data = typical_job().to_dict()
    data["params"].update(learning_rate=2.0, optimizer="sgd2", foo="bar")
    with pytest.raises(ProtocolError) as info:
        TrialJob.from_dict(data)
    text = str(info.value)
    for fragment in ("params.learning_rate=2.0", "params.optimizer='sgd2'", "unknown parameter 'foo'",
                     "the CNN (image) search space has: conv_blocks, filters"):
        assert fragment in text, text


def test_a_validated_job_carries_the_params_as_the_trainer_uses_them():
    data = typical_job().to_dict()
    data["params"]["dropout"] = 0
    job = TrialJob.from_dict(data)
    assert job.params["dropout"] == 0.0 and type(job.params["dropout"]) is float
    assert TrialJob.from_json(job.to_json()) == job


def test_results_with_odd_keys_or_deep_values_are_errors_not_crashes():
    with pytest.raises(ProtocolError, match="field names must be strings, got 1"):
        TrialResult.from_dict({1: "x", "trial_id": "t", "status": "failed"})
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ProtocolError, match="field 'epochs_run' must be integer, got a list of 1 item"):
        TrialResult.from_dict({"trial_id": "t", "status": "failed", "epochs_run": deep})
    with pytest.raises(ProtocolError, match="schema_version a list of 1 item"):
        TrialResult.from_dict({"trial_id": "t", "status": "failed", "schema_version": deep})


def test_deep_nesting_is_measured_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ProtocolError, match="nested more than 32 levels"):
        check_json_bounds({"x": deep})
    with pytest.raises(ProtocolError, match="nested more than 32 levels"):
        TrialJob.from_dict(dict(typical_job().to_dict(), params={"a": deep}))
    assert check_json_bounds(typical_job().to_dict()) <= len(typical_job().to_json())


def test_size_is_bounded_before_walking_everything():
    with pytest.raises(ProtocolError, match="more than 8,192 bytes"):
        check_json_bounds({"x": "y" * 10 * 2**20})
    with pytest.raises(ProtocolError, match="more than 100 bytes"):
        check_json_bounds(list(range(10**7)), max_bytes=100)  # stops early: no 10M-item walk
    with pytest.raises(ProtocolError, match="not a JSON value"):
        check_json_bounds({"x": b"bytes"})


def test_importing_the_protocol_loads_no_tensorflow_keras_or_numpy():
    code = ("import sys, hpo.protocol, hpo.search_space\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'numpy'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_job_with_a_time_limit_and_a_deadline_is_under_one_kilobyte_and_round_trips():
    job = dataclasses.replace(typical_job(), time_limit_s=1234.5, deadline_unix=1796567890.12, keep_predictions=True,
                              ensemble=3, gather=[121, 122], return_model=True, schedule_epochs=50)
    text = job.to_json()
    assert len(text.encode()) < MAX_JOB_BYTES
    assert TrialJob.from_dict(json.loads(text)) == job


@pytest.mark.parametrize("limit, deadline, now, expected", [
    (60.0, None, 1000.0, 60.0),      # no deadline: the limit counts from the trainer's start
    (60.0, 1060.0, 1000.0, 60.0),    # started at once
    (60.0, 1060.0, 1012.34, 47.7),   # waited 12.34 s in a queue: taken off, to 0.1 s
    (60.0, 1060.0, 990.0, 60.0),     # the worker's clock behind the client's: never a longer limit
    (60.0, 1060.0, 1070.0, 1.0),     # the deadline passed while queued: at least 1 s
    (None, None, 1000.0, None),      # no limit at all
])
def test_by_deadline_takes_the_queued_seconds_off_the_time_limit(limit, deadline, now, expected):
    job = dataclasses.replace(typical_job(), time_limit_s=limit, deadline_unix=deadline)
    started = job.by_deadline(now)
    assert started.time_limit_s == expected
    assert dataclasses.replace(started, time_limit_s=limit) == job  # nothing else changes
