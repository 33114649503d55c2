"""Study reads and writes that cost what they return, on Optuna's RDB storage (SQLite, PostgreSQL).

Optuna's cached storage answers every ``study.get_trials()`` -- and ``study.ask()``, which looks for queued trials that
way -- by reading every unfinished trial of the study again with all its attributes: with 64 remote workers some 80
RUNNING trials per call, a tenth of a second each, several times per trial. And a trial's parameters, attributes and
epoch values are each written in a transaction of their own. These functions ask the database for just what is
needed and gather a trial's writes into one transaction; each falls back to Optuna's own calls on a storage they do not
know.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ask_trial", "waiting_trials", "shared_totals", "surplus", "reject", "gathered_writes",
           "tell"]

log = logging.getLogger(__name__)


def waiting_trials(study: Any, storage: Any) -> list[int]:
    """Ids of the study's WAITING (queued) trials, oldest first, from a column query."""
    import sqlalchemy
    from optuna.trial import TrialState

    try:
        from optuna.storages._rdb import models

        trial = models.TrialModel
        rows = _read(storage, sqlalchemy.select(trial.trial_id)
                     .where(trial.study_id == study._study_id, trial.state == TrialState.WAITING)
                     .order_by(trial.trial_id))[0]
    except Exception:  # noqa: BLE001 - not the storage this module knows: Optuna's own read
        return [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    return [trial_id for (trial_id,) in rows]


def _read(storage: Any, *statements: Any) -> list[list[Any]]:
    """The rows of each statement, read outside a transaction (no BEGIN and COMMIT: two round trips fewer)."""
    with storage.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        return [list(conn.execute(statement)) for statement in statements]


def ask_trial(study: Any, storage: Any, *,
              new: Callable[[], tuple[dict[str, Any], dict[str, Any]]] | None = None) -> Any:
    """``study.ask()``: the first queued trial this process can claim, else a new one -- made with the parameters and
    user attributes ``new()`` gives, if given (as ``study.enqueue_trial`` and ``study.ask``, in one transaction).
    Queued trials are found with a column query (:func:`waiting_trials`) instead of Optuna's read of every
    unfinished trial."""
    import optuna
    from optuna.trial import TrialState

    try:
        cached, study_id, local = study._storage, study._study_id, study._thread_local
    except AttributeError:
        if new is not None:
            params, attrs = new()
            study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        return study.ask()
    trial_id = None
    for waiting in waiting_trials(study, storage):
        try:  # as Study.ask: another process or thread may claim it first
            if cached.set_trial_state_values(waiting, state=TrialState.RUNNING):
                trial_id = waiting
                break
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    local.cached_all_trials = None  # the sampler reads the study afresh, as after Study.ask
    if trial_id is not None:
        return optuna.Trial(study, trial_id)
    template = None
    if new is not None:
        params, attrs = new()
        template = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={"fixed_params": params},
                                             user_attrs=attrs)
    try:
        return _created_trial(study, cached, study_id, template)
    except (AttributeError, KeyError):  # not the storage this module knows
        return optuna.Trial(study, cached.create_new_trial(study_id, template_trial=template))


def _created_trial(study: Any, cached: Any, study_id: int, template: Any) -> Any:
    """``optuna.Trial(study, cached.create_new_trial(study_id, template))`` without reading the new trial back from the
    database: the storage returns it when it creates it (as _CachedStorage.create_new_trial, which keeps only its id)."""
    if study_id not in cached._studies:
        raise KeyError(study_id)
    frozen = cached._backend._create_new_trial(study_id, template)
    with cached._lock:
        cached._add_trials_to_cache(study_id, [frozen])
    return trial_of(study, cached, frozen)


def trial_of(study: Any, cached: Any, frozen: Any) -> Any:
    """An Optuna Trial for ``frozen``, just created, built through a stand-in study whose storage answers
    ``get_trial`` for it (no read back from the database)."""
    import copy

    import optuna

    def get_trial(trial_id: int) -> Any:
        return copy.deepcopy(frozen) if trial_id == frozen._trial_id else cached.get_trial(trial_id)

    trial = optuna.Trial(_Created(study, _storage=_Created(cached, get_trial=get_trial)), frozen._trial_id)
    trial.study, trial.storage = study, cached
    return trial


