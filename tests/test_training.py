"""run_trial: learns, is deterministic, reports, stops, fails cleanly; the multi-replica path matches one device."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from hpo.protocol import TrialJob, TrialResult
from hpo.training import run_trial

from .conftest import hpo_env

CNN = {"conv_blocks": 2, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
       "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
       "batch_size": 32, "weight_decay": 1e-5, "augmentation": "none"}
LSTM = {"embedding_dim": 32, "lstm_layers": 1, "lstm_units": 32, "bidirectional": False, "dropout": 0.0,
        "dense_units": 0, "learning_rate": 0.01, "optimizer": "adam", "batch_size": 32}


def job(dataset="synthetic_images", params=CNN, **kw) -> TrialJob:
    base = dict(trial_id="test#0", dataset=dataset, params=params, max_epochs=4, seed=7, compute_health=False)
    base.update(kw)
    return TrialJob(**base)


def test_cnn_on_synthetic_images_beats_chance_clearly():
    epochs = []
    result = run_trial(job(), on_epoch=lambda e, m: epochs.append((e, m)))
    assert result.status == "completed", result.error
    assert result.val_metrics["accuracy"] >= 0.6  # chance is 0.25
    assert result.test_metrics["accuracy"] >= 0.6
    assert [e for e, _ in epochs] == list(range(1, result.epochs_run + 1))
    assert set(epochs[0][1]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.history["val_accuracy"][result.best_epoch - 1] == max(result.history["val_accuracy"])
    assert result.param_count > 0 and result.train_seconds > 0 and result.device == "CPU"


def test_lstm_on_synthetic_text_beats_chance_clearly():
    result = run_trial(job("synthetic_text", LSTM, max_epochs=6))
    assert result.status == "completed", result.error
    assert result.val_metrics["accuracy"] >= 0.6  # chance is 0.25


def test_the_same_job_twice_gives_the_same_metrics():
    a = run_trial(job(max_epochs=2))
    b = run_trial(job(max_epochs=2))
    assert a.history == b.history
    assert a.val_metrics == b.val_metrics and a.test_metrics == b.test_metrics


def test_a_different_seed_gives_different_numbers():
    a = run_trial(job(max_epochs=1, seed=1))
    b = run_trial(job(max_epochs=1, seed=2))
    assert a.history["loss"] != b.history["loss"]


def test_should_stop_ends_training_after_the_current_epoch():
    calls = []
    result = run_trial(job(max_epochs=5), on_epoch=lambda e, m: calls.append(e), should_stop=lambda: len(calls) >= 2)
    assert result.status == "stopped"
    assert result.epochs_run == 2 and calls == [1, 2]
    assert result.val_metrics["accuracy"] is not None  # the best epoch is still evaluated
    assert result.test_metrics["accuracy"] is not None  # a stop that is not a prune keeps the trial whole


def test_a_stop_asked_during_an_epoch_ends_it_after_the_batch_in_training():
    """A cut comes at any time (the worker sets the flag as the request arrives): the trainer checks before every
    batch, stops after that one, validates what it trained and keeps the trial whole (its best epoch)."""
    import math as _math

    from hpo import datasets

    data = datasets.load("synthetic_images", seed=7)
    steps = _math.ceil(len(data.x_train) / CNN["batch_size"])
    checks = []

    def should_stop():  # called before each batch and after each epoch: true from epoch 2's third batch on
        checks.append(1)
        return len(checks) > steps + 1 + 2

    result = run_trial(job(max_epochs=5), should_stop=should_stop)
    assert result.status == "stopped" and result.epochs_run == 2
    assert result.details["cut_in_epoch"] == {"epoch": 2, "batches": 3, "of": steps}
    assert len(result.history["val_accuracy"]) == 2  # the part of epoch 2 it trained was validated too
    assert result.test_metrics["accuracy"] is not None and result.best_epoch in (1, 2)
    whole = run_trial(job(max_epochs=2), should_stop=lambda: False)
    assert "cut_in_epoch" not in whole.details and whole.epochs_run == 2
    checks.clear()  # a stop in the first epoch: not one whole epoch trained, nothing to keep (the run records a cut)
    first = run_trial(job(max_epochs=5), should_stop=lambda: len(checks.append(1) or checks) > 4)
    assert first.status == "stopped" and first.details["cut_in_epoch"] == {"epoch": 1, "batches": 5, "of": steps}
    assert first.val_metrics == {} and first.test_metrics == {}


def test_a_pruned_trial_is_evaluated_on_validation_only():
    """A stop flagged ``discard`` (a prune): the test split is not touched, validation still is; a flag whose first
    stop was not a prune (a cut) keeps the trial whole."""
    from hpo.worker import StopFlag

    def stopped(first_discard: bool, then_discard: bool):
        flag, calls = StopFlag(), []

        def on_epoch(e, m):
            calls.append(e)
            if e == 2:
                flag.set(discard=first_discard)
                flag.set(discard=then_discard)  # a later stop changes nothing

        return run_trial(job(max_epochs=5), on_epoch=on_epoch, should_stop=flag)

    pruned = stopped(True, False)
    assert pruned.status == "stopped" and pruned.epochs_run == 2
    assert pruned.test_metrics == {}
    assert pruned.val_metrics["accuracy"] == pytest.approx(max(pruned.history["val_accuracy"]), abs=1e-6)
    cut = stopped(False, True)
    assert cut.status == "stopped" and cut.epochs_run == 2
    assert cut.test_metrics["accuracy"] is not None


def test_early_stopping_restores_the_best_epoch():
    # a learning rate this high makes validation accuracy stall quickly; patience 1 stops the run early
    params = dict(CNN, learning_rate=0.01, optimizer="sgd")
    result = run_trial(job(params=params, max_epochs=12, patience=1, min_epochs=1))
    assert result.status == "completed"
    hist = result.history["val_accuracy"]
    assert result.epochs_run == len(hist)
    assert result.epochs_run < 12 or hist[-1] == max(hist)
    # the reported validation accuracy is the best epoch's (the weights were restored)
    assert result.val_metrics["accuracy"] == pytest.approx(max(hist), abs=1e-6)


def test_nan_loss_is_a_failed_result_not_an_exception():
    params = dict(CNN, learning_rate=1e4, optimizer="sgd", weight_decay=1e-3)
    params["learning_rate"] = 1e9
    result = run_trial(job(params=params, max_epochs=3))
    assert result.status == "failed"
    assert "diverged" in result.error


def test_an_exception_inside_training_is_a_failed_result(monkeypatch):
    result = run_trial(job(dataset="no_such_dataset"))
    assert result.status == "failed"
    assert "DatasetError" in result.error and "no_such_dataset" in result.error
    assert "File " not in result.error  # hpo's own check says it all: no frames of hpo's code after it
    import hpo.training as training

    def broken(*args, **kwargs):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(training, "_load_data", broken)
    result = run_trial(job())
    assert result.status == "failed" and "RuntimeError: something unforeseen" in result.error
    assert 'File "' in result.error and "broken" in result.error  # anything else shows where it was raised


def test_save_model_to_writes_a_loadable_model(tmp_path):
    path = tmp_path / "m.keras"
    result = run_trial(job(max_epochs=1), save_model_to=str(path))
    import keras
    import numpy as np

    from hpo import datasets

    model = keras.models.load_model(path)
    data = datasets.load("synthetic_images", seed=7)
    _, acc = model.evaluate(data.x_test, data.y_test, verbose=0)
    assert acc == pytest.approx(result.test_metrics["accuracy"], abs=1e-6)
    assert np.isfinite(acc)
    end = result.details["end_phase"]  # the model file's seconds are part of the trial's end
    assert end["save_s"] > 0 and end["took_s"] == pytest.approx(end["evaluate_s"] + end["save_s"], abs=0.03)


def test_multi_replica_path_on_two_logical_cpus_matches_one_device():
    """MirroredStrategy over 2 logical CPU devices with per-replica batch b/2 (global b) trains like one device
    with batch b: gradients are averaged across replicas."""
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from hpo.protocol import TrialJob
        from hpo.training import run_trial
        params = {CNN!r}
        def job(batch):
            return TrialJob(trial_id="t#0", dataset="synthetic_images", params=dict(params, batch_size=batch),
                            max_epochs=2, seed=3, compute_health=False)
        multi = run_trial(job(16), devices=["/cpu:0", "/cpu:1"])
        single = run_trial(job(32), devices=["/cpu:0"])
        print(json.dumps({{"multi": multi.to_dict(), "single": single.to_dict()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=hpo_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    multi, single = TrialResult.from_dict(out["multi"]), TrialResult.from_dict(out["single"])
    assert multi.status == single.status == "completed", (multi.error, single.error)
    assert "MirroredStrategy" in multi.device and "2x" in multi.device
    for a, b in zip(multi.history["loss"], single.history["loss"], strict=True):
        assert a == pytest.approx(b, rel=2e-3, abs=2e-3)
    assert multi.val_metrics["accuracy"] == pytest.approx(single.val_metrics["accuracy"], abs=0.02)


def test_batch_norm_models_validate_as_well_as_they_train_on_short_runs():
    """Regression: with Keras' default BN momentum (0.99) the moving statistics of a short trial (tens of steps)
    stay near their initial values and validation accuracy collapses while training accuracy rises.
    Fashion-MNIST from the Debian files, 5% of the training part."""
    params = dict(CNN, batch_norm=True, batch_size=128, global_pooling=False, filters=32)
    result = run_trial(job("fashion_mnist", params, max_epochs=3, data_fraction=0.05))
    assert result.status == "completed"
    assert min(result.history["val_accuracy"][1:]) >= 0.6  # chance is 0.1; with momentum 0.99 it fell below 0.3
    assert result.val_metrics["accuracy"] >= result.history["accuracy"][result.best_epoch - 1] - 0.1


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_trials_max_epochs():
    cosine = run_trial(job(lr_schedule="cosine", max_epochs=4, patience=4))
    constant = run_trial(job(lr_schedule="constant", max_epochs=4, patience=4))
    assert cosine.status == constant.status == "completed"
    lr = cosine.history["learning_rate"]
    assert len(lr) == 4 and lr[-1] == pytest.approx(0.0, abs=1e-9)  # reaches 0 exactly at max_epochs
    assert all(a > b for a, b in zip(lr, lr[1:]))  # falls every epoch
    # cosine shape: after half of the epochs, half of the learning rate
    assert lr[1] == pytest.approx(CNN["learning_rate"] / 2, rel=0.02)
    assert constant.history["learning_rate"] == pytest.approx([CNN["learning_rate"]] * 4)
    assert cosine.val_metrics["accuracy"] >= 0.45  # learns (chance is 0.25)
    assert cosine.history["loss"] != constant.history["loss"]  # the schedule really reached the optimizer


def test_the_cosine_schedule_spans_the_runs_fidelity_not_a_shortened_allowance():
    """A trial the epoch budget lets train 2 of the run's 4 epochs follows the same schedule as a full trial: after
    2 epochs it is at half the learning rate, not at 0 (values at equal epochs come from the same schedule)."""
    short = run_trial(job(lr_schedule="cosine", max_epochs=2, schedule_epochs=4, patience=4))
    assert short.status == "completed", short.error
    lr = short.history["learning_rate"]
    assert len(lr) == 2 and lr[1] == pytest.approx(CNN["learning_rate"] / 2, rel=0.02)


def test_a_time_limit_ends_training_in_time_and_the_trial_is_complete_at_its_best_epoch():
    """time_limit_s (the run's time budget): no epoch starts that would not end in time; the trial is complete at the
    epochs it trained, with its best epoch's weights, and says that time cut it."""
    epochs = []
    result = run_trial(job(max_epochs=5000, patience=5000, time_limit_s=4.0), on_epoch=lambda e, m: epochs.append(m))
    assert result.status == "completed", result.error
    assert result.details.get("out_of_time") is True  # the time limit ended it, not patience or max_epochs
    assert result.epochs_run < 5000
    assert result.history["val_accuracy"][result.best_epoch - 1] == max(result.history["val_accuracy"])
    assert result.val_metrics["accuracy"] == pytest.approx(max(result.history["val_accuracy"]), abs=1e-6)
    assert len(epochs) == result.epochs_run
    # where the end's seconds went, beside what the rule kept for it (a run that ends late says why)
    end = result.details["end_phase"]
    assert end["reserved_s"] > 0 and end["evaluate_s"] > 0
    assert end["took_s"] >= end["evaluate_s"] and end["took_s"] < result.train_seconds
    assert end["took_s"] < 4.0 and "save_s" not in end  # no model file was asked for
    assert end["limit_s"] == 4.0 and end["trained_s"] + end["took_s"] <= result.train_seconds + 0.05
    unlimited = run_trial(job(max_epochs=2))
    assert "out_of_time" not in unlimited.details and unlimited.epochs_run == 2
    assert unlimited.details["end_phase"]["reserved_s"] is None  # no time limit: nothing kept for the end


def _simulated_epoch(callback, clock: list, epoch: int, batch_s: float, batches: int = 1, val_s: float = 0.1) -> None:
    """One epoch of ``batches`` batches of ``batch_s`` seconds and a validation pass of ``val_s`` on a simulated clock,
    through the callback's hooks as Keras calls them (a stop asked before a batch ends the epoch after it)."""
    callback.on_epoch_begin(epoch)
    for batch in range(batches):
        callback.on_train_batch_begin(batch)
        clock[0] += batch_s
        if callback.model.stop_training:
            break
    callback.on_test_begin()
    clock[0] += val_s
    callback.on_test_end()
    callback.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})


