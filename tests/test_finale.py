"""Search short, then train long (final_training_share): under time_budget_minutes the search stops at its share of
the time, the best configurations are trained again from scratch on a schedule spanning the time left (never pruned,
no early stopping), and the search trials still running are kept, complete at the epochs they trained."""

from __future__ import annotations

import math

import optuna
import pytest

import hpo
from hpo.budget import TimeBudget
from hpo.config import OptimizationConfig
from hpo.finale import (FINAL_CUT, FINAL_DROPPED, FINAL_EPOCHS_MARGIN, FINAL_LATE, GATHER_S, MAX_FINALS, ROOM_EPOCH,
                        Finale)

from .test_time_budget import Paced

RUN = dict(quiet=True, plot_generation="none", warm_start=False, pruner="none", dataset="synthetic_images")


def _study(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name / 'study.db'}")


def _budgeted(tmp_path, name, backend, *, workers, epochs, minutes, share=0.5, **options):
    """A run of up to 500 trials of ``epochs`` under a time budget of ``minutes``; (result, study)."""
    result = hpo.optimize(trials=500, max_epochs_per_trial=epochs, time_budget_minutes=minutes,
                          final_training_share=share, concurrent_workers=workers, backend=backend,
                          output_dir=str(tmp_path), run_name=name, **{**RUN, **options})
    return result, _study(tmp_path, name)


def _finals(study):
    return [t for t in study.trials if "final_of" in t.user_attrs]


def test_the_best_configuration_found_is_trained_again_on_a_schedule_spanning_the_time_left(tmp_path):
    backend = Paced(0.05)  # accuracy grows with epochs and learning_rate: longer training of the best one wins
    result, study = _budgeted(tmp_path, "f", backend, workers=1, epochs=4, minutes=0.15)
    finals = _finals(study)
    assert len(finals) == 1, [t.user_attrs for t in study.trials]
    final = finals[0]
    source = study.trials[final.user_attrs["final_of"]]
    # the best search trial when the search phase ended (trials cut for the final training ended after the choice)
    before = [t for t in study.trials if t.state.name == "COMPLETE" and t.number < final.number
              and not (t.user_attrs.get("reason") or "").startswith((FINAL_CUT, FINAL_LATE))]
    assert source.value == max(t.value for t in before)
    assert final.params == source.params
    job = backend.jobs[-1]
    assert job.trial_id.endswith(f"#{final.number}") and job.params == source.params
    assert job.max_epochs == final.user_attrs["job"]["max_epochs"] > 4
    assert job.patience == job.max_epochs and job.schedule_epochs == job.max_epochs  # no early stop, its own cosine
    assert final.state.name == "COMPLETE" and final.user_attrs["epochs_trained"] > 4
    assert result.best_trial_number == final.number  # it trained longest, and longer is better here
    assert any(n.startswith(f"final training: trial {final.number} trains trial {source.number}'s configuration again "
                            f"for {job.max_epochs} epochs") for n in result.notes), result.notes
    # no search trial started after the final training began
    assert [j for j in backend.jobs if j.max_epochs > 4] == [job]


def test_a_search_trial_running_when_the_search_ends_is_cut_at_its_epoch_and_kept(tmp_path):
    backend = Paced(0.05, honour=False)  # search trials of 1.5 s back to back: one is running when the search ends
    _, study = _budgeted(tmp_path, "g", backend, workers=1, epochs=30, minutes=0.25)
    cut = [t for t in study.trials if (t.user_attrs.get("reason") or "").startswith(FINAL_CUT)]
    assert cut, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in study.trials]
    assert len(cut) == 1 and cut[0].number == _finals(study)[0].number - 1  # the one running then
    assert cut[0].state.name == "COMPLETE"  # complete at what it trained, fewer epochs than asked
    assert cut[0].user_attrs["reason"] == f"{FINAL_CUT}: trained {cut[0].user_attrs['epochs_trained']} epochs"