class _Created:
    """``target`` with some attributes replaced."""

    def __init__(self, target: Any, **replaced: Any) -> None:
        self.__dict__.update(replaced)
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def shared_totals(study: Any, storage: Any, mine: set[int], *, epochs_of_running: bool,
                  default_epochs: int) -> tuple[int, int, int, int]:
    """(trials with a verdict, epochs trained, other processes' RUNNING trials, the epochs those may still train: their
    job's max_epochs, ``default_epochs`` before it is set) of a shared study, from a few column queries (no trial
    objects). ``mine``: this process's trial numbers; ``epochs_of_running``: read the running trials' jobs (needed
    with epoch_budget only)."""
    totals = _shared_totals_rdb(study, storage, mine, epochs_of_running, default_epochs)
    if totals is not None:
        return totals
    from optuna.trial import TrialState

    counted = spent = others = reserved = 0
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        counted += bool(attrs.get("counted"))
        spent += int(attrs.get("epochs_trained") or 0)
        if t.state == TrialState.RUNNING and t.number not in mine:
            others += 1
            reserved += int((attrs.get("job") or {}).get("max_epochs") or default_epochs)
    return counted, spent, others, reserved


def _shared_totals_rdb(study: Any, storage: Any, mine: set[int], epochs_of_running: bool,
                       default_epochs: int) -> tuple[int, int, int, int] | None:
    import sqlalchemy

    try:
        from optuna.storages._rdb import models
        from optuna.trial import TrialState

        trial, attr = models.TrialModel, models.TrialUserAttributeModel
        rows, running = _read(
            storage,
            sqlalchemy.select(attr.key, attr.value_json).join(trial, attr.trial_id == trial.trial_id)
            .where(trial.study_id == study._study_id, attr.key.in_(("counted", "epochs_trained"))),
            sqlalchemy.select(trial.trial_id, trial.number)
            .where(trial.study_id == study._study_id, trial.state == TrialState.RUNNING))
        others = [trial_id for trial_id, number in running if number not in mine]
        jobs = []
        if epochs_of_running and others:
            jobs = _read(storage, sqlalchemy.select(attr.value_json)
                         .where(attr.trial_id.in_(others), attr.key == "job"))[0]
    except Exception:  # noqa: BLE001 - not the storage this module knows: the caller reads the trials instead
        return None
    counted = spent = 0
    for key, value in rows:
        value = json.loads(value)
        if key == "counted":
            counted += bool(value)
        else:
            spent += int(value or 0)
    reserved = default_epochs * (len(others) - len(jobs))  # a trial asked but not given its job yet: the most
    for (value,) in jobs:
        job = json.loads(value)
        reserved += int(job.get("max_epochs") or default_epochs) if isinstance(job, dict) else default_epochs
    return counted, spent, len(others), reserved


def surplus(study: Any, storage: Any, trial_id: int, limit: int) -> bool:
    """Whether trial ``trial_id``, just created, is one too many: the study's trials with a verdict and running ones
    are over ``limit``, and it is among the newest running ones over it. Processes that read the study's totals
    together may each start a trial for the same last slot; each then finds out here, and the newest give way."""
    import sqlalchemy
    from optuna.trial import TrialState

    try:
        from optuna.storages._rdb import models

        trial, attr = models.TrialModel, models.TrialUserAttributeModel
        running, counted = _read(
            storage,
            sqlalchemy.select(trial.trial_id).where(trial.study_id == study._study_id,
                                                    trial.state == TrialState.RUNNING),
            sqlalchemy.select(attr.value_json).join(trial, attr.trial_id == trial.trial_id)
            .where(trial.study_id == study._study_id, attr.key == "counted"))
    except Exception:  # noqa: BLE001 - not the storage this module knows: the limit holds as read before
        return False
    over = sum(bool(json.loads(value)) for (value,) in counted) + len(running) - limit
    return over > 0 and trial_id in sorted((i for (i,) in running), reverse=True)[:over]