@pytest.mark.parametrize("evaluated_share, stops_after", [(2.0, 8), (21.0, 5)])
def test_a_time_limit_keeps_room_for_the_evaluation_at_the_end_at_the_rate_validation_ran(
        monkeypatch, evaluated_share, stops_after):
    """Epochs of 1 s, each with a 0.1 s validation pass, a 10 s limit. With the test set as large as the validation set
    (share 2) the end may take max(0.5 epoch, 1.5 x 2 x 0.1 + 1 s) = 1.3 s: no epoch starts after 10 - 1 - 1.3 s.
    With a test set 20x the validation set it may take 1.5 x 21 x 0.1 + 1 = 4.15 s: training stops after epoch 5,
    where half an epoch of room would have let it go on to epoch 9 and the end (2.1 s and more) run past the limit."""
    import types

    import hpo.training as training

    clock = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])
    callback = training._make_callback(job(max_epochs=100, patience=100, time_limit_s=10.0), None, None, 0.0,
                                       evaluated_share=evaluated_share)
    model = types.SimpleNamespace(stop_training=False, get_weights=lambda: [], optimizer=None)
    callback.set_model(model)
    epoch = 0
    while not model.stop_training:
        _simulated_epoch(callback, clock, epoch, batch_s=0.9)
        epoch += 1
    assert callback.out_of_time and callback.epochs_run == stops_after
    assert clock[0] + callback.end_s(1.0) <= 10.0  # what the end is expected to take fits