def test_with_two_workers_the_two_best_distinct_configurations_are_trained_again(tmp_path):
    backend = Paced(0.04)
    _, study = _budgeted(tmp_path, "h", backend, workers=2, epochs=3, minutes=0.25)  # room for a search under load
    finals = _finals(study)
    assert len(finals) == MAX_FINALS
    sources = [study.trials[t.user_attrs["final_of"]] for t in finals]
    assert sources[0].params != sources[1].params
    assert all(f.params == s.params for f, s in zip(finals, sources))
    # every search trial that ended before the choice is no better than the chosen (a trial that ended after it,
    # finishing its last epoch as the search closed, says so: it was not considered)
    others = [t for t in study.trials if t.state.name == "COMPLETE" and "final_of" not in t.user_attrs
              and t.number < min(f.number for f in finals) and t not in sources]
    considered = [t for t in others if not (t.user_attrs.get("reason") or "").startswith((FINAL_CUT, FINAL_LATE))]
    assert all(t.value <= min(s.value for s in sources) for t in considered)
    assert all(t.user_attrs["reason"] == f"{FINAL_LATE}: trained 3 epochs" for t in others
               if (t.user_attrs.get("reason") or "").startswith(FINAL_LATE))


def test_off_with_share_zero_and_without_a_time_budget(tmp_path):
    backend = Paced(0.05)
    _, study = _budgeted(tmp_path, "o", backend, workers=1, epochs=4, minutes=0.08, share=0.0)
    assert not _finals(study) and all(j.max_epochs == 4 for j in backend.jobs)
    backend = Paced(0.01)
    hpo.optimize(trials=3, max_epochs_per_trial=4, concurrent_workers=1, backend=backend, output_dir=str(tmp_path),
                 run_name="p", **RUN)
    assert not _finals(_study(tmp_path, "p")) and len(backend.jobs) == 3


@pytest.mark.parametrize("options, active", [
    ({"time_budget_minutes": 2.0}, True),
    ({}, False),
    ({"time_budget_minutes": 2.0, "final_training_share": 0.0}, False),
    ({"time_budget_minutes": 2.0, "mode": "pareto"}, False),
])
def test_when_the_final_training_applies(options, active):
    config = OptimizationConfig(dataset="synthetic_images", plot_generation="none", **options)
    finale = Finale(config, TimeBudget(config, started=1000.0))
    assert finale.active is active
    if active:  # half of the time for trials: 120 s less the 3 s reserve, from 1000
        assert finale.begins_at == pytest.approx(1000.0 + 0.5 * 117.0)
        assert not finale.due(now=1058.0) and finale.due(now=1059.0)


def test_the_final_epochs_come_from_the_source_trials_measured_epoch_time(monkeypatch):
    config = OptimizationConfig(dataset="synthetic_images", plot_generation="none", time_budget_minutes=2.0)
    budget = TimeBudget(config)
    finale = Finale(config, budget)
    # 2 s before the first epoch, which takes 1.2 s (tracing), then 0.6, 0.5, 0.5 s; 1 s more to answer
    for epoch, elapsed in ((1, 3.2), (2, 3.8), (3, 4.3), (4, 4.8)):
        finale.note_epoch(7, epoch, elapsed)
    finale.note_result(7, 5.8)
    per_epoch, overhead = finale.timing(7)
    # the fastest epoch; overhead: 1 s to answer, 2 s before the first epoch and its 0.7 s of tracing
    assert per_epoch == pytest.approx(0.5) and overhead == pytest.approx(1.0 + 3.2 - 0.5)
    monkeypatch.setattr(budget, "time_left", lambda: 53.0)
    assert finale.epochs(7) == int((53.0 - 3.7) / 0.5)
    monkeypatch.setattr(budget, "time_left", lambda: 43.0)  # counted from the time left when asked
    assert finale.epochs(7) == int((43.0 - 3.7) / 0.5)
    assert finale.epochs(8) == config.min_epochs_per_trial  # nothing measured


