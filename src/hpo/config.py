"""OptimizationConfig: every option of a run, in one frozen, validated dataclass.

The dataclass is the single source of truth: ``key=value`` parsing derives each option's type from its annotation,
``hpo optimize --help`` and the README's table are generated from the fields' metadata, and ``Literal`` annotations
list the allowed choices. Search-space parameters given as ``key=value`` (``activation=relu``) become *pins*: fixed
instead of searched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import catalog, own, portfolio, scoring
from .catalog import LrSchedule
from .exceptions import ConfigError
from .option_types import (STORAGE_DIALECTS, check_endpoint_url, check_extras, check_range,  # noqa: F401
                           check_storage_url, check_type, closest)
from .scoring import Mode

__all__ = [
    "OptimizationConfig",
    "Mode",
    "SamplerName",
    "PrunerName",
    "PlotGeneration",
    "parse_kv",
    "config_from_options",
    "load_dotenv_values",
    "runpod_api_key",
    "default_max_epochs",
    "trial_limit",
]

SamplerName = Literal["tpe", "random", "cmaes", "qmc", "nsga2"]
PrunerName = Literal["hyperband", "median", "successive_halving", "none"]
PlotGeneration = Literal["all", "best", "none"]

#: trials of a run that gives neither trials nor epoch_budget
DEFAULT_TRIALS = 20
#: max_epochs_per_trial when neither it nor epoch_budget is given
DEFAULT_MAX_EPOCHS = 10
#: the most epochs per trial an epoch budget implies when max_epochs_per_trial is not given
MAX_EPOCHS_FROM_BUDGET = 50


def trial_limit(trials: int | None, epoch_budget: int | None) -> int:
    """Most trials a run trains: ``trials``; else as many as epoch_budget allows (each trains >= 1 epoch); else
    DEFAULT_TRIALS."""
    if trials is not None:
        return trials
    return DEFAULT_TRIALS if epoch_budget is None else epoch_budget


def default_max_epochs(epoch_budget: int | None, workers: int, min_epochs: int = 1) -> int:
    """max_epochs_per_trial when it is not given: 10; with an epoch budget, half of it, or a worker's share when more
    than two workers run (at least 10 and min_epochs, at most 50).

    Under a budget the selected model is the one that trained longest, and more epochs are the surest gain (the
    default CNN on 20k Fashion-MNIST images, cosine-decayed: 90.55 % test after 10 epochs, 90.76 % after 14, 90.92 %
    after 16). Half the budget lets the first trial (the warm-start default) train on one worker for as long as the
    other workers explore with the rest, so neither waits for the other."""
    if epoch_budget is None:
        return max(DEFAULT_MAX_EPOCHS, min_epochs)
    share = epoch_budget // max(2, workers)
    return max(DEFAULT_MAX_EPOCHS, min_epochs, min(share, MAX_EPOCHS_FROM_BUDGET))

#: the largest seed numpy, TensorFlow and Optuna's samplers all accept
MAX_SEED = 2**32 - 1

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _opt(default: Any, help: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, env: str | None = None, internal: bool = False) -> Any:
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "env": env, "internal": internal}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptimizationConfig:
    """All options of one optimization run. Build it with keyword arguments or :func:`config_from_options`."""

    dataset: str = field(metadata={"help": "dataset to optimize on: a built-in one (`hpo datasets` lists them) or "
                                    "your own: an image folder (one sub-folder per class), a .csv/.tsv file (with "
                                    "text_column and label_column) or an .npz (x, y, optional x_test, y_test); "
                                    "in Python also data=(x, y); required", "low": None, "high": None,
                                    "low_open": False, "env": None})
    trials: int | None = _opt(None, f"number of trials to train (default {DEFAULT_TRIALS}; with epoch_budget, as many "
                              "as the budget allows); a resumed run continues up to this total", low=1)
    mode: Mode = _opt("simple", "objective: simple = validation accuracy; health = accuracy blended with model "
                      "health; pareto = both, Pareto front reported")
    health_weight: float = _opt(0.3, "mode=health: weight of overall health in the objective", low=0.0, high=1.0)
    health_weights: str | None = _opt(None, "weights of the components of overall_health as name:weight pairs, e.g. "
                                      "generalization:2,efficiency:0 (unlisted components keep their defaults; "
                                      "non-negative, normalized to sum 1; names: neuron_utilization, "
                                      "gradient_health, generalization, training_stability, convergence, efficiency)")
    concurrent_workers: int = _opt(1, "trials run at the same time (local worker processes or remote jobs)",
                                   low=1, high=64)
    min_epochs_per_trial: int = _opt(1, "epochs every trial gets before pruning or early stopping may end it", low=1,
                                     high=100_000)
    max_epochs_per_trial: int | None = _opt(None, f"most epochs a trial trains (default {DEFAULT_MAX_EPOCHS}; with "
                                            "epoch_budget, half the budget, or a worker's share of it when more than "
                                            f"two workers run: at least {DEFAULT_MAX_EPOCHS}, at most "
                                            f"{MAX_EPOCHS_FROM_BUDGET})", low=1, high=100_000)
    epoch_budget: int | None = _opt(None, "most training epochs of all trials together (default: no limit but "
                                    "trials x max_epochs_per_trial); no trial starts once it is spent, none is "
                                    "given more epochs than remain, and epochs saved by pruning and early stopping "
                                    "go to further trials", low=1)
    warm_start: bool = _opt(True, "the first trial trains the search space's default configuration (a sound, "
                            "generic CNN or LSTM; pins apply), the next ones the portfolio (portfolio_size); trials "
                            "started while the default trains and nothing is queued are its neighbours (two "
                            "parameters redrawn), then the sampler takes over")
    portfolio_size: int = _opt(3, "with warm_start: how many configurations of the built-in portfolio (strong "
                               "configurations chosen on other datasets, the default first) the first trials train "
                               "before the sampler takes over; 1 = the default only", low=1, high=3)
    initial_configs: str | None = _opt(None, "a JSON file holding a list of configurations (objects of parameter "
                                       "values; missing ones take the default's) trained first, after the default "
                                       "and before the portfolio")
    lr_schedule: LrSchedule = _opt("cosine", "learning rate within each trial: cosine = decays from the trial's "
                                   "learning_rate to 0 over its max epochs (better final accuracy for short "
                                   "trials); constant = stays at learning_rate")
    early_stopping_patience: int = _opt(3, "epochs without validation improvement before a trial stops", low=1)
    validation_split: float = _opt(0.2, "share of the official training split held out for validation "
                                   "(selection uses validation only; the test split is never touched)",
                                   low=0.0, high=0.9, low_open=True)
    data_fraction: float = _opt(1.0, "share of the training part each trial trains on (fast proxies)",
                                low=0.0, high=1.0, low_open=True)
    vocab_size: int | None = _opt(None, "text datasets: vocabulary size (default: the dataset's)", low=3,
                                   high=1_000_000)
    sequence_length: int | None = _opt(None, "text datasets: tokens per text, longer truncated, shorter padded "
                                       "(default: the dataset's)", low=1, high=100_000)
    image_size: int | None = _opt(None, "gtsrb: images are resized to image_size x image_size (default 32)",
                                  low=8, high=1024)
    seed: int = _opt(42, "seed of the sampler, the data split and every trial", low=0, high=MAX_SEED)
    timeout_minutes: float | None = _opt(None, "stop starting new trials after this many minutes",
                                         low=0.0, low_open=True)
    time_budget_minutes: float | None = _opt(None, "the run ends by this many minutes after it starts, everything "
                                             "included: a trial starts only if it can train, the last ones stop "
                                             "in time (complete at the epochs they trained), the best model is kept",
                                             low=0.0, low_open=True)
    final_training_share: float = _opt(0.5, "time_budget_minutes: share of the time for trials kept to train the "
                                       "best configurations found (one per worker, at most two) again, on a "
                                       "schedule that spans the time left (search short, then train long; 0 = off)",
                                       low=0.0, high=0.9)
    final_ensemble: int = _opt(3, "time_budget_minutes: the final training's model averages at most this many "
                               "models: itself and the run's best completed trials (with two workers, the other "
                               "final too), each added only when it raises validation accuracy (chosen on validation "
                               "only; 1 = the final alone)", low=1, high=5)
    final_warm_start: bool = _opt(False, "time_budget_minutes: a final training starts from the weights its "
                                  "configuration's search trial ended with (a warm restart of its schedule), not from "
                                  "scratch (built-in models, local trainers; off: measured, it did not raise the "
                                  "finals' validation accuracy, docs/bench/protocol-20261206-warm.md)")
    trial_timeout_minutes: float | None = _opt(None, "a trial running longer than this is cancelled and failed",
                                               low=0.0, low_open=True)
    max_consecutive_failures: int = _opt(5, "stop the run after this many failed trials in a row", low=1)
    run_name: str | None = _opt(None, "run folder name (default: <dataset>-<YYYYmmdd-HHMMSS>); an existing "
                                "run's name resumes it")
    resume: bool = _opt(False, "continue the latest run of this dataset (or run_name) instead of starting anew")
    output_dir: str = _opt("optimization_results", "folder that holds the run folders")
    storage: str | None = _opt(None, "Optuna storage URL (default: sqlite study.db in the run folder)")
    heartbeat_grace_s: float = _opt(60.0, "a running trial whose process sent no heartbeat for this long is taken "
                                    "as dead (killed process or machine): it is marked interrupted and retried "
                                    "once, by whichever process sharing the study notices first", low=1.0)
    sampler: SamplerName = _opt("tpe", "Optuna sampler, seeded: tpe (multivariate TPE), random, cmaes (CMA-ES for "
                                "the numeric parameters, categorical ones drawn at random as Optuna does; not with "
                                "mode=pareto), qmc (scrambled Sobol quasi-random), nsga2 (genetic; suits "
                                "mode=pareto)")
    pruner: PrunerName = _opt("hyperband", "pruner fed by every epoch's validation accuracy "
                              "(off in pareto mode)")
    prune_below_best: float = _opt(0.1, "also prune a trial whose validation accuracy after an epoch is more than "
                                   "this fraction below the best any other trial had by that epoch, whatever the "
                                   "pruner's schedule (1 = off; given with pruner=none: an error)", low=0.0,
                                   high=1.0)
    prune_behind_in_time: float = _opt(0.05, "also prune a trial whose validation accuracy after t seconds of "
                                       "training is more than this fraction below the best any other trial had "
                                       "reached in t seconds: a configuration must earn its cost (1 = off; given "
                                       "with pruner=none: an error)", low=0.0, high=1.0)
    max_params: int = _opt(2_000_000, "configurations with more parameters are rejected before training", low=1)
    use_runpod_service: bool = _opt(False, "send trials to a RunPod serverless endpoint instead of local workers")
    runpod_endpoint_id: str | None = _opt(None, "RunPod endpoint id (default: RUNPOD_ENDPOINT_ID from the "
                                          "environment or .env)", env="RUNPOD_ENDPOINT_ID")
    runpod_endpoint_url: str | None = _opt(None, "endpoint base URL, overrides the id "
                                           "(e.g. http://127.0.0.1:8000/v2/sim)")
    runpod_fallback_local: bool = _opt(True, "run a trial locally when the endpoint is unreachable")
    runpod_timeout_s: float = _opt(3600.0, "execution timeout of one remote trial, in seconds",
                                   low=0.0, low_open=True)
    runpod_queue_timeout_s: float = _opt(600.0, "most seconds a remote trial may wait in the endpoint's queue for a "
                                         "worker; then it is cancelled and runs locally (runpod_fallback_local) or "
                                         "fails", low=0.0, low_open=True)
    runpod_retry_after_max_s: float = _opt(120.0, "longest Retry-After wait honoured when the endpoint is rate "
                                           "limiting (429/503); such waits do not use up retry attempts",
                                           low=0.0, low_open=True)
    use_multi_gpu: bool = _opt(True, "train with MirroredStrategy when a worker sees more than one GPU")
    target_gpus_per_worker: int = _opt(0, "most GPUs one trial uses (0 = all visible)", low=0)
    plot_generation: PlotGeneration = _opt("all", "plots written to the run folder: all, best (best trial only) "
                                           "or none")
    tracking: Literal["none", "mlflow"] = _opt("none", "experiment tracking: mlflow = one MLflow run per trial "
                                               "(params, per-epoch metrics, health, the best model) in an experiment "
                                               "named after run_name, at MLFLOW_TRACKING_URI when set, else in a "
                                               "SQLite store in the run folder (sqlite:///RUN_DIR/mlflow.db, "
                                               "artifacts in RUN_DIR/mlartifacts); needs pip install "
                                               "\"hpo[mlflow]\"; tracking errors never fail the run")
    tensorboard: bool = _opt(False, "per-trial TensorBoard logs of every epoch's metrics in "
                             "RUN_DIR/tensorboard/trial-N/ (tensorboard --logdir RUN_DIR/tensorboard); needs pip "
                             "install \"hpo[tensorboard]\"")
    quiet: bool = _opt(False, "no progress display")
    modality: catalog.Modality | None = _opt(None, "own data: image, text or sequence (default: inferred from the "
                                             "data: integer sequences are text, real-valued ones sequences)")
    text_column: str | None = _opt(None, "own .csv/.tsv data: the column holding the text")
    label_column: str | None = _opt(None, "own .csv/.tsv data: the column holding the class label")
    model: str | None = _opt(None, "own model: 'package.module:function', a function build(params, input_shape, "
                             "num_classes) returning a keras.Model (compiled or not), importable by every worker")
    space: dict[str, Any] | None = _opt(None, "own model's search space: a dict of parameters (Python) or a "
                                        "JSON/TOML/YAML file (README: Your own model)")
    pins: dict[str, Any] = _opt({}, "search-space parameters fixed instead of searched (give them as key=value)")
    #: set by the session once own data is prepared: the data file's SHA-256 and its description
    data_sha256: str | None = _opt(None, "own data: SHA-256 of the prepared data (set by hpo)", internal=True)
    data_info: dict[str, Any] | None = _opt(None, "own data: its description (set by hpo)", internal=True)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name in _DICT_OPTIONS:
                continue
            value = check_type(f.name, getattr(self, f.name), hints[f.name], dict(f.metadata))
            object.__setattr__(self, f.name, value)
            check_range(f, value)
        if self.max_epochs_per_trial is None:
            object.__setattr__(self, "max_epochs_per_trial", default_max_epochs(
                self.epoch_budget, self.concurrent_workers, self.min_epochs_per_trial))
        if self.epoch_budget is not None and self.epoch_budget < self.min_epochs_per_trial:
            raise ConfigError(f"epoch_budget={self.epoch_budget} is below min_epochs_per_trial="
                              f"{self.min_epochs_per_trial}, so no trial could start; allowed: epoch_budget >= "
                              "min_epochs_per_trial", field="epoch_budget")
        if self.min_epochs_per_trial > self.max_epochs_per_trial:
            raise ConfigError(
                f"min_epochs_per_trial={self.min_epochs_per_trial} is above max_epochs_per_trial="
                f"{self.max_epochs_per_trial}; allowed: min_epochs_per_trial <= max_epochs_per_trial",
                field="min_epochs_per_trial")
        if self.health_weights is not None:
            scoring.parse_weights(self.health_weights)  # ConfigError naming the bad component or weight
        if self.run_name is not None and not _RUN_NAME.match(self.run_name):
            raise ConfigError(f"run_name={self.run_name!r} is not a safe folder name; allowed: letters, digits, "
                              "'.', '_' and '-', starting with a letter or digit, at most 100 characters",
                              field="run_name")
        if self.storage is not None:
            check_storage_url(self.storage)
        check_extras(self)
        if self.sampler == "cmaes" and self.mode == "pareto":
            raise ConfigError("sampler=cmaes optimizes one objective and mode=pareto has two; allowed with pareto: "
                              "tpe, random, qmc, nsga2", field="sampler")
        for name in ("prune_below_best", "prune_behind_in_time") if self.pruner == "none" else ():
            if getattr(self, name) not in (self.__dataclass_fields__[name].default, 1.0):  # given: ignored silently
                raise ConfigError(f"{name}={getattr(self, name)} has no effect with pruner=none (it prunes beside a "
                                  "pruner); allowed: leave it out, or a pruner: hyperband, median, successive_halving",
                                  field=name)
        if self.runpod_endpoint_url is not None:
            check_endpoint_url(self.runpod_endpoint_url)
        if self.use_runpod_service and not (self.runpod_endpoint_id or self.runpod_endpoint_url):
            raise ConfigError("use_runpod_service=true needs runpod_endpoint_id (or RUNPOD_ENDPOINT_ID in the "
                              "environment / .env) or runpod_endpoint_url", field="use_runpod_service")
        own.check_dataset(self)
        object.__setattr__(self, "space", own.load_space(self.space))
        if self.model is not None:
            object.__setattr__(self, "model", own.check_model_ref(self.model))
        if (self.model is None) != (self.space is None):
            missing = "space" if self.space is None else "model"
            raise ConfigError(f"{missing} is missing: your own model needs both model='package.module:function' "
                              "and space (its search space)", field=missing)
        if self.data_info is None and not own.is_builtin(self.dataset):
            return  # pins are checked once the data is prepared (its modality decides the space)
        info = self.dataset_info  # validates dataset options
        object.__setattr__(self, "pins", _check_pins(dict(self.pins), info, self.search_space,
                                                           self.dataset if self.own_data else None))
        if self.initial_configs is not None:  # ConfigError naming the file's bad entry
            portfolio.load_configs(self.initial_configs, self.search_space,
                                   info.input_shape if info.modality == "image" else None)

    # -- derived -------------------------------------------------------------------------------------------------
    @property
    def trial_limit(self) -> int:
        """Most trials the run trains (:func:`trial_limit`)."""
        return trial_limit(self.trials, self.epoch_budget)

    @property
    def dataset_options(self) -> dict[str, Any]:
        """The options of the dataset (only those it takes), defaults filled in; none for own data (its options
        shaped the prepared file)."""
        if self.own_data:
            return {}
        opts = catalog.default_options(self.dataset)
        for key in opts:
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        return opts

    @property
    def own_data(self) -> bool:
        """The run trains on the user's data (a path or arrays), not a built-in dataset."""
        return not own.is_builtin(self.dataset)

    @property
    def search_space(self) -> Any:
        """What the search samples: the user's space (a catalog.SearchSpace) or the modality's built-in one."""
        if self.space is not None:
            from .user_space import parse_space

            return parse_space(self.space)
        return self.modality_of_data

    @property
    def modality_of_data(self) -> str:
        return self.dataset_info.modality

    @property
    def dataset_info(self) -> catalog.DatasetInfo:
        if self.data_info is not None:
            return own.info_from_dict(self.data_info)
        if self.own_data:
            raise ConfigError(f"dataset {self.dataset!r} is your own data and is not prepared yet", field="dataset")
        given = [k for k in ("vocab_size", "sequence_length", "image_size") if getattr(self, k) is not None]
        takes = catalog.default_options(self.dataset)
        for key in given:
            if key not in takes:
                allowed = ", ".join(takes) or "none"
                raise ConfigError(f"{key} does not apply to dataset {self.dataset}; its dataset options: {allowed}",
                                  field=key)
        return catalog.info(self.dataset, self.dataset_options)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every option (no secrets live in the config)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> OptimizationConfig:
        return dataclasses.replace(self, **changes)


