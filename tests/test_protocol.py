import json

import pytest

from hpo.exceptions import ProtocolError
from hpo.protocol import MAX_JOB_BYTES, SCHEMA_VERSION, EpochReport, TrialJob, TrialResult


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
    job = TrialJob(trial_id="t#1", dataset="imdb", params={"embedding_dim": 64, "bidirectional": True},
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