def test_a_completed_trial_says_why_its_value_is_qualified():
    config = OptimizationConfig(dataset="synthetic_images", plot_generation="none", time_budget_minutes=2.0)
    finale = Finale(config, TimeBudget(config))
    search = type("T", (), {"user_attrs": {}})()
    final = type("T", (), {"user_attrs": {"final_of": 3}})()
    assert finale.reason(search, None, out_of_time=False) is None  # trained as asked
    assert finale.reason(search, None, out_of_time=True) == "time_budget_minutes"
    assert finale.reason(search, FINAL_CUT, out_of_time=True) == FINAL_CUT
    finale.begun = True  # the configurations to train again are chosen
    assert finale.reason(search, FINAL_CUT, out_of_time=False) == FINAL_LATE  # it finished its last epoch anyway
    assert finale.reason(search, None, out_of_time=False) == FINAL_LATE
    assert finale.reason(final, None, out_of_time=False) is None
    assert finale.reason(final, None, out_of_time=True) == "time_budget_minutes"


def test_a_final_is_not_planned_when_it_would_not_train_longer_than_the_search_did(tmp_path):
    backend = Paced(0.05)
    # a share of 0.15 leaves about 1.3 s for the final: fewer epochs than the 30 (1.5 s) the search trials train
    result, study = _budgeted(tmp_path, "n", backend, workers=1, epochs=30, minutes=0.2, share=0.15)
    assert not _finals(study)
    assert any(n.startswith("final training: none") for n in result.notes), result.notes


def test_without_room_for_a_search_the_first_configuration_trains_long_at_once(tmp_path):
    # 0.2 s per epoch: the search phase (about 3 s) has no room for 3 trials of 10 epochs (6 s), so at its epoch
    # ROOM_EPOCH the first trial is cut (at that epoch's end or the next one's: the decision may reach it during it)
    # and its configuration trained again on one schedule spanning the time left
    backend = Paced(0.2)
    result, study = _budgeted(tmp_path, "r", backend, workers=1, epochs=10, minutes=0.15)
    finals = _finals(study)
    assert [f.user_attrs["final_of"] for f in finals] == [0] and finals[0].number == 1
    first = study.trials[0]
    assert first.user_attrs["reason"].startswith(FINAL_CUT)
    assert ROOM_EPOCH <= first.user_attrs["epochs_trained"] <= ROOM_EPOCH + 1
    assert len(backend.jobs) == 2 and backend.jobs[1].max_epochs > 10  # nothing else was searched
    assert finals[0].params == first.params and result.best_trial_number == 1


class Stumbling(Paced):
    """The first trial's second epoch takes three times as long as any other (beside another trial's start)."""

    def seconds(self, job, epoch):
        return 3 * self.epoch_s if job is self.jobs[0] and epoch == 2 else self.epoch_s


def test_one_slow_epoch_does_not_judge_a_search_with_room_to_have_none(tmp_path):
    # 0.1 s per epoch: the search phase (about 6 s) has room for 3 trials of 10 epochs (3 s); judged at the first
    # trial's second epoch alone (0.3 s) it had none (9 s). Judged at ROOM_EPOCH from the faster epoch, it searches
    backend = Stumbling(0.1)
    _, study = _budgeted(tmp_path, "st", backend, workers=1, epochs=10, minutes=0.2)
    first = study.trials[0]
    assert first.user_attrs["epochs_trained"] == 10 and not first.user_attrs.get("reason"), first.user_attrs
    assert len([j for j in backend.jobs if j.max_epochs == 10]) >= 3  # it searched
    assert all(f.user_attrs["final_of"] != 0 or f.number > 3 for f in _finals(study))


class Quickening(Paced):
    """The first trial's epochs take 0.25 s, every later one's 0.2 s (the first trial ran beside a worker's start)."""

    def seconds(self, job, epoch):
        return 0.25 if job is self.jobs[0] else 0.2