def _check_pins(pins: dict[str, Any], info: catalog.DatasetInfo, search_space: Any,
                label: str | None = None) -> dict[str, Any]:
    if not isinstance(search_space, str):  # the user's space
        from .user_space import check_pins

        return check_pins(search_space, pins)
    space = {p.name: p for p in catalog.space_for(search_space)}
    checked = {}
    for key, value in pins.items():
        if key not in space:
            if key in catalog.all_param_names():
                owner = next(label for m, label in catalog.SPACE_LABELS.items()
                             if key in {p.name for p in catalog.space_for(m)})
                raise ConfigError(f"{key} is a parameter of the {owner} space and does not apply to "
                                  f"{info.modality} dataset {label or info.name}; its parameters: {', '.join(space)}",
                                  field=key)
            raise ConfigError(f"unknown option {key!r}{closest(key, space)}", field=key)
        shape = info.input_shape if info.modality == "image" else None
        checked[key] = catalog.coerce_pin(space[key], value, shape)
    for key, value in checked.items():  # a pin that its other pins switch off would be ignored without a word
        p = space[key]
        if p.active_if is not None and p.active_if[0] in checked and not catalog.is_active(p, checked):
            parent = p.active_if[0]
            raise ConfigError(f"{key}={value} has no effect: {key} applies only when {catalog.describe_condition(p)}, "
                              f"and {parent}={checked[parent]} is pinned; drop {key}, or pin {parent} to a value "
                              "where it applies", field=key)
    return checked


