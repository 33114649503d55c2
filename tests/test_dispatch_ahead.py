"""Dispatch at scale: trials asked ahead of need, nothing that writes to the study between a result and the next
submission, and the study's reads and writes gathered (hpo.dispatch, hpo.study.rdb).

A fake remote backend (``queue_ahead`` > 0, as RunPod's) whose jobs wait on events the test sets shows the order of
things without any timing: a trial thread submits its next trial while the study thread is still recording the
previous result. The storage helpers are checked against Optuna's own calls on SQLite and on a real PostgreSQL 15.
"""

from __future__ import annotations

import collections
import threading

import optuna
import pytest
from sqlalchemy import event, text

import hpo
from hpo import study as studies
from hpo.backends import Backend
from hpo.config import config_from_options
from hpo.dispatch import default_ask_ahead
from hpo.protocol import EpochReport, TrialResult
from hpo.results import RunFilesWriter
from hpo.search import Search
from hpo.session import Session
from hpo.testing.postgres import postgres_cluster

from .test_budget import Epochs

FAST = dict(quiet=True, plot_generation="none", pruner="none", sampler="random", max_params=10**9)
CAP = 120  # generous cap on every wait for an event (never a timing assertion)


class Remote(Backend):
    """Completes every job at once with 3 epoch reports, unless ``gate`` is set for it: then it waits for the gate
    (or its cancel token). ``queue_ahead`` as a RunPod backend has it."""

    name = "remote"

    def __init__(self, queue_ahead: int = 1, gated: int = 0) -> None:
        self._queue_ahead = queue_ahead
        self.gated = gated  # the first `gated` jobs wait for `go`
        self.go = threading.Event()
        self.jobs: list = []
        self.changed = threading.Condition()

    @property
    def queue_ahead(self) -> int:
        return self._queue_ahead

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        with self.changed:
            self.jobs.append(job)
            gated = len(self.jobs) <= self.gated
            self.changed.notify_all()
        if gated:
            while not self.go.wait(0.05):
                if cancel is not None and cancel.cancelled:
                    return TrialResult(trial_id=job.trial_id, status="stopped", error=cancel.reason)
        acc = 0.5 + job.seed % 7 / 100
        for epoch in range(1, min(3, job.max_epochs) + 1):
            if on_epoch:
                on_epoch(EpochReport(trial_id=job.trial_id, epoch=epoch, metrics={"val_accuracy": acc + epoch / 100}))
        epochs = min(3, job.max_epochs)
        return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=epochs, best_epoch=epochs,
                           val_metrics={"accuracy": acc + epochs / 100, "loss": 0.5},
                           test_metrics={"accuracy": acc}, history={"val_accuracy": [acc] * epochs},
                           executed_on="remote")

    def wait_jobs(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.jobs) >= n, timeout=CAP), len(self.jobs)


