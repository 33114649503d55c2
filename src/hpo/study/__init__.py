"""A run's Optuna study: its storage (the run folder's SQLite, or a shared RDB URL), heartbeats, sampler and pruner.

Liveness of trials is judged by heartbeat: every process beats for the trials it runs, and a RUNNING trial whose beats
stopped for ``heartbeat_grace_s`` belongs to a dead process. Optuna fails it (in exactly one process, the storage sees
to that) and calls ``stale_callback`` there, which queues it again.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

from ..config import OptimizationConfig
from ..exceptions import ConfigError
from ..redact import first_line, mask_url
from .batch import ask_trials
from .rdb import ask_trial, gathered_writes, reject, shared_totals, surplus, tell, waiting_trials

__all__ = ["open_storage", "create_study", "make_pruner", "expected_trials", "startup_trials", "tune_sqlite",
           "study_signature", "STUDY_DEFINING", "ask_trial", "ask_trials", "waiting_trials", "shared_totals", "surplus",
           "reject", "gathered_writes", "tell", "retry_stale_trial"]

# hpo drives the study with ask/tell and beats each trial's heartbeat itself; Optuna warns about heartbeats outside
# Study.optimize and about the experimental heartbeat API on every call.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental")
warnings.filterwarnings("ignore", message="Argument ``heartbeat_interval`` is an experimental feature")


#: seconds a PostgreSQL connection may take to open (libpq's connect_timeout) unless the URL names its own: a server
#: that accepts and never answers (a stuck proxy, a firewall that drops) would hold a run or a POST forever
CONNECT_TIMEOUT_S = 10


def tune_sqlite(storage: Any) -> None:
    """WAL journal + synchronous=NORMAL: commits cost a fraction of the default rollback journal's fsyncs (it made
    every ask/tell ~15 ms), readers (optuna-dashboard, `hpo show`) never block writers, and a killed process still
    loses nothing that was committed."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # connections opened before the listener get the pragmas on reconnect


