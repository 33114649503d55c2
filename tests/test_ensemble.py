"""The final's ensemble (final_ensemble): greedy selection on validation, the combined model, the trainer's end, and
the kept models of a run."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest

from hpo import kept
from hpo.ensemble import MAX_PICKS, accuracy, await_kept, combine, greedy, log_loss
from hpo.protocol import ProtocolError, TrialJob
from hpo.results import ModelFiles
from hpo.training import run_trial

from .test_training import CNN, job


def _onehot(labels, classes=3, p=0.8):
    out = np.full((len(labels), classes), (1 - p) / (classes - 1))
    out[np.arange(len(labels)), labels] = p
    return out


Y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def test_greedy_adds_only_what_raises_validation_accuracy():
    own = _onehot(np.where(np.arange(10) < 6, Y, (Y + 1) % 3))           # wrong on the last 4
    helper = np.where(np.arange(10)[:, None] >= 4, _onehot(Y, p=0.95), _onehot((Y + 1) % 3, p=0.4))  # right where
    # own is wrong, unsure where it is wrong itself
    useless = _onehot((Y + 2) % 3)                                        # always wrong
    picks = greedy([own, helper, useless], Y, members=3)
    assert picks[0] == 0 and 1 in picks and 2 not in picks
    probs = [own, helper, useless]
    assert accuracy(sum(probs[i] for i in picks) / len(picks), Y) == 1.0 > accuracy(own, Y)
    assert greedy([own, useless], Y, members=3) == [0]  # nothing helps: the model alone


def test_greedy_respects_the_member_cap_and_the_pick_cap():
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(3), size=10) for _ in range(6)]
    for members in (1, 2, 3):
        picks = greedy(probs, Y, members=members)
        assert len(set(picks)) <= members and len(picks) <= MAX_PICKS
    assert greedy(probs, Y, members=1) == [0]


def test_metrics_of_probabilities():
    p = _onehot(Y, p=0.5)
    assert accuracy(p, Y) == 1.0
    assert log_loss(p, Y) == pytest.approx(-np.log(0.5))


def test_the_combined_model_saves_loads_and_predicts_the_weighted_average(tmp_path):
    import keras

    def member(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((6,))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(5)(inputs)))

    a, b = member(0), member(1)
    x = np.random.default_rng(1).random((7, 6)).astype("float32")
    expected = 0.6 * a.predict(x, verbose=0) + 0.4 * b.predict(x, verbose=0)
    combine([a, b], [0.6, 0.4]).save(tmp_path / "e.keras")
    loaded = keras.models.load_model(tmp_path / "e.keras", compile=False)  # safe mode: built-in layers only
    assert np.allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)


def test_a_job_asks_for_at_most_max_ensemble_models():
    with pytest.raises(ProtocolError, match=r"ensemble=9 is out of range; allowed: integer in \[0, 5\]"):
        TrialJob.from_dict(job(ensemble=9).to_dict())
    assert TrialJob.from_dict(job(ensemble=3, keep_predictions=True).to_dict()).ensemble == 3
    for bad in ([-1], [1, 2, 3, 4, 5, 6], [2**32]):  # other finals to wait for: at most 5 trial numbers
        with pytest.raises(ProtocolError, match=r"gather=.* is not allowed; allowed: at most 5 trial numbers"):
            TrialJob.from_dict(job(gather=bad).to_dict())
    assert TrialJob.from_dict(job(ensemble=3, gather=[4, 9]).to_dict()).gather == [4, 9]
    with pytest.raises(ProtocolError, match=r"warm_from=-1 is out of range; allowed: null or a trial number"):
        TrialJob.from_dict(job(warm_from=-1).to_dict())
    assert TrialJob.from_dict(job(warm_from=4).to_dict()).warm_from == 4


def test_a_final_starts_from_its_source_trials_kept_weights(tmp_path):
    """final_warm_start: the final's first epoch, at a learning rate too small to learn much in one epoch, validates
    where its source trial ended; from scratch it does not. A source not kept, or of another shape: from scratch."""
    models = tmp_path / "models"
    models.mkdir()
    files = ModelFiles(tmp_path, pareto=False, keep=kept.CANDIDATES)
    source = _train(models / "trial-1.keras", 11, keep_predictions=True)
    other = run_trial(job(max_epochs=1, seed=12, split_seed=7, params=dict(CNN, filters=32), keep_predictions=True),
                      save_model_to=str(models / "trial-2.keras"))
    for number, result in ((1, source), (2, other)):
        files.keep(number, result.val_metrics["accuracy"])

    def final(number, **kw):
        return run_trial(job(max_epochs=1, seed=19, split_seed=7, params=dict(CNN, learning_rate=1e-4),
                             keep_predictions=True, ensemble=1, **kw),
                         save_model_to=str(models / f"trial-{number}.keras"))

    warm, cold = final(8, warm_from=1), final(9)
    assert warm.status == cold.status == "completed"
    assert warm.details["warm_start"]["loaded"] is True and warm.details["warm_start"]["from_trial"] == 1
    assert warm.details["warm_start"]["waited_s"] < 1 and "warm_start" not in cold.details  # it was kept already
    reached = source.val_metrics["accuracy"]
    assert reached >= 0.6  # the source learned: chance is 0.25
    assert warm.history["val_accuracy"][0] >= reached - 0.05  # it went on from there
    assert cold.history["val_accuracy"][0] < reached - 0.15  # from scratch, one slow epoch is far from it
    missing = final(7, warm_from=3, time_limit_s=20.0)  # no trial 3 kept: waited for a tenth of its time limit
    assert missing.status == "completed" and not missing.details["warm_start"]["loaded"]
    assert missing.details["warm_start"]["why"] == "its model was not kept within 2 s"
    assert missing.details["warm_start"]["waited_s"] >= 2.0
    def keep_later():  # a source still ending as its final starts: the run keeps its model a moment later
        time.sleep(0.5)
        shutil.copy(models / "kept" / "trial-1.keras", models / "kept" / "trial-5.keras")

    threading.Thread(target=keep_later, daemon=True).start()
    late = final(10, warm_from=5, time_limit_s=60.0)
    assert late.details["warm_start"]["loaded"] is True and late.details["warm_start"]["waited_s"] >= 0.4
    assert late.history["val_accuracy"][0] >= reached - 0.05
    mismatch = final(6, warm_from=2)  # another configuration's weights do not fit: nothing is set, from scratch
    assert mismatch.status == "completed" and mismatch.details["warm_start"]["loaded"] is False
    assert "do not fit" in mismatch.details["warm_start"]["why"]
    assert mismatch.history["val_accuracy"] == cold.history["val_accuracy"]  # the same seed: exactly the cold run


def _train(path, seed, **kw):
    return run_trial(job(max_epochs=2, seed=seed, split_seed=7, params=dict(CNN, learning_rate=0.002), **kw),
                     save_model_to=str(path))


def test_a_final_averages_itself_with_kept_models_that_raise_validation_accuracy(tmp_path):
    import keras

    from hpo import datasets

    models = tmp_path / "models"
    models.mkdir()
    files = ModelFiles(tmp_path, pareto=False, keep=kept.CANDIDATES)
    for number, seed in ((1, 11), (2, 12), (3, 13)):  # three search trials, their predictions kept
        result = _train(models / f"trial-{number}.keras", seed, keep_predictions=True)
        assert result.status == "completed" and kept.predictions_path(models / f"trial-{number}.keras").exists()
        files.keep(number, result.val_metrics["accuracy"])
    final_path = models / "trial-9.keras"
    result = _train(final_path, 19, keep_predictions=True, ensemble=3)
    assert result.status == "completed"
    detail = result.details["ensemble"]
    assert isinstance(detail, dict), detail  # fixed seeds: the kept models help this final
    data = datasets.load("synthetic_images", seed=7)
    members, weights = detail["members"], detail["weights"]
    assert members[0] == 9 and set(members[1:]) <= {1, 2, 3} and 2 <= len(members) <= 3
    assert sum(weights) == pytest.approx(1.0, abs=1e-3)
    assert result.val_metrics["accuracy"] > detail["alone"]["val_accuracy"]  # strictly better on validation
    alone = keras.models.load_model(kept.single_path(final_path), compile=False)
    ensemble = keras.models.load_model(final_path, compile=False)
    probs = ensemble.predict(data.x_test, verbose=0)
    expected = sum(w * keras.models.load_model(models / "kept" / f"trial-{n}.keras", compile=False)
                   .predict(data.x_test, verbose=0) for n, w in zip(members[1:], weights[1:]))
    expected = expected + weights[0] * alone.predict(data.x_test, verbose=0)
    assert np.allclose(probs, expected, atol=1e-4)
    assert result.test_metrics["accuracy"] == pytest.approx(accuracy(probs, np.asarray(data.y_test)), abs=1e-3)


def test_a_trial_without_ensemble_keeps_its_predictions_and_its_metrics(tmp_path):
    plain = _train(tmp_path / "a.keras", 5)
    kept_run = _train(tmp_path / "trial-4.keras", 5, keep_predictions=True)
    for split in ("val_metrics", "test_metrics"):  # computed from its predictions, as Keras' evaluate gives them
        ours, keras_evaluate = getattr(kept_run, split), getattr(plain, split)
        assert ours.keys() == keras_evaluate.keys() == {"accuracy", "loss"}
        assert ours["accuracy"] == pytest.approx(keras_evaluate["accuracy"], abs=1e-6)
        assert ours["loss"] == pytest.approx(keras_evaluate["loss"], rel=1e-4)  # regularization included
    assert "ensemble" not in kept_run.details
    from hpo import datasets

    data = datasets.load("synthetic_images", seed=7)
    classes = data.info.num_classes
    with np.load(kept.predictions_path(tmp_path / "trial-4.keras")) as arrays:
        assert arrays["val"].shape == (len(data.y_val), classes) and arrays["test"].shape == (len(data.y_test), classes)
        assert arrays["val"].dtype == np.float32
        assert accuracy(arrays["test"], np.asarray(data.y_test)) == pytest.approx(plain.test_metrics["accuracy"],
                                                                                  abs=1e-6)


def test_a_trial_that_keeps_its_predictions_passes_over_each_split_once(tmp_path, monkeypatch):
    """Its metrics come from the predictions it keeps: no evaluate after training, one predict per split (an evaluate
    and then a predict passed over the test split twice, seconds of a final's end on Fashion-MNIST)."""
    import keras

    from hpo import datasets

    sizes = {"evaluate": [], "predict": []}
    for name in sizes:
        original = getattr(keras.Model, name)

        def spy(self, x=None, *args, _name=name, _original=original, **kw):
            sizes[_name].append(len(x))
            return _original(self, x, *args, **kw)
        monkeypatch.setattr(keras.Model, name, spy)
    result = _train(tmp_path / "trial-3.keras", 5, keep_predictions=True, time_limit_s=60.0)
    data = datasets.load("synthetic_images", seed=7)
    assert result.status == "completed", result.error
    assert sizes["evaluate"] == [len(data.x_val)] * result.epochs_run  # fit's validation pass each epoch, no more
    assert sorted(sizes["predict"]) == sorted([len(data.x_val), len(data.x_test)])
    end = result.details["end_phase"]
    assert end["evaluate_s"] > 0 and end["ensemble_s"] > 0 and end["reserved_s"] > 0


def test_the_run_keeps_the_best_completed_models_and_cleans_up(tmp_path):
    files = ModelFiles(tmp_path, pareto=False, keep=2)
    for number in range(4):
        path = files.path(number)
        path.write_bytes(b"model %d" % number)
        kept.predictions_path(path).write_bytes(b"npz")
    files.keep(0, 0.5)
    files.keep(1, 0.7)
    files.promote(1)  # the best moves to best_model.keras: the kept link stays
    files.keep(2, 0.6)
    files.keep(3, 0.4)  # not among the 2 best: not kept
    folder = tmp_path / "models" / "kept"
    assert sorted(p.name for p in folder.iterdir()) == ["trial-1.keras", "trial-1.npz", "trial-2.keras", "trial-2.npz"]
    assert (folder / "trial-1.keras").read_bytes() == b"model 1" == (tmp_path / "best_model.keras").read_bytes()
    for number in range(4):  # the search drops every finished trial's leftovers (the best's file moved already)
        files.drop(number)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["kept"]
    files.finalize(1)
    assert not (tmp_path / "models").exists()


def test_a_trial_without_predictions_is_not_kept(tmp_path):
    files = ModelFiles(tmp_path, pareto=False, keep=2)
    files.path(0).write_bytes(b"model")  # a remote trial's model came back, its predictions did not
    files.keep(0, 0.9)
    assert not (tmp_path / "models" / "kept").exists()
    assert not ModelFiles(tmp_path, pareto=False).keep_count  # off unless asked


def test_a_budgeted_local_run_hands_its_kept_models_to_the_final(tmp_path):
    """The whole path on real training: trials leave predictions, the search keeps the best, the final reads them
    (and, final_warm_start, starts from its source's weights)."""
    import optuna

    import hpo

    result = hpo.optimize(dataset="synthetic_images", trials=500, max_epochs_per_trial=2, time_budget_minutes=0.4,
                          concurrent_workers=1, quiet=True, plot_generation="none", output_dir=str(tmp_path),
                          run_name="e", seed=3, final_warm_start=True)
    study = optuna.load_study(study_name="e", storage=f"sqlite:///{tmp_path / 'e' / 'study.db'}")
    finals = [t for t in study.trials if "final_of" in t.user_attrs and t.state.name == "COMPLETE"]
    assert finals, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in study.trials]
    searched = [t for t in study.trials if "final_of" not in t.user_attrs and t.state.name == "COMPLETE"]
    detail = finals[0].user_attrs["result"]["details"]["ensemble"]
    # one worker: the final starts after its source ended and was kept, so it starts from its weights
    source = finals[0].user_attrs["final_of"]
    warm = finals[0].user_attrs["result"]["details"]["warm_start"]
    assert (warm["from_trial"], warm["loaded"]) == (source, True), warm
    assert [r["warm_from"] for r in result.trials if r["number"] == finals[0].number] == [source]
    if isinstance(detail, dict):
        assert set(detail["members"][1:]) <= {t.number for t in searched}
    else:
        assert detail == f"none of {min(len(searched), kept.CANDIDATES)} kept models raised validation accuracy"
    best = json.loads((tmp_path / "e" / "best.json").read_text())
    if best["number"] == finals[0].number:  # best.json says what the best model averages
        assert best["ensemble"] == (detail if isinstance(detail, dict) else None)
    model = result.load_best_model()  # the best (an ensemble or one model) loads as one Keras model
    assert model.output_shape[-1] == 4 and not (tmp_path / "e" / "models").exists()