def test_a_final_asks_more_epochs_than_estimated_and_its_time_limit_ends_it(tmp_path):
    # the final's epochs are estimated at the first trial's pace (0.25 s); it runs at 0.2 s, so the estimate would
    # have ended it with a fifth of its time unused: its job asks FINAL_EPOCHS_MARGIN times as many, the limit ends it
    backend = Quickening(0.25)
    result, study = _budgeted(tmp_path, "q", backend, workers=1, epochs=10, minutes=0.15)
    [final] = _finals(study)
    [note] = [n for n in result.notes if n.startswith(f"final training: trial {final.number}")]
    fit = int(note.split("(")[1].split(" fit")[0])
    job = backend.jobs[-1]
    assert job.max_epochs == math.ceil(FINAL_EPOCHS_MARGIN * fit) and f"for {job.max_epochs} epochs" in note
    assert final.user_attrs["reason"].startswith("time_budget_minutes")  # ended by its time limit, not its epochs
    assert final.user_attrs["epochs_trained"] > fit


def test_without_room_and_with_two_workers_each_trains_the_first_configuration_with_its_own_seed(tmp_path):
    backend = Paced(0.2)
    _, study = _budgeted(tmp_path, "s", backend, workers=2, epochs=10, minutes=0.15)
    finals = _finals(study)
    assert len(finals) == 2 and finals[0].user_attrs["final_of"] == finals[1].user_attrs["final_of"]
    assert finals[0].params == finals[1].params == study.trials[finals[0].user_attrs["final_of"]].params
    seeds = {j.seed for j in backend.jobs if j.trial_id.endswith((f"#{finals[0].number}", f"#{finals[1].number}"))}
    assert len(seeds) == 2  # two chances at the same configuration; the better one is the run's best


def test_configurations_still_queued_when_the_search_ends_are_dropped_not_trained_before_the_final(tmp_path):
    # the default and the built-in portfolio's members are queued; the search phase has no room for them (as above),
    # so the first configuration trains long at once and the members still queued never start
    backend = Paced(0.2)
    result, study = _budgeted(tmp_path, "q", backend, workers=1, epochs=10, minutes=0.15, warm_start=True)
    finals = _finals(study)
    assert [f.user_attrs["final_of"] for f in finals] == [0], [t.user_attrs for t in study.trials]
    assert study.trials[0].user_attrs.get("warm_start") is True
    assert len(backend.jobs) == 2 and backend.jobs[1].max_epochs > 10, [j.params for j in backend.jobs]
    dropped = [t for t in study.trials if t.user_attrs.get("portfolio")]
    assert dropped and all(t.state.name == "PRUNED" and t.user_attrs.get("rejected") for t in dropped)
    assert all(t.user_attrs["reason"] == FINAL_DROPPED for t in dropped)
    assert result.best_trial_number == finals[0].number
    # the dropped configurations are not trials of the run (left out of its records and counts)
    assert [t["number"] for t in result.trials] == [0, finals[0].number]
    assert result.completed + result.pruned + result.failed == 2


def test_with_fewer_distinct_configurations_than_workers_the_best_fills_every_final(tmp_path):
    import types

    finale = Finale(OptimizationConfig(dataset="synthetic_images", time_budget_minutes=1, concurrent_workers=2),
                    TimeBudget(OptimizationConfig(dataset="synthetic_images", time_budget_minutes=1)))

    def trial(number, value, params, state="COMPLETE"):
        return types.SimpleNamespace(number=number, value=value, params=params, user_attrs={},
                                     state=types.SimpleNamespace(name=state))

    a, b = {"learning_rate": 0.01}, {"learning_rate": 0.001}
    pruned = trial(1, 0.9, b, state="PRUNED")
    assert finale.choose([trial(0, 0.8, a), pruned]) == [(0, a), (0, a)]  # one completed: it trains on both workers
    assert finale.choose([trial(0, 0.8, a), trial(2, 0.85, b)]) == [(2, b), (0, a)]  # two distinct: one each
    assert finale.choose([pruned]) == []


