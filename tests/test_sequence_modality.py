"""The third built-in modality, real-valued sequences: MNIST-1D generated offline, synthetic_sequence, the sequence
search space (GRU / LSTM / 1-D convolution), its models and parameter counts, and one run end to end."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import optuna
import pytest

import keras  # a dependency: a missing Keras or TensorFlow fails, never skips

import hpo
from hpo import catalog, datasets, search_space
from hpo.exceptions import ProtocolError
from hpo.models import build_model, build_sequence
from hpo.protocol import TrialJob
from hpo.training import run_trial

from .conftest import SRC

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: small and complete: every parameter of the sequence space that applies to a GRU
TINY = dict(cell="gru", layers=1, units=32, bidirectional=False, readout="final", dropout=0.1, learning_rate=3e-3,
            optimizer="adam", batch_size=32)


def cfg(cell: str, **changes) -> dict:
    """TINY for ``cell``: bidirectional applies to gru / lstm only, kernel_size to conv1d only."""
    params = dict(TINY, cell=cell)
    if cell == "conv1d":
        del params["bidirectional"]
        params["kernel_size"] = 3
    params.update(changes)
    return {p.name: params[p.name] for p in catalog.SEQUENCE_SPACE if p.name in params}


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


# -- the catalog -------------------------------------------------------------------------------------------------------

def test_sequence_datasets_are_described_by_the_catalog_without_files():
    for name, shape, classes in (("mnist1d", (40, 1), 10), ("synthetic_sequence", (32, 2), 4)):
        i = catalog.info(name)
        assert (i.name, i.modality, i.input_shape, i.num_classes, i.vocab_size) == (name, "sequence", shape,
                                                                                     classes, None)
        assert catalog.is_generated(name) and catalog.default_options(name) == {}
        datasets.ensure_available(name)  # generated: nothing to download, never raises
    assert "sequence" in catalog.Modality.__args__
    assert catalog.space_for("sequence") is catalog.SEQUENCE_SPACE
    assert {"cell", "layers", "units", "bidirectional", "kernel_size", "readout"} <= catalog.all_param_names()


def test_importing_the_datasets_package_does_not_import_mnist1d_or_pyplot():
    code = ("import sys, hpo.datasets\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'mnist1d' or m == 'matplotlib.pyplot')\n"
            "assert not heavy, heavy\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- MNIST-1D ----------------------------------------------------------------------------------------------------------

def test_mnist1d_is_generated_offline_by_make_dataset_with_its_defaults(monkeypatch):
    import socket

    import requests

    def offline(*args, **kwargs):
        raise AssertionError("mnist1d must be generated offline, never downloaded")

    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.setattr(requests.Session, "request", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    datasets.clear_cache()
    np_before, py_before = np.random.get_state(), random.getstate()

    data = datasets.load("mnist1d")  # default split: 20 % validation, seed 42

    # make_dataset seeds the global generators; the loader gives the caller's random streams back untouched
    assert random.getstate() == py_before
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1]) and np_after[2:] == np_before[2:]
    assert data.x_train.shape == (3200, 40, 1) and data.x_val.shape == (800, 40, 1)
    assert data.x_test.shape == (1000, 40, 1)
    for x in (data.x_train, data.x_val, data.x_test):
        assert x.dtype == np.float32 and np.isfinite(x).all()
    for y in (data.y_train, data.y_val, data.y_test):
        assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    # the very arrays of the package's make_dataset with its default arguments (seed 42), test split in its order
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    assert np.array_equal(data.x_test[..., 0], reference["x_test"].astype(np.float32))
    assert np.array_equal(data.y_test, reference["y_test"])
    train_rows = {row.tobytes() for row in reference["x"].astype(np.float32)}
    assert all(row.tobytes() in train_rows for row in data.x_val[:50, :, 0])
    assert abs(float(data.x_train.mean())) < 0.1 and 0.8 < float(data.x_train.std()) < 1.2  # standardized


def test_mnist1d_split_is_stratified_and_seeded_like_the_other_datasets():
    a = datasets.load("mnist1d", seed=3)
    b = datasets.load("mnist1d", seed=3)
    c = datasets.load("mnist1d", seed=4)
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_val, c.x_val)
    assert np.array_equal(a.x_test, c.x_test)  # the test split never depends on the seed
    counts = np.bincount(np.concatenate([a.y_train, a.y_val]), minlength=10)
    val = np.bincount(a.y_val, minlength=10)
    assert np.all(np.abs(val - counts * 0.2) <= 1)  # stratified: every class keeps its share
    assert len(a.y_val) == 800
    small = datasets.load("mnist1d", seed=3, data_fraction=0.25)
    assert np.array_equal(small.x_val, a.x_val) and len(small.y_train) == 800
    assert np.all(np.abs(np.bincount(small.y_train, minlength=10) - np.bincount(a.y_train, minlength=10) * 0.25) <= 1)


def test_synthetic_sequence_is_deterministic_float32_and_balanced():
    datasets.clear_cache()
    a = datasets.load("synthetic_sequence", seed=1)
    datasets.clear_cache()
    b = datasets.load("synthetic_sequence", seed=1)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    assert a.x_train.shape[1:] == (32, 2) and a.x_train.dtype == np.float32
    assert len(a.x_train) + len(a.x_val) == 1600 and len(a.x_test) == 400
    assert np.bincount(np.concatenate([a.y_train, a.y_val, a.y_test])).tolist() == [500, 500, 500, 500]


def test_sequence_data_that_is_not_finite_float32_is_refused():
    from hpo.datasets.registry import _check_raw
    from hpo.exceptions import DatasetError

    ds = catalog.info("synthetic_sequence")
    x = np.zeros((8, 32, 2), np.float32)
    y = np.arange(8) % 4
    _check_raw(ds, (x, y, x, y), "probe")  # the right kind passes
    bad = x.copy()
    bad[3, 5, 1] = np.nan
    with pytest.raises(DatasetError, match="train sequences contain NaN or infinite values"):
        _check_raw(ds, (bad, y, x, y), "probe")
    with pytest.raises(DatasetError, match="test sequences must be float32, got float64"):
        _check_raw(ds, (x, y, x.astype(np.float64), y), "probe")
    with pytest.raises(DatasetError, match=r"expected \(32, 2\)"):
        _check_raw(ds, (x[:, :, :1], y, x, y), "probe")


# -- the search space --------------------------------------------------------------------------------------------------

def test_validate_params_accepts_the_default_and_rejects_out_of_range_values():
    default = search_space.default_params("sequence", input_shape=(40, 1))
    assert default == {k: v for k, v in catalog.DEFAULTS["sequence"].items() if k != "bidirectional"}
    assert default["cell"] == "conv1d"  # bidirectional applies to recurrent cells only
    assert catalog.validate_params("sequence", default) == default
    for good in (TINY, cfg("lstm", bidirectional=True), cfg("conv1d", kernel_size=7)):
        assert catalog.validate_params("sequence", good) == good
    for bad, needle in (
        (dict(default, layers=4), "params.layers=4 is out of range; allowed: int in [1, 3]"),
        (dict(default, units=48), "params.units=48 is not allowed; allowed: one of 32, 64, 128"),
        (dict(default, cell="rnn"), "params.cell='rnn' is not allowed; allowed: one of gru, lstm, conv1d"),
        (dict(default, dropout=0.9), "params.dropout=0.9 is out of range"),
        (dict(default, kernel_size=4), "params.kernel_size=4 is not allowed; allowed: one of 3, 5, 7"),
        (dict(default, readout="last"), "params.readout='last' is not allowed"),
        (dict(TINY, bidirectional=1), "params.bidirectional=1 is not allowed; allowed: one of true, false"),
        (dict(default, bidirectional=True), "params.bidirectional is given but applies only when cell is one of "
                                            "gru, lstm (cell=conv1d); leave it out"),
        (dict(TINY, kernel_size=3), "params.kernel_size is given but applies only when cell is conv1d (cell=gru)"),
        (dict(TINY, bidirectional=None), "params.bidirectional=null is not allowed"),
    ):
        with pytest.raises(ProtocolError) as e:
            catalog.validate_params("sequence", bad)
        assert needle in str(e.value), str(e.value)
    with pytest.raises(ProtocolError) as e:
        catalog.validate_params("sequence", dict(default, conv_blocks=2))
    assert "(a parameter of the other search space)" in str(e.value)
    assert "the sequence (GRU/LSTM/1-D conv) search space has: cell, layers" in str(e.value)
    missing = {k: v for k, v in default.items() if k != "cell"}
    with pytest.raises(ProtocolError, match="missing parameter cell"):
        catalog.validate_params("sequence", missing)
    with pytest.raises(ProtocolError, match="missing parameter kernel_size"):
        catalog.validate_params("sequence", {k: v for k, v in default.items() if k != "kernel_size"})


def test_pins_and_sampled_configurations_stay_inside_the_sequence_space():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    seen = set()
    for _ in range(40):
        params = search_space.suggest(study.ask(), "sequence", {"optimizer": "adamw"}, input_shape=(40, 1))
        assert catalog.validate_params("sequence", params) == params
        assert params["optimizer"] == "adamw"
        seen.add(params["cell"])
        assert ("bidirectional" in params) == (params["cell"] != "conv1d")  # conditional on the cell
        assert ("kernel_size" in params) == (params["cell"] == "conv1d")
    assert seen == {"gru", "lstm", "conv1d"}
    assert catalog.coerce_pin(next(p for p in catalog.SEQUENCE_SPACE if p.name == "bidirectional"), "yes") is True


def test_conv1d_blocks_pool_only_while_at_least_four_steps_remain():
    assert catalog.conv1d_pools(40, 3) == [True, True, True]  # 40 -> 20 -> 10 -> 5
    assert catalog.conv1d_pools(6, 3) == [True, False, False]  # 6 -> 3, then no more pooling
    assert catalog.conv1d_pools(3, 2) == [False, False]
    model = build_sequence(cfg("conv1d", layers=3, readout="final"), (6, 1), 4)
    assert model.layers[-3].output.shape[1:] == (3 * 32,)  # flattened 3 steps x 32 filters


@pytest.mark.parametrize("input_shape", [(40, 1), (32, 2), (5, 3)])
def test_count_params_matches_keras_for_sampled_configurations(input_shape):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sum(input_shape)))
    cells = set()
    for _ in range(24):
        params = search_space.suggest(study.ask(), "sequence", input_shape=input_shape)
        keras.backend.clear_session(free_memory=False)
        model = build_sequence(params, input_shape, 7)
        assert model.output_shape == (None, 7), params
        assert model.count_params() == search_space.count_params(params, "sequence", input_shape, 7), params
        cells.add(params["cell"])
    assert cells == {"gru", "lstm", "conv1d"}
    # every cell with every read-out, both directions
    for cell in ("gru", "lstm", "conv1d"):
        for readout in ("final", "average", "max"):
            for variant in ({"bidirectional": False}, {"bidirectional": True}) if cell != "conv1d" else (
                    {"kernel_size": 3}, {"kernel_size": 7}):
                params = cfg(cell, readout=readout, layers=2, **variant)
                assert catalog.validate_params("sequence", params) == params
                keras.backend.clear_session(free_memory=False)
                model = build_sequence(params, input_shape, 7)
                assert model.count_params() == search_space.count_params(params, "sequence", input_shape, 7)


def test_build_model_dispatches_sequence_and_compiles():
    model = build_model(dict(TINY, optimizer="adamw"), modality="sequence", input_shape=(32, 2), num_classes=4)
    assert model.optimizer.__class__.__name__ == "AdamW"
    assert any(isinstance(layer, keras.layers.GRU) for layer in model.layers)
    with pytest.raises(ValueError, match="allowed: image, text, sequence"):
        build_model(TINY, modality="audio", input_shape=(32, 2), num_classes=4)
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        build_sequence(dict(TINY, cell="rnn"), (32, 2), 4)


# -- training ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, extra", [("gru", {"bidirectional": True}), ("lstm", {"readout": "average"}),
                                         ("conv1d", {"layers": 2, "readout": "max"})])
def test_each_cell_trains_one_epoch_on_synthetic_sequence_with_health(cell, extra):
    params = cfg(cell, **extra)
    job = TrialJob(trial_id=f"seq-{cell}", dataset="synthetic_sequence", params=params, max_epochs=1, seed=3,
                   data_fraction=0.3, compute_health=True)
    result = run_trial(job)
    assert result.status == "completed", result.error
    assert result.epochs_run == 1 and np.isfinite(result.history["loss"][0])
    assert 0.0 <= result.val_metrics["accuracy"] <= 1.0 and 0.0 <= result.test_metrics["accuracy"] <= 1.0
    assert result.param_count == search_space.count_params(params, "sequence", (32, 2), 4)
    # the model-based health metrics are measurable on sequence models (layers found by type: GRU/LSTM/Conv1D)
    for name in ("neuron_utilization", "gradient_health", "generalization", "efficiency"):
        assert result.health[name] is not None, (name, result.details.get("health_notes"))
    layers = sorted(re.sub(r"_\d+$", "", name) for name in result.details["gradient_norms"])
    expected = {"gru": ["bidirectional", "dense"], "lstm": ["dense", "lstm"], "conv1d": ["conv1d", "conv1d", "dense"]}
    assert layers == expected[cell]


def test_optimize_on_synthetic_sequence_writes_a_complete_run_folder(tmp_path):
    result = hpo.optimize(dataset="synthetic_sequence", trials=2, max_epochs_per_trial=1, data_fraction=0.3,
                          quiet=True, output_dir=str(tmp_path), run_name="seq")
    run = tmp_path / "seq"
    assert result.run_dir and os.path.samefile(result.run_dir, run)
    for name in ("config.json", "trials.csv", "best.json", "report.html", "best_model.keras"):
        assert (run / name).is_file(), name
    with open(run / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["state"] == "complete" for r in rows), rows
    best = json.loads((run / "best.json").read_text())
    assert catalog.validate_params("sequence", best["params"]) == best["params"]
    first = min(result.trials, key=lambda t: t["number"])
    assert first["params"] == search_space.default_params("sequence")  # warm start: the space's default first
    model = keras.models.load_model(run / "best_model.keras")
    test = datasets.load("synthetic_sequence")  # the test split does not depend on the seed
    _, accuracy = model.evaluate(test.x_test, test.y_test, verbose=0)
    assert accuracy == pytest.approx(best["test_accuracy"], abs=2e-3)
    assert "synthetic_sequence" in (run / "report.html").read_text()