def reject(study: Any, trial: Any, reason: str, *, process: str | None = None) -> None:
    """A trial that does not train: PRUNED, marked ``rejected`` (not counted, not retried, left out of the records),
    with why (and which process asked it)."""
    from optuna.trial import TrialState

    with gathered_writes(trial):
        if process is not None:
            trial.set_user_attr("process", process)
        trial.set_user_attr("rejected", True)
        trial.set_user_attr("reason", reason)
    tell(study, trial, state=TrialState.PRUNED)


class _Gathered:
    """Stands in for the study's storage on one Trial: parameter and user-attribute writes are kept, everything else
    goes to the storage."""

    def __init__(self, storage: Any, first: bool) -> None:
        self._storage = storage
        self.params: list[tuple[str, float, Any]] = []
        self.attrs: dict[str, Any] = {}
        self.steps: dict[int, float] = {}
        self.first = first

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: Any) -> None:
        self.params.append((name, value, distribution))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.attrs[key] = value

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        self.steps[step] = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


@contextlib.contextmanager
def gathered_writes(*trials: Any, first: bool = False) -> Iterator[None]:
    """The trials' parameter draws (``trial.suggest_*``), ``set_user_attr`` and ``report`` calls inside the block are
    written in one transaction at its end (Optuna writes each in its own: a dozen commits per trial asked), for all
    the trials given (they belong to one study). Values are checked as Optuna checks them. If the block raises,
    nothing is written.

    ``first``: the trials' first writes, right after they were asked: their first heartbeats go with them, and they
    are not looked up to see whether they are still running (nothing else finishes a trial without a heartbeat)."""
    storages = [trial.storage for trial in trials]
    gathered = [_Gathered(storage, first) for storage in storages]
    for trial, stand_in in zip(trials, gathered):
        trial.storage = stand_in
    try:
        yield
    finally:
        for trial, storage in zip(trials, storages):
            trial.storage = storage
    items = [(t, g) for t, g in zip(trials, gathered) if g.params or g.attrs or g.steps or first]
    if items:
        _write_gathered(storages[0], items)


def _write_gathered(storage: Any, items: list[tuple[Any, _Gathered]]) -> None:
    try:
        _write_in_one(storage, items)
        return
    except Exception:  # noqa: BLE001 - not the storage this module knows (or a real error, which the writes below
        log.debug("gathered writes of trials %s: one by one", [t.number for t, _ in items], exc_info=True)
    for trial, gathered in items:  # (raise again)
        trial_id = trial._trial_id
        for name, value, distribution in gathered.params:
            storage.set_trial_param(trial_id, name, value, distribution)
        for key, value in gathered.attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for step, value in gathered.steps.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        if gathered.first:
            storage.record_heartbeat(trial_id)