def open_storage(url: str, *, heartbeat_grace_s: float | None = None,
                 stale_callback: Callable[[Any, Any], None] | None = None) -> Any:
    """An RDBStorage for ``url`` (SQLite tuned for concurrent readers); with heartbeats when a grace period is given."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        # Every transaction ends in a commit or a rollback before its connection goes back to the pool (Optuna's and
        # hpo's sessions close); the pool's own ROLLBACK on return was one more round trip to the server per
        # transaction, a third of them.
        kwargs["engine_kwargs"] = {"pool_reset_on_return": None}
        if "connect_timeout" not in url:  # the URL's own (?connect_timeout=N) wins
            kwargs["engine_kwargs"]["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if heartbeat_grace_s is not None:
        kwargs["heartbeat_interval"] = max(1, int(heartbeat_grace_s // 4))
        kwargs["grace_period"] = max(2, int(heartbeat_grace_s))
        if stale_callback is not None:
            # Optuna 4.9 renamed failed_trial_callback (removed in 6); pass whichever this Optuna has
            params = inspect.signature(optuna.storages.RDBStorage).parameters
            key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params \
                else "failed_trial_callback"
            kwargs[key] = stale_callback
    try:
        storage = _rdb_storage(url, kwargs)
    except ImportError as exc:  # the database driver is an extra
        dialect = url.split(":", 1)[0].split("+", 1)[0].lower()
        hint = 'pip install "hpo[postgres]"' if dialect == "postgresql" else f"install a {dialect} driver for SQLAlchemy"
        raise ConfigError(f"storage={mask_url(url)!r} needs a database driver that is not installed "
                          f"({exc.name or exc}); {hint}", field="storage") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors: the database named by the user is unreachable
        raise ConfigError(f"storage={mask_url(url)!r} cannot be opened: {first_line(exc)}", field="storage") from None
    if url.startswith("sqlite"):
        tune_sqlite(storage)
    return storage


def _rdb_storage(url: str, kwargs: dict[str, Any]) -> Any:
    """RDBStorage, retried when processes starting together race to create the schema of an empty database
    (PostgreSQL answers the loser with a unique violation on its catalog)."""
    import random

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    rng = random.Random()
    for attempt in range(8):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if attempt == 7 or ("already exists" not in str(exc) and "duplicate key" not in str(exc)
                                and "UniqueViolation" not in type(getattr(exc, "orig", exc)).__name__):
                raise
            import time

            time.sleep(0.2 + rng.random() * 0.5)
    raise AssertionError("unreachable")


def expected_trials(config: OptimizationConfig) -> int:
    """trials, or about as many as epoch_budget allows when it is the tighter limit (pruning and early stopping end
    most trials around the middle of their epoch range)."""
    c = config
    if c.epoch_budget is None:
        return c.trial_limit
    typical = max(1, math.ceil((c.min_epochs_per_trial + c.max_epochs_per_trial) / 2))
    return max(1, min(c.trial_limit, c.epoch_budget // typical))


def startup_trials(config: OptimizationConfig) -> int:
    """Random trials before TPE models the results. TPE's default of 10 would make a 12-trial run almost a random
    search: a quarter of the expected trials (3..10) leaves most trials guided. With warm_start, the trials that start
    while the default trains are its neighbours, so TPE needs no random start-up of its own beyond one trial (a
    quarter of the expected ones, up to 10, in long runs, for coverage)."""
    quarter = min(10, expected_trials(config) // 4)
    return max(1, quarter) if config.warm_start else max(3, quarter)


def make_pruner(config: OptimizationConfig, notes: list[str]) -> Any:
    """Optuna's NopPruner (pareto mode, pruner=none), else the configured pruner wrapped by hpo's far-behind rule."""
    import optuna

    c = config
    if c.mode == "pareto" or c.pruner == "none":
        if c.mode == "pareto" and c.pruner != "none":
            notes.append(f"pruner={c.pruner} is off: Optuna cannot prune multi-objective (pareto) studies")
        return optuna.pruners.NopPruner()
    from ..pruners import FarBehindPruner

    if c.pruner == "hyperband":
        inner: Any = optuna.pruners.HyperbandPruner(min_resource=c.min_epochs_per_trial,
                                                    max_resource=c.max_epochs_per_trial)
    elif c.pruner == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=c.min_epochs_per_trial)
    else:
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=c.min_epochs_per_trial)
    return FarBehindPruner(inner, margin=c.prune_below_best, time_margin=c.prune_behind_in_time,
                           min_step=c.min_epochs_per_trial, seed=c.seed)  # brackets from the seed, not the run name


#: options that give a study its meaning: every process joining it must use the same
STUDY_DEFINING = ("dataset", "dataset_options", "mode", "pins", "health_weight", "health_weights", "validation_split",
                  "data_fraction", "lr_schedule", "model", "space")


def study_signature(config: OptimizationConfig) -> dict[str, Any]:
    """The options that must match for processes to share one study, as plain JSON data."""
    import json

    signature = {k: getattr(config, k) for k in STUDY_DEFINING}
    if config.own_data:  # own data is the same data wherever its file lies: its content decides
        signature["dataset"] = f"own data sha256:{config.data_sha256}"
        signature["dataset_options"] = {}
    return json.loads(json.dumps(signature, default=str))


def create_study(config: OptimizationConfig, storage: Any, notes: list[str]) -> tuple[Any, bool]:
    """(study ``config.run_name``, created by this process?) with the config's sampler (seeded) and pruner.

    Creating is atomic in the database (a study name is unique), so among processes starting together exactly one
    creates the study: that one queues the warm start. A process joining an existing study must use the options
    that define it (:data:`STUDY_DEFINING`), else a ConfigError names the ones that differ."""
    import optuna

    directions = ["maximize", "maximize"] if config.mode == "pareto" else ["maximize"]
    name = config.run_name
    try:
        existing: Any = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    previous = len(existing.trials) if existing is not None else 0
    # A resumed study gets a sampler seeded past the trials it already has, so its random start-up trials do not
    # repeat the parameters of the first run; processes sharing a study each get their own stream.
    salt = 0 if config.storage is None else os.getpid() * 7919
    seed = (config.seed + previous + salt) % 2**32
    if config.sampler == "random":
        sampler: Any = optuna.samplers.RandomSampler(seed=seed)
    elif config.sampler == "qmc":
        sampler = optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False,
                                             warn_asynchronous_seeding=False)
    elif config.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    elif config.sampler == "cmaes":
        # CMA-ES models the numeric parameters; categorical ones (and conditional ones) are drawn by its independent
        # sampler, seeded too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials(config),
                                                   independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                                   warn_independent_sampling=False)
    else:
        # Multivariate TPE (grouped, for the conditional dense_units) models how the parameters interact.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            from .sampling import StartupTPESampler  # rejected configurations use no start-up slot

            sampler = StartupTPESampler(
                seed=seed, constant_liar=config.concurrent_workers > 1 or config.storage is not None,
                multivariate=True, group=True, n_startup_trials=startup_trials(config))
    pruner = make_pruner(config, notes)
    created = False
    if existing is None:
        try:
            study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                                        pruner=pruner)
            study.set_user_attr("hpo_mode", config.mode)
            study.set_user_attr("hpo_study", study_signature(config))
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago: join it
            pass
    if not created:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        if list(study.directions) != [optuna.study.StudyDirection.MAXIMIZE] * len(directions):
            raise ConfigError(f"study {name!r} has {len(study.directions)} objective(s); mode={config.mode} needs "
                              f"{len(directions)} -- pick another run_name", field="mode")
        _check_signature(study, config)
    return study, created


def _check_signature(study: Any, config: OptimizationConfig) -> None:
    import time

    recorded = study.user_attrs.get("hpo_study")
    for _ in range(50):  # the creator writes it right after creating the study
        if recorded is not None:
            break
        time.sleep(0.1)
        recorded = study.user_attrs.get("hpo_study")
    if recorded is None:
        return  # a study from before signatures were recorded: nothing to compare
    mine = study_signature(config)
    differ = [k for k in STUDY_DEFINING if k in recorded and recorded[k] != mine.get(k)]
    if differ:
        detail = "; ".join(f"{k}: study has {recorded[k]!r}, you gave {mine.get(k)!r}" for k in differ)
        raise ConfigError(f"study {study.study_name!r} was started with other options ({detail}); processes "
                          f"joining a study must use the same {', '.join(differ)} -- or pick another run_name",
                          field=differ[0])


def retry_stale_trial(notes: list[str], study: Any, trial: Any) -> None:
    """A trial whose process died was just failed (in this process only: the storage lets one process make that
    change). It was interrupted, not a failure: it is queued again once, with its parameters."""
    if trial.params and not trial.user_attrs.get("retry_of_stale"):
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "retry_of_stale": True},
                            skip_if_exists=False)
    notes.append(f"trial {trial.number} was left running by a process that stopped; it is retried")