# -- construction from key=value / keyword options ------------------------------------------------------------------

#: options that are dicts (not converted from text by their annotation)
_DICT_OPTIONS = ("pins", "space", "data_info")


def _option_names() -> list[str]:
    return [f.name for f in dataclasses.fields(OptimizationConfig)
            if f.name != "pins" and not f.metadata.get("internal")]


def parse_kv(args: typing.Sequence[str]) -> dict[str, str]:
    """``["trials=8", "mode=health"]`` -> ``{"trials": "8", "mode": "health"}``; malformed items raise ConfigError."""
    options: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"malformed argument {arg!r}; expected key=value, e.g. dataset=cifar10 trials=8")
        if key in options:
            raise ConfigError(f"{key} is given twice ({key}={options[key]!r} and {arg!r}); give it once", field=key)
        options[key] = value
    return options


def load_dotenv_values(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Values from ``.env`` (current directory by default), overridden by the real environment."""
    from dotenv import dotenv_values

    env_path = Path(path) if path is not None else Path.cwd() / ".env"
    values = {k: v for k, v in dotenv_values(env_path).items() if v} if env_path.is_file() else {}
    values.update({k: v for k, v in os.environ.items() if k.startswith(("RUNPOD_", "HPO_")) and v})
    return values


def runpod_api_key(env_file: str | os.PathLike[str] | None = None) -> str | None:
    """RUNPOD_API_KEY from the environment or .env. Kept out of the config so it never reaches results."""
    return load_dotenv_values(env_file).get("RUNPOD_API_KEY")


def config_from_options(options: dict[str, Any], *, env_file: str | os.PathLike[str] | None = None,
                        use_env: bool = True) -> OptimizationConfig:
    """Build a config from keyword / ``key=value`` options (strings are converted by the annotated type).

    Keys that are search-space parameters become pins; anything else unknown is a ConfigError naming the closest
    valid keys. RunPod settings missing from ``options`` are filled from the environment and ``.env``.
    """
    names = _option_names()
    kwargs: dict[str, Any] = {}
    pins: dict[str, Any] = dict(options.get("pins") or {})
    space = own.load_space(options.get("space"))  # its parameters can be pinned like the built-in ones
    space_names = set(space) if space is not None else set()
    for key, value in options.items():
        if key == "pins":
            continue
        if key in names:
            kwargs[key] = space if key == "space" else value
        elif key in catalog.all_param_names() or key in space_names:
            pins[key] = value
        else:
            candidates = names + sorted(catalog.all_param_names())
            raise ConfigError(f"unknown option {key!r}{closest(key, candidates)}; `hpo optimize --help` lists "
                              "every option", field=key)
    if "dataset" not in kwargs:
        raise ConfigError("dataset is required, e.g. dataset=fashion_mnist; allowed: "
                          f"{', '.join(catalog.DATASET_NAMES)}, or your own data (a folder, .csv/.tsv or .npz "
                          "path; data=(x, y) in Python)", field="dataset")
    if use_env:
        env = load_dotenv_values(env_file)
        for f in dataclasses.fields(OptimizationConfig):
            var = f.metadata.get("env")
            if var and kwargs.get(f.name) in (None, "") and env.get(var):
                kwargs[f.name] = env[var]
    return OptimizationConfig(**kwargs, pins=pins)