@pytest.mark.parametrize("attrs", [{"warm_start": True}, {"initial_config": 1}, {"portfolio": 2}])
def test_of_two_finals_one_is_from_the_start_queue_when_the_search_ranked_its_own_first(attrs):
    import types

    from hpo.search_space import START_ATTRS

    config = OptimizationConfig(dataset="synthetic_images", time_budget_minutes=1, concurrent_workers=2)
    finale = Finale(config, TimeBudget(config))

    def trial(number, value, params, user_attrs=None, state="COMPLETE"):
        return types.SimpleNamespace(number=number, value=value, params=params, user_attrs=user_attrs or {},
                                     state=types.SimpleNamespace(name=state))

    d, e, a, b, c = ({"learning_rate": x} for x in (0.001, 0.002, 0.01, 0.02, 0.03))
    start = [trial(0, 0.80, d, attrs), trial(1, 0.82, e, attrs)]
    assert set(attrs) <= set(START_ATTRS)
    # the search's two best rank above the start queue: the second place goes to the start queue's best
    assert finale.choose([*start, trial(5, 0.90, a), trial(6, 0.88, b), trial(7, 0.85, c)]) == [(5, a), (1, e)]
    # one of the best two is from the start queue already: by value, as before
    assert finale.choose([*start, trial(5, 0.90, a), trial(6, 0.81, b)]) == [(5, a), (1, e)]
    assert finale.choose([*start, trial(5, 0.79, a)]) == [(1, e), (0, d)]
    # a search trial with a start configuration's parameters counts as that configuration
    assert finale.choose([*start, trial(5, 0.90, e), trial(6, 0.88, b)]) == [(5, e), (6, b)]
    # the start queue's trials pruned or failed: nothing to take, by value
    dropped = [trial(0, 0.5, d, attrs, "PRUNED"), trial(1, None, e, attrs, "FAIL")]
    assert finale.choose([*dropped, trial(5, 0.90, a), trial(6, 0.88, b)]) == [(5, a), (6, b)]
    # one worker, one final: the best by value, whatever its origin
    one = Finale(OptimizationConfig(dataset="synthetic_images", time_budget_minutes=1), TimeBudget(config))
    assert one.choose([*start, trial(5, 0.90, a), trial(6, 0.88, b)]) == [(5, a)]


def test_start_queue_trials_carry_one_of_the_attributes_the_finals_look_for(tmp_path):
    from hpo import search_space

    configs = tmp_path / "initial.json"
    configs.write_text('[{"learning_rate": 0.003}]')
    queue = search_space.start_queue("image", input_shape=(28, 28, 1), portfolio_size=3, initial=str(configs))
    assert len(queue) == 4 and all(len(attrs) == 1 and set(attrs) <= set(search_space.START_ATTRS)
                                   for _, attrs in queue)
    assert {k for _, attrs in queue for k in attrs} == set(search_space.START_ATTRS)


class _SearchFindsBetter(Paced):
    """The start queue's configurations (trials 0-2: the default and two portfolio members) score 0.2 below what the
    search's own configurations score at the same epoch."""

    def accuracy(self, job, epoch):
        return super().accuracy(job, epoch) - (0.2 if int(job.trial_id.rsplit("#", 1)[1]) < 3 else 0.0)


def test_with_two_workers_a_start_configuration_is_trained_again_beside_the_searchs_best(tmp_path):
    backend = _SearchFindsBetter(0.04)
    result, study = _budgeted(tmp_path, "k", backend, workers=2, epochs=3, minutes=0.3, warm_start=True)
    start = [t for t in study.trials if t.number < 3]
    assert all(t.user_attrs.get("warm_start") or t.user_attrs.get("portfolio") for t in start)
    finals = _finals(study)
    assert len(finals) == MAX_FINALS
    sources = [study.trials[f.user_attrs["final_of"]] for f in finals]
    considered = [t for t in study.trials if t.state.name == "COMPLETE" and t.number < min(f.number for f in finals)
                  and not (t.user_attrs.get("reason") or "").startswith((FINAL_CUT, FINAL_LATE))]
    searched = [t for t in considered if t.number >= 3]
    assert len(searched) >= 2 and all(t.value > max(s.value for s in start if s.value) for t in searched[:2])
    assert sources[0].value == max(t.value for t in searched)  # the search's best
    assert sources[1].number < 3 and sources[1].value == max(t.value for t in considered if t.number < 3)
    second = sorted(searched, key=lambda t: (-t.value, t.number))[1]  # what it replaced, and the run says so
    assert (f"final training: trial {sources[1].number} (the start queue's best) is trained again in place of trial "
            f"{second.number}, the search's second best") in " ".join(result.notes), result.notes