class Asks:
    """Counts the trials Search.ask returns (and what the study held when each was asked), so a test can wait for a
    number of them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.finished_at_ask: list[int] = []
        self.changed = threading.Condition()
        original = Search.ask

        def ask(search, *args, **kwargs):
            finished = sum(t.state.is_finished() for t in search.study.get_trials(deepcopy=False))
            asked = original(search, *args, **kwargs)
            with self.changed:  # trials asked (several at once for remote workers)
                self.count += len(asked)
                self.finished_at_ask += [finished] * len(asked)
                self.changed.notify_all()
            return asked

        monkeypatch.setattr(Search, "ask", ask)

    def wait(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= n, timeout=CAP), self.count


def _in_thread(fn, *args, **kwargs):
    out: dict = {}

    def main():
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, out


def _join(thread, out):
    thread.join(CAP)
    assert not thread.is_alive(), "the run did not end"
    if "error" in out:
        raise out["error"]
    return out["result"]


def _trials(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name / 'study.db'}").trials


def test_how_many_trials_are_asked_ahead():
    assert default_ask_ahead(4, 0) == 0  # local workers: each trial asked when a worker is free
    assert default_ask_ahead(1, 1) == 2
    assert default_ask_ahead(32, 7) == 7 + 16
    assert default_ask_ahead(64, 13) == 13 + 32


def test_a_freed_slot_submits_a_trial_asked_before_the_result_is_recorded(tmp_path, monkeypatch):
    """concurrent_workers=2 + queue_ahead 1: three trial threads, and 2 trials asked ahead. While the study thread is
    held in recording the first result, the freed trial threads still submit the two trials asked ahead."""
    asks = Asks(monkeypatch)
    holding, release, finishes = threading.Event(), threading.Event(), []
    original = Search.finish

    def finish(search, *args, **kwargs):
        finishes.append(args[0].number)
        if len(finishes) == 1:
            holding.set()
            assert release.wait(CAP)
        return original(search, *args, **kwargs)

    monkeypatch.setattr(Search, "finish", finish)
    backend = Remote(queue_ahead=1, gated=3)
    thread, out = _in_thread(hpo.optimize, dataset="synthetic_images", trials=8, concurrent_workers=2,
                             max_epochs_per_trial=3, output_dir=str(tmp_path), run_name="ahead", backend=backend,
                             **FAST)
    asks.wait(5)  # 3 running (held at the gate) + 2 ready
    backend.wait_jobs(3)
    assert len(backend.jobs) == 3
    backend.go.set()
    assert holding.wait(CAP)  # the first result is being recorded ...
    backend.wait_jobs(5)  # ... and meanwhile the freed threads submitted both trials asked ahead
    assert finishes == finishes[:1] and not release.is_set()
    release.set()
    result = _join(thread, out)
    assert result.completed == 8 and len(backend.jobs) == 8
    assert len({j.trial_id for j in backend.jobs}) == 8
    states = collections.Counter(t.state.name for t in _trials(tmp_path, "ahead"))
    assert states == {"COMPLETE": 8}


def test_local_workers_ask_each_trial_after_the_results_before_it(tmp_path, monkeypatch):
    """No queue ahead (local workers): with one worker, every trial is asked once every earlier trial has its
    verdict in the study, so the sampler knows them all."""
    asks = Asks(monkeypatch)
    result = hpo.optimize(dataset="synthetic_images", trials=5, concurrent_workers=1, max_epochs_per_trial=3,
                          output_dir=str(tmp_path), run_name="seq", backend=Remote(queue_ahead=0), **FAST)
    assert result.completed == 5
    assert asks.finished_at_ask == [0, 1, 2, 3, 4]


def test_the_trial_count_and_the_epoch_budget_hold_with_trials_asked_ahead(tmp_path):
    backend = Remote(queue_ahead=2)
    result = hpo.optimize(dataset="synthetic_images", trials=7, concurrent_workers=3, max_epochs_per_trial=3,
                          output_dir=str(tmp_path), run_name="count", backend=backend, **FAST)
    assert result.completed == 7 and len(backend.jobs) == 7
    assert {t.state.name for t in _trials(tmp_path, "count")} == {"COMPLETE"}

    class AheadEpochs(Epochs):
        queue_ahead = 2

    budget = AheadEpochs()
    result = hpo.optimize(dataset="synthetic_images", epoch_budget=20, trials=100, max_epochs_per_trial=6,
                          early_stopping_patience=1, concurrent_workers=3, output_dir=str(tmp_path),
                          run_name="budget", backend=budget, **FAST)
    assert sum(budget.trained.values()) == 20  # spent exactly, never more
    assert "epoch_budget=20 spent" in result.stop_reason
    trials = _trials(tmp_path, "budget")
    assert sum(t.user_attrs.get("epochs_trained", 0) for t in trials) == 20
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


def test_every_epoch_report_reaches_the_study_without_a_pruner(tmp_path):
    """pruner=none: reports are recorded by the study thread (several in one commit, or with the verdict)."""
    hpo.optimize(dataset="synthetic_images", trials=6, concurrent_workers=2, max_epochs_per_trial=3,
                 output_dir=str(tmp_path), run_name="epochs", backend=Remote(queue_ahead=1), **FAST)
    for t in _trials(tmp_path, "epochs"):
        acc = 0.5 + t.user_attrs["job"]["seed"] % 7 / 100
        assert t.intermediate_values == pytest.approx({e: acc + e / 100 for e in (1, 2, 3)}), t.number


def test_a_stop_records_the_trials_asked_ahead_as_interrupted_and_a_resume_retries_them(tmp_path, monkeypatch):
    asks = Asks(monkeypatch)
    config = config_from_options(dict(dataset="synthetic_images", trials=10, concurrent_workers=2,
                                      max_epochs_per_trial=3, output_dir=str(tmp_path), run_name="stop", **FAST))
    backend = Remote(queue_ahead=1, gated=100)
    session = Session.create(config, backend=backend)
    try:
        thread, out = _in_thread(session.run)
        asks.wait(5)  # 3 submitted, 2 ready
        backend.wait_jobs(3)
        session.request_stop("interrupted")
        result = _join(thread, out)
    finally:
        session.close()
    assert result.interrupted and result.completed == 0 and len(backend.jobs) == 3
    trials = _trials(tmp_path, "stop")
    assert len(trials) == 5 and {t.state.name for t in trials} == {"FAIL"}
    assert all(t.user_attrs.get("interrupted") and not t.user_attrs.get("counted") for t in trials)
    submitted = {int(j.trial_id.rsplit("#", 1)[1]) for j in backend.jobs}
    ready = {t.number: t.params for t in trials if t.number not in submitted}
    assert len(ready) == 2

    resumed = hpo.optimize(dataset="synthetic_images", trials=10, concurrent_workers=2, max_epochs_per_trial=3,
                           output_dir=str(tmp_path), run_name="stop", backend=Remote(queue_ahead=1), **FAST)
    assert resumed.completed == 10
    retried = {t.user_attrs.get("retry_of"): t for t in _trials(tmp_path, "stop") if t.state.name == "COMPLETE"}
    for number, params in ready.items():  # each trial asked ahead and never started ran once, as it was
        assert retried[number].params == params


def test_run_files_are_rewritten_at_most_every_interval_and_once_more_at_close(tmp_path, monkeypatch):
    writes = []
    written = threading.Event()

    def write_now(self):
        writes.append(1)
        written.set()

    monkeypatch.setattr(RunFilesWriter, "write_now", write_now)
    writer = RunFilesWriter(tmp_path, study=None, mode="simple", min_interval_s=3600)
    writer.request()
    assert written.wait(CAP)
    for _ in range(50):  # requests meanwhile wait for the interval (or close)
        writer.request()
    writer.close()
    assert len(writes) == 2


# -- the storage helpers, against Optuna's own calls -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pg():
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else request.getfixturevalue("pg")["url"]
    return studies.open_storage(url, heartbeat_grace_s=60)


def _new_study(storage, name):  # a sampler that reads nothing, so that what is counted is the writes
    return optuna.create_study(study_name=f"{name}-{id(storage)}", storage=storage,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _draw(trial):
    trial.suggest_int("blocks", 1, 3)
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("act", ["relu", "elu"])
    trial.set_user_attr("process", "here")
    trial.set_user_attr("job", {"max_epochs": 4})
    trial.report(0.5, 1)
    trial.report(0.6, 2)


def test_gathered_writes_store_what_optuna_stores_in_one_commit(storage):
    study = _new_study(storage, "gather")
    plain = study.ask()
    _draw(plain)
    gathered = studies.ask_trial(study, storage)
    commits = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(storage.engine, "commit", listener)
    try:
        with studies.gathered_writes(gathered, first=True):
            _draw(gathered)
    finally:
        event.remove(storage.engine, "commit", listener)
    assert len(commits) == 1
    a, b = (storage.get_trial(t._trial_id) for t in (plain, gathered))
    assert b.state.name == "RUNNING" and b.number == a.number + 1
    assert b.distributions == a.distributions and set(b.params) == set(a.params)
    assert b.user_attrs == a.user_attrs and b.intermediate_values == a.intermediate_values
    assert b.params == gathered.params  # what the Trial drew is what the database holds
    with storage.engine.connect() as conn:  # its first heartbeat was recorded in the same commit
        beats = conn.execute(text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
                             {"t": gathered._trial_id}).scalar()
    assert beats == 1
    studies.tell(study, gathered, 0.7)
    assert storage.get_trial(gathered._trial_id).value == 0.7

    clash = studies.ask_trial(study, storage)  # a parameter that changes its distribution is refused, as by Optuna
    with pytest.raises(ValueError):
        with studies.gathered_writes(clash):
            clash.suggest_categorical("blocks", ["a", "b"])
    assert storage.get_trial(clash._trial_id).params == {}


def test_asking_claims_queued_trials_first_then_makes_new_ones(storage):
    study = _new_study(storage, "ask")
    study.enqueue_trial({"blocks": 2}, user_attrs={"retry_of": 0})
    first = studies.ask_trial(study, storage, new=lambda: ({"blocks": 3}, {"near_default": True}))
    assert first.suggest_int("blocks", 1, 3) == 2 and first.user_attrs == {"retry_of": 0}
    second = studies.ask_trial(study, storage, new=lambda: ({"blocks": 3}, {"near_default": True}))
    assert second.suggest_int("blocks", 1, 3) == 3 and second.user_attrs == {"near_default": True}
    third = studies.ask_trial(study, storage)
    # nothing queued, no maker: a plain new trial, its parameters left to the sampler
    assert third.number == 2 and third.user_attrs == {}
    assert "fixed_params" not in storage.get_trial(third._trial_id).system_attrs
    assert [t.state.name for t in study.trials] == ["RUNNING"] * 3
    assert studies.waiting_trials(study, storage) == []


def test_shared_totals_from_column_queries_match_a_read_of_every_trial(storage):
    study = _new_study(storage, "totals")
    done = [study.ask() for _ in range(3)]
    for i, t in enumerate(done):
        t.set_user_attr("epochs_trained", i + 2)
        t.set_user_attr("counted", i != 1)
        study.tell(t, 0.5)
    mine, theirs, fresh = study.ask(), study.ask(), study.ask()
    for t, epochs in ((mine, 3), (theirs, 4)):
        t.set_user_attr("job", {"max_epochs": epochs})
    expected = (2, 9, 2, 4 + 6)  # counted, epochs trained, others' running, their epochs (6 before a job is set)
    fast = studies.shared_totals(study, storage, {mine.number}, epochs_of_running=True, default_epochs=6)
    slow = studies.shared_totals(study, object(), {mine.number}, epochs_of_running=True, default_epochs=6)
    assert fast == slow == expected
    assert studies.shared_totals(study, storage, {mine.number}, epochs_of_running=False,
                                 default_epochs=6)[:3] == expected[:3]
    assert fresh.number not in {mine.number, theirs.number}


def test_of_trials_started_together_for_the_last_slot_the_newest_gives_way(storage):
    """trials=3, one done: processes that read the totals together may each start a trial for the last two slots;
    the newest over the limit gives way (rejected: not counted, not retried, left out of the records)."""
    study = _new_study(storage, "surplus")
    done = study.ask()
    done.set_user_attr("counted", True)
    study.tell(done, 0.5)
    a, b, c = study.ask(), study.ask(), study.ask()
    assert [studies.surplus(study, storage, t._trial_id, limit=3) for t in (a, b, c)] == [False, False, True]
    studies.reject(study, c, "one too many")
    assert not studies.surplus(study, storage, b._trial_id, limit=3)  # back at the limit
    rejected = storage.get_trial(c._trial_id)
    assert rejected.state.name == "PRUNED" and rejected.user_attrs == {"rejected": True, "reason": "one too many"}