def test_a_final_whose_ensemble_cannot_be_built_stands_alone(tmp_path):
    models = tmp_path / "models"
    (models / "kept").mkdir(parents=True)
    result = _train(models / "trial-1.keras", 11, keep_predictions=True)
    for name in ("trial-1.keras", "trial-1.npz"):
        (models / "kept" / name).write_bytes((models / name).read_bytes())
    (models / "kept" / "trial-1.keras").write_bytes(b"not a model")  # unreadable: loading it raises
    final = _train(models / "trial-2.keras", 19, keep_predictions=True, ensemble=3)
    assert final.status == "completed"
    detail = final.details["ensemble"]
    if isinstance(detail, str) and detail.startswith("none of"):
        pytest.fail("the kept model did not help this final: the test needs one that does")
    assert detail.startswith("not built: ") and not kept.single_path(models / "trial-2.keras").exists()
    import keras

    keras.models.load_model(models / "trial-2.keras", compile=False)  # the final alone, saved
    assert final.val_metrics["accuracy"] == pytest.approx(final.history["val_accuracy"][final.best_epoch - 1])
    assert result.status == "completed"


def test_waiting_for_other_finals_ends_when_they_are_kept_or_at_the_deadline(tmp_path):
    folder = tmp_path / "kept"
    folder.mkdir()

    def keep_later():  # the run links the other final's files once its result is in
        time.sleep(0.3)
        (folder / "trial-4.keras").write_bytes(b"model")
        (folder / "trial-4.npz").write_bytes(b"predictions")

    thread = threading.Thread(target=keep_later)
    thread.start()
    found, waited = await_kept(folder, [4], until=time.perf_counter() + 60)
    thread.join()
    assert found == [4] and 0 < waited < 60  # it waited for trial 4, not for the deadline
    (folder / "trial-5.keras").write_bytes(b"model")  # a model without its predictions is not kept yet
    until = time.perf_counter() + 0.2
    found, _ = await_kept(folder, [4, 5], until)
    assert found == [4] and time.perf_counter() >= until  # 5 never came: waited until the deadline, no longer


