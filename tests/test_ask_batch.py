"""Several trials asked in one transaction (hpo.study.ask_trials, hpo.study.gathered_writes of several trials, and
the dispatcher asking in batches for remote workers), checked against Optuna's own ask on SQLite and on a real
PostgreSQL 15: the same trials, numbered as Optuna numbers them, with a fraction of the round trips."""

from __future__ import annotations

import collections
import threading

import optuna
from sqlalchemy import event, text

import hpo
from hpo import study as studies
from hpo.dispatch import ASK_BATCH
from hpo.search import Search

# the storage fixture: each test on SQLite and on a throw-away PostgreSQL 15 cluster (pg, one per module)
from .test_dispatch_ahead import FAST, Remote, _draw, _new_study, _trials, pg, storage  # noqa: F401


class Statements:
    """Counts the SQL statements and commits sent to the database meanwhile."""

    def __init__(self, storage):
        self.engine, self.statements, self.commits = storage.engine, 0, 0

    def _statement(self, *args):
        self.statements += 1

    def _commit(self, *args):
        self.commits += 1

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)


def test_a_batch_is_what_optuna_asks_one_by_one_in_two_commits(storage):
    study = _new_study(storage, "batch")
    one = study.ask()  # Optuna's own
    _draw(one)
    with Statements(storage) as batch:
        trials = studies.ask_trials(study, storage, 8)
        with studies.gathered_writes(*trials, first=True):
            for trial in trials:
                _draw(trial)
    assert batch.commits == 2  # created in one, written in one
    assert [t.number for t in trials] == list(range(1, 9))
    for trial in trials:
        frozen = storage.get_trial(trial._trial_id)
        assert frozen.state.name == "RUNNING" and frozen.number == trial.number
        assert frozen.params == trial.params and frozen.distributions == storage.get_trial(one._trial_id).distributions
        assert frozen.user_attrs == {"process": "here", "job": {"max_epochs": 4}}
        assert frozen.intermediate_values == {1: 0.5, 2: 0.6}
    with storage.engine.connect() as conn:  # each one's first heartbeat, in the same commit
        beats = conn.execute(text("SELECT count(*) FROM trial_heartbeats")).scalar()
    assert beats == 8
    # one at a time costs several times the statements (each its own lock, count, number and commit)
    with Statements(storage) as single:
        for _ in range(8):
            trial = studies.ask_trial(study, storage)
            with studies.gathered_writes(trial, first=True):
                _draw(trial)
    assert single.commits == 16 and batch.statements * 3 <= single.statements, (batch.statements, single.statements)
    assert [t.number for t in study.trials] == list(range(17))  # numbers as Optuna gives them: no gap, no repeat


def test_a_batch_carries_each_new_trials_own_parameters_and_attributes(storage):
    study = _new_study(storage, "made")
    trials = studies.ask_trials(study, storage, 3, new=lambda i: ({"blocks": i + 1}, {"near_default": True, "i": i}))
    with studies.gathered_writes(*trials, first=True):
        drawn = [t.suggest_int("blocks", 1, 3) for t in trials]
    assert drawn == [1, 2, 3]  # the fixed parameters of each, in order
    assert [storage.get_trial(t._trial_id).user_attrs for t in trials] == [
        {"near_default": True, "i": 0}, {"near_default": True, "i": 1}, {"near_default": True, "i": 2}]
    assert [storage.get_trial(t._trial_id).params for t in trials] == [{"blocks": 1}, {"blocks": 2}, {"blocks": 3}]


def test_queued_trials_go_first_one_at_a_time(storage):
    study = _new_study(storage, "queued")
    study.enqueue_trial({"blocks": 2}, user_attrs={"retry_of": 0})
    first = studies.ask_trials(study, storage, 5)
    assert len(first) == 1 and first[0].user_attrs == {"retry_of": 0}
    assert len(studies.ask_trials(study, storage, 5)) == 5  # nothing queued any more: a batch


def test_batches_asked_together_from_several_threads_are_numbered_as_optuna_numbers(storage):
    """Four threads (as processes sharing a study) each ask five batches of six: every trial has its own number, the
    numbers are 0..119 and follow the order the trials were created in."""
    study = _new_study(storage, "race")
    errors = []

    def asker():
        own = optuna.load_study(study_name=study.study_name, storage=storage)
        try:
            for _ in range(5):
                studies.ask_trials(own, storage, 6)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=asker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t._trial_id)
    assert [t.number for t in trials] == list(range(120))


def test_remote_workers_get_their_first_trials_in_batches_and_each_trial_runs_once(tmp_path, monkeypatch):
    """16 remote workers: the study thread asks their first trials in a few batches, not one by one; every trial of
    the run is asked once, runs once and completes."""
    calls = []
    original = Search.ask

    def ask(search, *args, **kwargs):
        asked = original(search, *args, **kwargs)
        calls.append(len(asked))
        return asked

    monkeypatch.setattr(Search, "ask", ask)
    backend = Remote(queue_ahead=4)
    result = hpo.optimize(dataset="synthetic_images", trials=40, concurrent_workers=16, max_epochs_per_trial=3,
                          output_dir=str(tmp_path), run_name="batched", backend=backend, **FAST)
    assert result.completed == 40
    assert sum(calls) >= 40 and max(calls) > 1 and max(calls) <= ASK_BATCH
    assert len(calls) < sum(calls) / 2, calls  # most trials came in batches
    assert len({j.trial_id for j in backend.jobs}) == len(backend.jobs) == 40
    trials = _trials(tmp_path, "batched")
    assert collections.Counter(t.state.name for t in trials) == {"COMPLETE": 40}
    assert sorted(t.number for t in trials) == list(range(40))


def test_local_workers_still_ask_one_trial_at_a_time(tmp_path, monkeypatch):
    calls = []
    original = Search.ask
    monkeypatch.setattr(Search, "ask", lambda s, *a, **k: calls.append(k.get("count", 1)) or original(s, *a, **k))
    result = hpo.optimize(dataset="synthetic_images", trials=6, concurrent_workers=2, max_epochs_per_trial=3,
                          output_dir=str(tmp_path), run_name="local", backend=Remote(queue_ahead=0), **FAST)
    assert result.completed == 6 and set(calls) == {1}
