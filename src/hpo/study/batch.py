"""Several trials asked in one transaction.

When many remote workers are freed together (the start of a run: all of them), each needs a trial at once, and a trial
asked alone costs a dozen round trips to the database -- creating it (lock the study, insert, count, number) and
writing its parameters, attributes and first heartbeat. On PostgreSQL, in a process whose other threads poll 64
workers, each round trip waits its turn for the interpreter, so asking 64 trials one by one kept the last worker
waiting 2.6 s for its first job. :func:`ask_trials` creates ``count`` trials in one transaction (the study row locked
once, one INSERT, their numbers counted once) and :func:`hpo.study.gathered_writes` writes all their parameters,
attributes and heartbeats in one more. Falls back to one trial at a time (:func:`hpo.study.ask_trial`) on a storage
it does not know, and whenever the study has queued trials (those go first, one by one, as Study.ask takes them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .rdb import ask_trial, trial_of, waiting_trials

__all__ = ["ask_trials"]

log = logging.getLogger(__name__)

#: ``new(i)``: the parameters and user attributes of the i-th new trial of a batch (e.g. warm-start neighbours)
NewTrial = Callable[[int], tuple[dict[str, Any], dict[str, Any]]]


def ask_trials(study: Any, storage: Any, count: int, *, new: NewTrial | None = None) -> list[Any]:
    """``count`` new RUNNING trials (Optuna ``Trial`` objects, numbered consecutively), or one queued trial when the
    study has any (queued trials go first). ``new``: each new trial's fixed parameters and user attributes (as
    ``study.enqueue_trial`` + ``study.ask``)."""
    single = None if new is None else (lambda: new(0))
    if count <= 1 or waiting_trials(study, storage):
        return [ask_trial(study, storage, new=single)]
    try:
        cached, study_id, local = study._storage, study._study_id, study._thread_local
        backend = cached._backend
        if study_id not in cached._studies:
            raise KeyError(study_id)
        frozen = _create(backend, study_id, [new(i) if new is not None else None for i in range(count)])
    except (AttributeError, KeyError, ImportError):  # not the storage this module knows
        log.debug("asking trials one at a time", exc_info=True)
        return [ask_trial(study, storage, new=single)]
    with cached._lock:
        cached._add_trials_to_cache(study_id, frozen)
    local.cached_all_trials = None  # the sampler reads the study afresh, as after Study.ask
    return [trial_of(study, cached, f) for f in frozen]


def _create(backend: Any, study_id: int, templates: list[tuple[dict[str, Any], dict[str, Any]] | None]) -> list[Any]:
    """The trials' rows, created in one transaction as Optuna's RDBStorage creates one (the study row locked while
    they are numbered); their FrozenTrials."""
    import datetime
    import json

    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import FrozenTrial, TrialState

    with _create_scoped_session(backend.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        now = datetime.datetime.now()
        made = [(models.TrialModel(study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=now), t)
                for t in templates]
        session.add_all([row for row, _ in made])
        session.flush()  # one INSERT for all
        made.sort(key=lambda pair: pair[0].trial_id)  # a trial's number counts the study's trials before it
        first = made[0][0].count_past_trials(session)
        system, user = [], []
        for i, (row, template) in enumerate(made):
            row.number = first + i
            if template is not None:
                params, attrs = template
                system.append({"trial_id": row.trial_id, "key": "fixed_params", "value_json": json.dumps(params)})
                user += [{"trial_id": row.trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        if system:
            session.execute(sqlalchemy.insert(models.TrialSystemAttributeModel), system)
        if user:
            session.execute(sqlalchemy.insert(models.TrialUserAttributeModel), user)
        session.flush()
        rows = [(row.trial_id, row.number, row.datetime_start, template) for row, template in made]
    frozen = []
    for trial_id, number, started, template in rows:
        params, attrs = template if template is not None else ({}, {})
        frozen.append(FrozenTrial(number=number, state=TrialState.RUNNING, value=None, values=None,
                                  datetime_start=started, datetime_complete=None, params={}, distributions={},
                                  user_attrs=dict(attrs), system_attrs={"fixed_params": params} if template else {},
                                  intermediate_values={}, trial_id=trial_id))
    return frozen