def test_the_last_final_averages_the_other_final_once_it_is_kept(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    files = ModelFiles(tmp_path, pareto=False, keep=kept.CANDIDATES)
    other = _train(models / "trial-4.keras", 14, keep_predictions=True, ensemble=3)  # the first final, kept
    files.keep(4, other.val_metrics["accuracy"])
    last = _train(models / "trial-5.keras", 15, keep_predictions=True, ensemble=3, gather=[4], time_limit_s=600)
    assert last.status == "completed"
    assert last.details["finals"]["waited_for"] == [4] and last.details["finals"]["found"] == [4]
    detail = last.details["ensemble"]
    if isinstance(detail, dict):  # averaged with the other final: the only model kept
        assert detail["members"] == [5, 4]
    else:
        assert detail == "none of 1 kept models raised validation accuracy"
    alone = _train(models / "trial-6.keras", 16, keep_predictions=True, ensemble=3, gather=[9], time_limit_s=20)
    assert alone.status == "completed" and alone.details["finals"]["found"] == []  # trial 9 never kept: alone


def test_a_budgeted_run_on_two_workers_may_average_its_two_finals(tmp_path):
    """Real training on two workers: the first final ends earlier and is kept; the last one waits for it (found)."""
    import optuna

    import hpo

    hpo.optimize(dataset="synthetic_images", trials=500, max_epochs_per_trial=2, time_budget_minutes=0.6,
                 concurrent_workers=2, quiet=True, plot_generation="none", output_dir=str(tmp_path), run_name="two",
                 seed=3)
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path / 'two' / 'study.db'}")
    finals = sorted((t for t in study.trials if "final_of" in t.user_attrs), key=lambda t: t.number)
    states = [(t.number, t.state.name, t.user_attrs.get("reason")) for t in study.trials]
    assert len(finals) == 2 and all(t.state.name == "COMPLETE" for t in finals), states
    first, last = (t.user_attrs["result"]["details"] for t in finals)
    assert "finals" not in first and last["finals"]["found"] == [finals[0].number], (first, last)
    detail = last["ensemble"]
    if isinstance(detail, dict):  # the members: the last final first, then kept models (the first final among them)
        assert detail["members"][0] == finals[1].number