def test_every_trial_keeps_its_predictions_and_the_final_may_average_final_ensemble_models(tmp_path):
    backend = Paced(0.05)
    _, study = _budgeted(tmp_path, "e", backend, workers=1, epochs=4, minutes=0.15)
    final = _finals(study)[0]
    assert backend.jobs and all(j.keep_predictions for j in backend.jobs)
    assert [j.ensemble for j in backend.jobs if j.trial_id.endswith(f"#{final.number}")] == [3]
    assert all(j.ensemble == 0 for j in backend.jobs if not j.trial_id.endswith(f"#{final.number}"))


@pytest.mark.parametrize("options", [{"final_ensemble": 1}, {"final_training_share": 0.0}])
def test_no_predictions_kept_when_no_final_may_average_or_start_warm(tmp_path, options):
    backend = Paced(0.05)
    hpo.optimize(trials=500, max_epochs_per_trial=4, time_budget_minutes=0.08, concurrent_workers=1, backend=backend,
                 output_dir=str(tmp_path), run_name="n", **{**RUN, **options})
    assert backend.jobs and not any(j.keep_predictions or j.ensemble for j in backend.jobs)


@pytest.mark.parametrize("options, size", [
    ({"time_budget_minutes": 2.0}, 3),
    ({"time_budget_minutes": 2.0, "final_ensemble": 5}, 5),
    ({}, 1),
    ({"time_budget_minutes": 2.0, "mode": "pareto"}, 1),
    ({"time_budget_minutes": 2.0, "own_model": True}, 1),
    ({"time_budget_minutes": 2.0, "remote": True}, 1),
])
def test_when_a_final_may_average_models(options, size):
    import dataclasses
    import types

    from hpo.finale import ensemble_size

    own, remote = options.pop("own_model", False), options.pop("remote", False)
    config = OptimizationConfig(dataset="synthetic_images", plot_generation="none", **options)
    if own or remote:  # a user's build function (its layers may not combine into one saved model); RunPod workers
        changes = {"model": "my_net:build"} if own else {"use_runpod_service": True}
        config = types.SimpleNamespace(**{**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                                          **changes})
    assert ensemble_size(config) == size


class _Queued(Paced):
    """A backend that queues trials ahead (as RunPod's does): the dispatcher then asks several trials in one batch."""

    queue_ahead = 1


def test_finals_asked_in_one_batch_each_train_long_and_none_is_dropped(tmp_path):
    backend = _Queued(0.04)
    result, study = _budgeted(tmp_path, "q", backend, workers=2, epochs=3, minutes=0.25)
    finals = _finals(study)
    assert len(finals) == MAX_FINALS, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in study.trials]
    for final in finals:  # each asked as a final: its epochs from the time left, no early stopping
        job = final.user_attrs["job"]
        assert final.state.name == "COMPLETE" and job["max_epochs"] > 3 and job["patience"] == job["max_epochs"]
    noted = [n for n in result.notes if n.startswith("final training: trial ")]
    assert sorted(int(n.split()[3]) for n in noted) == sorted(f.number for f in finals)
    # nothing asked after the finals but what the study held queued before them (dropped, never trained)
    after = [t for t in study.trials if t.number > min(f.number for f in finals) and t not in finals]
    assert all(t.user_attrs.get("reason") == FINAL_DROPPED for t in after), [(t.number, t.user_attrs) for t in after]