def test_an_epoch_slower_than_the_ones_judged_is_cut_after_the_batch_that_would_end_late(monkeypatch):
    """Epochs of 40 batches of 0.0225 s and a 0.1 s validation pass (1 s), a 10 s limit: the rule at epoch 6's end
    lets epoch 7 start (6 + 1 + 1.3 s of end fits). When that epoch's batches take 0.11 s each (a shared machine),
    the epoch would end at 10.5 s: it is cut after the batch at which its validation pass and the trial's end would
    no longer end in time, and the trial is complete at what it trained, out of time."""
    import types

    import hpo.training as training

    clock = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])
    callback = training._make_callback(job(max_epochs=100, patience=100, time_limit_s=10.0), None, None, 0.0,
                                       steps_per_epoch=40, evaluated_share=2.0)
    model = types.SimpleNamespace(stop_training=False, get_weights=lambda: [], optimizer=None)
    callback.set_model(model)
    epoch = 0
    while not model.stop_training:
        _simulated_epoch(callback, clock, epoch, batch_s=0.11 if epoch == 6 else 0.0225, batches=40)
        epoch += 1
    # not cut before a batch, it and the next one run: 2 x 0.11 s, the validation pass (0.1 s) and the end kept
    # (1.3 s) must fit, so a batch may begin without a cut until 8.38 s; the 23rd begins at 6 + 22 x 0.11 s
    assert callback.out_of_time and callback.epochs_run == 7
    assert callback.cut_in_epoch == {"epoch": 7, "batches": 23, "of": 40}
    assert clock[0] + callback.end_s(1.0) <= 10.0  # what the end is expected to take still fits
    fast, clock[0] = training._make_callback(job(max_epochs=7, patience=100, time_limit_s=10.0), None, None, 0.0,
                                             steps_per_epoch=40, evaluated_share=2.0), 0.0
    fast.set_model(types.SimpleNamespace(stop_training=False, get_weights=lambda: [], optimizer=None))
    for epoch in range(7):  # epochs as fast as judged: never cut within one
        _simulated_epoch(fast, clock, epoch, batch_s=0.0225, batches=40)
    assert fast.cut_in_epoch is None and fast.epochs_run == 7 and not fast.out_of_time