def _write_in_one(storage: Any, items: list[tuple[Any, _Gathered]]) -> None:
    """As Optuna's cached RDB storage writes each (its checks included), in one transaction, with one statement per
    kind of row for all the trials where the database can (an upsert)."""
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    rdb, lock = storage._backend, storage._lock
    known = storage._studies[items[0][0].study._study_id].param_distribution
    new: dict[str, Any] = {}
    attr, beat, step = models.TrialUserAttributeModel, models.TrialHeartbeatModel, models.TrialIntermediateValueModel
    upsert_attr = _upsert(rdb.engine.name, attr, (attr.trial_id, attr.key), "value_json")
    upsert_step = _upsert(rdb.engine.name, step, (step.trial_id, step.step), "intermediate_value",
                          more=("intermediate_value_type",))
    upsert_beat = _upsert(rdb.engine.name, beat, (beat.trial_id,), "heartbeat", sqlalchemy.func.now())
    with lock, _create_scoped_session(rdb.scoped_session) as session, session.no_autoflush:
        params, attrs, steps, beats = [], [], [], []
        for trial, gathered in items:
            trial_id = trial._trial_id
            if not gathered.first:  # the trial looked up once, not per write
                rdb.check_trial_is_updatable(trial_id,
                                             models.TrialModel.find_or_raise_by_id(trial_id, session).state)
            for name, value, distribution in gathered.params:
                previous = known.get(name) or new.get(name)
                if previous is None:  # new to the study: the storage's own way, which reads the study's records
                    rdb._set_trial_param_without_commit(session, trial_id, name, value, distribution)
                    session.flush()
                    new[name] = distribution
                    continue
                optuna.distributions.check_distribution_compatibility(previous, distribution)
                params.append({"trial_id": trial_id, "param_name": name, "param_value": value,
                               "distribution_json": optuna.distributions.distribution_to_json(distribution)})
            rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in gathered.attrs.items()]
            if upsert_attr is not None:
                attrs += rows
            elif rows:  # those the trial has are updated, the others inserted in one statement
                have = dict(session.query(attr.key, attr.trial_user_attribute_id)
                            .filter(attr.trial_id == trial_id, attr.key.in_(list(gathered.attrs))).all())
                for row in rows:
                    if row["key"] in have:
                        session.execute(sqlalchemy.update(attr).where(attr.trial_user_attribute_id == have[row["key"]])
                                        .values(value_json=row["value_json"]))
                if fresh := [row for row in rows if row["key"] not in have]:
                    session.execute(sqlalchemy.insert(attr), fresh)
            if upsert_step is not None:  # as Optuna stores each
                steps += [dict(zip(("intermediate_value", "intermediate_value_type"),
                                   step.intermediate_value_to_stored_repr(value)), trial_id=trial_id, step=number)
                          for number, value in gathered.steps.items()]
            else:
                for number, value in gathered.steps.items():
                    rdb._set_trial_intermediate_value_without_commit(session, trial_id, number, value)
            if gathered.first and upsert_beat is not None:  # as RDBStorage.record_heartbeat
                beats.append({"trial_id": trial_id})
            elif gathered.first:
                if session.query(beat.trial_heartbeat_id).filter(beat.trial_id == trial_id).first() is None:
                    session.execute(sqlalchemy.insert(beat).values(trial_id=trial_id))
                else:
                    session.execute(sqlalchemy.update(beat).where(beat.trial_id == trial_id)
                                    .values(heartbeat=sqlalchemy.func.now()))
        for statement, rows in ((sqlalchemy.insert(models.TrialParamModel), params), (upsert_attr, attrs),
                                (upsert_step, steps), (upsert_beat, beats)):
            if rows:  # one statement for all
                session.execute(statement, rows)
    for name, distribution in new.items():
        known.setdefault(name, distribution)


def _upsert(dialect: str, model: Any, keys: tuple[Any, ...], column: str, value: Any = None,
            more: tuple[str, ...] = ()) -> Any:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET column (and ``more``) = the row's (or ``value``) where the database
    has it, as Optuna writes attributes there; else None."""
    import sqlite3

    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    statement = insert(model)
    update = {name: statement.excluded[name] for name in (column, *more)}
    if value is not None:
        update[column] = value
    return statement.on_conflict_do_update(index_elements=list(keys), set_=update)


def tell(study: Any, trial: Any, values: Any = None, state: Any = None) -> None:
    """``study.tell(trial, values, state)`` without reading the trial from the storage, before (Optuna checks it is
    running: the Trial knows what it wrote, and the storage checks the state again, under a row lock, when it sets the
    new one) or after (Study.tell returns it; nobody here uses it)."""
    import copy

    from optuna.trial import TrialState

    fast = _tell_function()
    if fast is None:
        study.tell(trial, values, state=state)
        return
    known = getattr(trial, "_cached_frozen_trial", None)
    if known is not None and known.state == TrialState.RUNNING and hasattr(study, "_storage"):
        frozen, storage = copy.deepcopy(known), study._storage

        def get_trial(trial_id: int) -> Any:
            return frozen if trial_id == frozen._trial_id else storage.get_trial(trial_id)

        study = _Created(study, _storage=_Created(storage, get_trial=get_trial))
    fast(study=study, trial=trial, value_or_values=values, state=state)


@functools.cache
def _tell_function() -> Any:
    """Optuna's tell without the read-back, if this Optuna has it as this module knows it."""
    try:
        from optuna.study._tell import _tell_with_warning
    except ImportError:
        return None
    names = set(inspect.signature(_tell_with_warning).parameters)
    return _tell_with_warning if {"study", "trial", "value_or_values", "state"} <= names else None