@pytest.mark.parametrize("ensemble, planned, averaged", [(3, 2, True), (1, 2, False), (3, 1, False)])
def test_the_last_of_two_finals_waits_for_the_other_which_ends_earlier(ensemble, planned, averaged):
    config = OptimizationConfig(dataset="synthetic_images", plot_generation="none", time_budget_minutes=2.0,
                                concurrent_workers=2, final_ensemble=ensemble, final_warm_start=True)
    finale = Finale(config, TimeBudget(config))
    finale.begun, finale.pending = True, planned  # finals planned (queued), asked in order
    finale.asked(5, 2)
    if planned == 2:
        finale.asked(6, 3)
    assert finale.time_limit(5, 60.0) == (60.0 - GATHER_S if averaged else 60.0)  # the first ends earlier
    assert finale.time_limit(6, 60.0) == finale.time_limit(4, 60.0) == 60.0  # the last one, a search trial: as left
    assert finale.time_limit(5, None) is None  # no budget
    assert finale.job_fields(5)["gather"] == [] and finale.job_fields(4) == {"keep_predictions": True,
                                                                          "ensemble": 0, "gather": []}
    assert finale.job_fields(6 if planned == 2 else 5)["gather"] == ([5] if averaged else [])
    assert finale.job_fields(5)["ensemble"] == ensemble  # 1: the final alone (it still starts warm)


@pytest.mark.parametrize("ensemble, warm, fields", [
    (3, True, {"keep_predictions": True, "ensemble": 3, "gather": [], "warm_from": 2}),
    (1, True, {"keep_predictions": True, "ensemble": 1, "gather": [], "warm_from": 2}),
    (3, False, {"keep_predictions": True, "ensemble": 3, "gather": []}),
    (1, False, {}),
])
def test_a_final_starts_from_its_source_trials_weights_unless_final_warm_start_is_off(ensemble, warm, fields):
    from hpo.finale import keeps_models

    config = OptimizationConfig(dataset="synthetic_images", plot_generation="none", time_budget_minutes=2.0,
                                final_ensemble=ensemble, final_warm_start=warm)
    finale = Finale(config, TimeBudget(config))
    finale.begun, finale.pending = True, 1
    finale.asked(5, 2)  # final 5 trains trial 2's configuration again
    assert keeps_models(config) is bool(fields)  # the run keeps its best models for the finals (session: ModelFiles)
    assert finale.job_fields(5) == fields
    assert "warm_from" not in finale.job_fields(4)  # a search trial starts from scratch
    assert ("from its weights" in finale._notes[-1]) is warm
    assert OptimizationConfig(dataset="synthetic_images").final_warm_start is False  # off unless asked (measured)


def test_a_final_of_a_budgeted_run_starts_from_its_source_trials_weights(tmp_path):
    backend = Paced(0.05)
    _, study = _budgeted(tmp_path, "w", backend, workers=1, epochs=4, minutes=0.15, final_ensemble=1,
                         final_warm_start=True)
    final = _finals(study)[0]
    jobs = {j.trial_id: j for j in backend.jobs}
    assert jobs[f"w#{final.number}"].warm_from == final.user_attrs["final_of"]
    assert all(j.warm_from is None for t, j in jobs.items() if t != f"w#{final.number}")
    assert all(j.keep_predictions for j in backend.jobs)  # with final_ensemble=1 too: the models are kept for it


def test_two_finals_side_by_side_one_ends_earlier_the_other_waits_for_it(tmp_path):
    backend = Paced(0.04)
    _, study = _budgeted(tmp_path, "w", backend, workers=2, epochs=3, minutes=0.25)
    finals = sorted(_finals(study), key=lambda t: t.number)
    assert len(finals) == MAX_FINALS, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in study.trials]
    jobs = {int(j.trial_id.rsplit("#", 1)[1]): j for j in backend.jobs}
    first, last = (jobs[f.number] for f in finals)
    assert first.gather == [] and last.gather == [finals[0].number] and first.ensemble == last.ensemble == 3
    # each job's deadline: when it was asked + its time limit; the first's is GATHER_S before the last's
    ends = [f.datetime_start.timestamp() + jobs[f.number].time_limit_s for f in finals]
    assert ends[1] - ends[0] == pytest.approx(GATHER_S, abs=1.0)
    assert all(not j.gather for n, j in jobs.items() if n != finals[1].number)