def test_a_real_trial_whose_epoch_turns_slow_ends_by_its_time_limit():
    """The same in a real trial: from epoch 3 on each batch takes 0.3 s more (an epoch of 12 s, longer than the 8 s
    limit); the trial is cut within epoch 3, validates what it trained and is complete at its best epoch in time."""
    slow = []

    def should_stop():  # checked before every batch: where the slow machine is simulated
        if slow:
            time.sleep(0.3)
        return False

    result = run_trial(job(max_epochs=50, patience=50, time_limit_s=8.0), should_stop=should_stop,
                       on_epoch=lambda e, m: slow.append(e) if e >= 2 else None)
    assert result.status == "completed", result.error
    assert result.details["out_of_time"] is True and result.epochs_run == 3
    cut = result.details["cut_in_epoch"]
    assert cut["epoch"] == 3 and 0 < cut["batches"] < cut["of"]
    assert len(result.history["val_accuracy"]) == 3 and result.test_metrics["accuracy"] is not None
    assert result.train_seconds <= 8.0  # epoch 3 whole would have ended after 12 s


def test_a_time_limit_out_of_range_is_refused_naming_the_field():
    from hpo.exceptions import ProtocolError

    for bad in (0, -1.0, float("inf"), 8 * 24 * 3600.0):
        with pytest.raises(ProtocolError, match="time_limit_s"):
            job(time_limit_s=bad).validate()