class _SecondIsQuick(Paced):
    """Trial 1 trains in no time, so its thread takes trial 2 while the search phase still runs."""

    def seconds(self, job, epoch):
        return 0.01 if job.trial_id.endswith("#1") else self.epoch_s


def test_a_search_trial_taken_just_as_the_finals_begin_is_dropped_not_run_through_them(tmp_path, monkeypatch):
    """The race: a trial thread has taken trial 2 from the ready queue (so the finale's start cannot dispose of it)
    but not yet registered its cancel token when the finale begins. It must not run: before, it was neither disposed
    of nor cut and held its worker through the finals (seen on Fashion-MNIST at T: the second final never started)."""
    import threading

    from hpo.dispatch import Dispatcher

    finale_begun, begin, run_trial = threading.Event(), Dispatcher._begin_finale, Dispatcher._run_trial

    def begin_finale(self, source=None):
        begin(self, source)
        if self.search.finale.begun:
            finale_begun.set()

    def held_run_trial(self, running):
        if running.ready.trial.number == 2:  # taken; its token registered only once the finale has begun
            assert finale_begun.wait(10)
        run_trial(self, running)

    monkeypatch.setattr(Dispatcher, "_begin_finale", begin_finale)
    monkeypatch.setattr(Dispatcher, "_run_trial", held_run_trial)
    backend = _SecondIsQuick(0.2)
    _, study = _budgeted(tmp_path, "race", backend, workers=2, epochs=10, minutes=0.15)
    assert finale_begun.is_set()
    ran = {int(j.trial_id.split("#")[1]) for j in backend.jobs}
    assert 2 not in ran, "trial 2 ran after the finals began"
    dropped = study.trials[2]
    assert "final_of" not in dropped.user_attrs and dropped.state.name == "PRUNED"
    assert dropped.user_attrs["reason"] == FINAL_CUT
    finals = _finals(study)
    assert len(finals) == 2 and {f.number for f in finals} <= ran  # trial 2 held no worker: both finals ran
    assert all(f.state.name == "COMPLETE" for f in finals)


class _SlowSearch(Paced):
    """The first trial's configuration takes 0.2 s an epoch; every other search trial 6.5 s (a larger model's first,
    slow epoch): the median seconds per epoch of the trials so far says nothing of the finals' own pace."""

    def seconds(self, job, epoch):
        return self.epoch_s if job.params == self.jobs[0].params else 6.5


def test_a_final_starts_when_its_own_configuration_fits_whatever_the_search_trials_took(tmp_path):
    # 15 s: trials end by 12 s, the search by 6 s. Trials 1 and 2 are cut at their first epoch's end (6.5 s, 7.5 s);
    # at 7.5 s the median of 0.2, 6.5 and 6.5 s per epoch asks 9.75 s of the 4.5 left: by the budget's rule no trial
    # fits, and the second final was never started (the run ended with one). At trial 0's 0.2 s an epoch it fits.
    backend = _SlowSearch(0.2)
    result, study = _budgeted(tmp_path, "slow", backend, workers=2, epochs=5, minutes=0.25)
    finals = _finals(study)
    assert [f.user_attrs["final_of"] for f in finals] == [0, 0], [(t.number, t.user_attrs) for t in study.trials]
    assert all(f.state.name == "COMPLETE" for f in finals), [(f.number, f.state.name) for f in finals]
    assert finals[-1].user_attrs["epochs_trained"] > 5  # the last one (the other ends GATHER_S earlier) trained long
    cut = [t for t in study.trials if t.number in (1, 2)]
    assert all(t.user_attrs["reason"].startswith(FINAL_CUT) for t in cut)
    assert result.best_trial_number in {f.number for f in finals}
