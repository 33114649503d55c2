"""The one wire format: TrialJob (orchestrator -> trainer) and TrialResult (trainer -> orchestrator), versioned.

Local worker processes and RunPod workers receive the very same JSON job and run the very same
``training.run_trial``, so a trial gives the same numbers wherever it runs. Parsing is strict: a missing, unknown or
mistyped field, or another schema version, is a :class:`ProtocolError` that names the field. Non-finite floats are
carried as ``null`` so every document is standard JSON (the typed conversion: :class:`hpo.wire.Message`).

A TrialJob read from JSON (:meth:`TrialJob.from_dict`, used by the local worker loop and the RunPod handler alike) is
also checked for meaning (:meth:`TrialJob.validate`): a known dataset with valid options, seeds and epoch counts in
range, and ``params`` inside the very search space the orchestrator samples from
(:func:`hpo.catalog.validate_params`). Untrusted input is measured first, without recursion
(:func:`check_json_bounds`): nesting depth, size and key types are bounded before anything walks it recursively.
Nothing here imports TensorFlow or numpy (dataset metadata and the search spaces come from ``hpo.catalog``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from . import catalog
from .catalog import LrSchedule  # re-exported: the schedule names live with the spaces
from .exceptions import ConfigError, DatasetError, ProtocolError
from .own import MAX_MODEL_REF, MODEL_REF
from .wire import Message, preview

__all__ = ["SCHEMA_VERSION", "TrialJob", "TrialResult", "EpochReport", "TrialStatus", "LrSchedule", "MAX_JOB_BYTES",
           "MAX_JOB_INPUT_BYTES", "MAX_JSON_DEPTH", "MAX_SEED", "MAX_EPOCHS", "MAX_ENSEMBLE", "check_json_bounds",
           "CUSTOM_DATASET", "MODEL_REF"]

SCHEMA_VERSION = 1
#: RunPod jobs are small: the dataset is baked into the worker image, only names and numbers travel.
MAX_JOB_BYTES = 1024
#: Most bytes of a job document a worker reads (8x the typical size; anything bigger is refused unparsed).
MAX_JOB_INPUT_BYTES = 8 * MAX_JOB_BYTES
#: Deepest nesting of objects/lists a worker accepts in its input (a TrialJob is 3 levels deep).
MAX_JSON_DEPTH = 32
#: Seeds are what numpy accepts: [0, 2**32 - 1] (config.MAX_SEED).
MAX_SEED = 2**32 - 1
#: Most epochs, min epochs or patience a job may ask for.
MAX_EPOCHS = 100_000
#: Longest trial id (ids are "<run name>#<number>").
MAX_TRIAL_ID = 200
#: Most GPUs a job may ask for (0 = all the worker sees).
MAX_TARGET_GPUS = 1024
#: Most models a final's ensemble may average (config.final_ensemble).
MAX_ENSEMBLE = 5  # also the most finals a final may wait for (gather)
MAX_TIME_LIMIT_S = 7 * 24 * 3600.0  # a job's time limit: at most a week
MAX_DEADLINE_UNIX = 1e11  # a deadline on the wall clock: seconds since 1970, before the year 5000
#: The dataset name of a job on the user's own data (described by data_uri, data_sha256, modality, ...).
CUSTOM_DATASET = "custom"
DATA_URI_SCHEMES = ("file://", "s3://")
MAX_DATA_URI = 400
MAX_OWN_PARAMS = 64

TrialStatus = Literal["completed", "failed", "stopped"]
#: learning rate within a trial: constant, or cosine decay from the trial's learning_rate to 0 over its max_epochs
Scalar = int | float | str | bool


def check_json_bounds(value: Any, *, max_bytes: int = MAX_JOB_INPUT_BYTES, max_depth: int = MAX_JSON_DEPTH,
                      what: str = "the input") -> int:
    """Measure untrusted JSON-like data iteratively (no recursion: 100k-deep nesting cannot overflow the stack).

    Returns an estimate of its size as compact JSON (bytes, a lower bound). Raises ProtocolError when it is nested
    deeper than ``max_depth``, larger than ``max_bytes``, has an object key that is not a string, or holds anything
    that is not a JSON value (dict, list, str, int, float, bool, None). Stops at the first problem, so a 10 MB
    input costs no more than ``max_bytes`` of walking."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    size = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth > max_depth:
            raise ProtocolError(f"{what} is nested more than {max_depth} levels deep; a job is a flat object "
                                "of names and numbers")
        if isinstance(item, dict):
            size += 2 + len(item)
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ProtocolError(f"{what} has an object key that is not a string ({preview(key)}); "
                                        "JSON object keys are strings")
                size += len(key) + 3
                stack.append((child, depth + 1))
                if size > max_bytes:
                    break
        elif isinstance(item, list):
            size += 2 + len(item)
            stack.extend((child, depth + 1) for child in item[: max_bytes + 1])
        elif isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, bool) or item is None:
            size += 4
        elif isinstance(item, int):
            size += max(1, item.bit_length() * 3 // 10)
        elif isinstance(item, float):
            size += 3
        else:
            raise ProtocolError(f"{what} holds {preview(item)}, which is not a JSON value")
        if size > max_bytes:
            raise ProtocolError(f"{what} is more than {max_bytes:,} bytes as JSON; a job is at most {max_bytes:,} "
                                "bytes (datasets are baked into the worker image: send names and numbers, not data)")
    return size


@dataclass(frozen=True)
class TrialJob(Message):
    """Everything a trainer needs for one trial, and nothing else (no data, no secrets; < 1 KB as JSON)."""

    trial_id: str
    dataset: str
    params: dict[str, Scalar]
    max_epochs: int
    seed: int
    dataset_options: dict[str, int] = field(default_factory=dict)
    #: seed of the train/validation split; the same for every trial of a study, so all trials are compared on the
    #: same validation data (``seed`` varies per trial: weight init, shuffling). None: use ``seed``.
    split_seed: int | None = None
    min_epochs: int = 1
    patience: int = 3
    validation_split: float = 0.2
    data_fraction: float = 1.0
    use_multi_gpu: bool = True
    target_gpus: int = 0
    compute_health: bool = True
    lr_schedule: LrSchedule = "constant"
    #: epochs the cosine schedule spans: the trial's fidelity (max_epochs_per_trial), the same for every trial of a run
    #: even when the epoch budget lets this one train fewer (max_epochs), so values at equal epochs are comparable.
    #: None: max_epochs
    schedule_epochs: int | None = None
    #: own data (dataset "custom"): where the prepared arrays are ("file:///abs/x.npz" or "s3://bucket/key.npz") and
    #: the SHA-256 of that file, which the worker checks before training; never the data itself
    data_uri: str | None = None
    data_sha256: str | None = None
    #: own data's description (what catalog.info gives for a built-in dataset)
    modality: catalog.Modality | None = None
    input_shape: list[int] = field(default_factory=list)
    num_classes: int | None = None
    vocab_size: int | None = None
    #: own model: "package.module:function", imported by the worker; params then come from the user's space
    model: str | None = None
    #: a remote worker brings the trained model back (uploaded to the bucket, or inline when small)
    return_model: bool = False
    #: seconds the trainer may use, start to answer (time_budget_minutes): it starts no epoch that would not end in
    #: time and cuts one that runs slower than judged; the trial is complete at the epochs it trained. None: no limit
    time_limit_s: float | None = None
    #: when the answer is due, on the orchestrator's wall clock (seconds since the epoch): set by a backend whose jobs
    #: may wait in a queue first (RunPod), so the trainer takes the wait off ``time_limit_s`` (:meth:`by_deadline`).
    #: None: ``time_limit_s`` counts from when the trainer starts
    deadline_unix: float | None = None
    #: a local trainer leaves the model's validation and test predictions beside its model file (final_ensemble)
    keep_predictions: bool = False
    #: a final: average at most this many models, itself and the run's kept ones (hpo.ensemble); 0 or 1: none
    ensemble: int = 0
    #: a final that may average: the run's other finals (trial numbers), whose kept models it waits for (in time)
    gather: list[int] = field(default_factory=list)
    #: a final (final_warm_start): start from the weights of this trial's kept model, not from scratch
    warm_from: int | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.min_epochs < 1 or self.patience < 1:
            raise ValueError("max_epochs, min_epochs and patience must be >= 1")
        if not 0.0 < self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {self.validation_split}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.target_gpus < 0:
            raise ValueError(f"target_gpus must be >= 0, got {self.target_gpus}")

    @classmethod
    def from_dict(cls, data: Any) -> TrialJob:
        """A job read from JSON: bounded (:func:`check_json_bounds`), strictly typed, then checked for meaning
        (:meth:`validate`). ProtocolError names the first field that is wrong and what is allowed."""
        check_json_bounds(data, what="the TrialJob")
        job: TrialJob = super().from_dict(data)
        return job.validate()

    def validate(self) -> TrialJob:
        """This job with its params as the trainer uses them, or ProtocolError.

        Checks what the types cannot: a printable trial id, seeds in [0, MAX_SEED], epoch counts up to MAX_EPOCHS,
        a known dataset with valid options, and ``params`` inside the search space of the dataset's modality
        (:func:`hpo.catalog.validate_params`, the definitions the orchestrator samples from)."""

        if not self.trial_id or len(self.trial_id) > MAX_TRIAL_ID or not self.trial_id.isprintable():
            raise ProtocolError(f"TrialJob: trial_id={preview(self.trial_id)} is not allowed; allowed: 1 to "
                                f"{MAX_TRIAL_ID} printable characters")
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_SEED:
                raise ProtocolError(f"TrialJob: {name}={preview(value)} is out of range; allowed: integer in "
                                    f"[0, {MAX_SEED}]")
        if self.schedule_epochs is not None and not self.max_epochs <= self.schedule_epochs <= MAX_EPOCHS:
            raise ProtocolError(f"TrialJob: schedule_epochs={preview(self.schedule_epochs)} is out of range; "
                                f"allowed: null or an integer in [max_epochs={self.max_epochs}, {MAX_EPOCHS}]")
        for name in ("max_epochs", "min_epochs", "patience"):
            if getattr(self, name) > MAX_EPOCHS:
                raise ProtocolError(f"TrialJob: {name}={preview(getattr(self, name))} is out of range; allowed: "
                                    f"integer in [1, {MAX_EPOCHS}]")
        if self.time_limit_s is not None and not (math.isfinite(self.time_limit_s)
                                                  and 0 < self.time_limit_s <= MAX_TIME_LIMIT_S):
            raise ProtocolError(f"TrialJob: time_limit_s={preview(self.time_limit_s)} is out of range; allowed: null "
                                f"or seconds in (0, {MAX_TIME_LIMIT_S}]")
        if self.deadline_unix is not None and (self.time_limit_s is None or not math.isfinite(self.deadline_unix)
                                               or not 0 < self.deadline_unix <= MAX_DEADLINE_UNIX):
            raise ProtocolError(f"TrialJob: deadline_unix={preview(self.deadline_unix)} is not allowed; allowed: null, "
                                f"or seconds since the epoch in (0, {MAX_DEADLINE_UNIX:g}] with time_limit_s set")
        for name, high, note in (("target_gpus", MAX_TARGET_GPUS, " (0 = all visible)"),
                                 ("ensemble", MAX_ENSEMBLE, "")):
            if not 0 <= getattr(self, name) <= high:
                raise ProtocolError(f"TrialJob: {name}={preview(getattr(self, name))} is out of range; allowed: "
                                    f"integer in [0, {high}]{note}")
        if len(self.gather) > MAX_ENSEMBLE or not all(0 <= n <= MAX_SEED for n in self.gather):
            raise ProtocolError(f"TrialJob: gather={preview(self.gather)} is not allowed; allowed: at most "
                                f"{MAX_ENSEMBLE} trial numbers in [0, {MAX_SEED}]")
        if self.warm_from is not None and not 0 <= self.warm_from <= MAX_SEED:
            raise ProtocolError(f"TrialJob: warm_from={preview(self.warm_from)} is out of range; allowed: null or a "
                                f"trial number in [0, {MAX_SEED}]")
        info = self.dataset_info()
        if self.model is not None:
            if not isinstance(self.model, str) or len(self.model) > MAX_MODEL_REF or not MODEL_REF.match(self.model):
                raise ProtocolError(f"TrialJob: model={preview(self.model)} is not allowed; allowed: "
                                    "'package.module:function' (Python names), at most "
                                    f"{MAX_MODEL_REF} characters")
            bad = [k for k in self.params if not k.isidentifier() or len(k) > 64]
            if bad or len(self.params) > MAX_OWN_PARAMS:
                raise ProtocolError(f"TrialJob: params of an own model must be at most {MAX_OWN_PARAMS} entries "
                                    f"named like Python identifiers; got {preview(bad[0] if bad else self.params)}")
            return self  # the user's space was checked by the orchestrator; the user's build function uses them
        shape = info.input_shape if info.modality == "image" else None
        params = catalog.validate_params(info.modality, self.params, shape)
        return dataclasses.replace(self, params=params)

    def by_deadline(self, now_unix: float) -> TrialJob:
        """This job as a trainer starting at ``now_unix`` (its wall clock) should run it: ``time_limit_s`` no longer
        than what is left until ``deadline_unix``, at least 1 s, so the seconds the job waited in a queue are taken
        off. Unchanged without a deadline or when the deadline leaves more (a clock behind the orchestrator's never
        lengthens the limit; one ahead of it shortens it by the difference: the machines' clocks are assumed in
        sync, as NTP keeps them)."""
        if self.deadline_unix is None or self.time_limit_s is None:
            return self
        left = round(max(1.0, self.deadline_unix - now_unix), 1)
        return dataclasses.replace(self, time_limit_s=left) if left < self.time_limit_s else self

    def dataset_info(self) -> catalog.DatasetInfo:
        """What the trainer needs to know of the job's data: the catalog's entry of a built-in dataset, or the
        description carried by the job for own data (``dataset="custom"``). ProtocolError when it is not valid."""
        if self.dataset != CUSTOM_DATASET:
            for name in ("data_uri", "data_sha256", "modality", "input_shape", "num_classes", "vocab_size"):
                if getattr(self, name) not in (None, []):
                    raise ProtocolError(f"TrialJob: {name}={preview(getattr(self, name))} applies only to "
                                        f"dataset={CUSTOM_DATASET!r} (own data); leave it out for {self.dataset!r}")
            if self.dataset not in catalog.DATASET_NAMES:
                shown = self.dataset if len(self.dataset) <= 60 else self.dataset[:60] + "..."
                raise ProtocolError(f"TrialJob: unknown dataset {shown!r}; allowed: "
                                    f"{', '.join(catalog.DATASET_NAMES)} or {CUSTOM_DATASET!r} with data_uri")
            try:
                return catalog.info(self.dataset, dict(self.dataset_options))
            except (ConfigError, DatasetError, ValueError) as exc:  # ValueError: e.g. an int too long to print
                raise ProtocolError(f"TrialJob: invalid dataset options for {self.dataset}: "
                                    f"{str(exc)[:300]}") from None
        uri = self.data_uri
        if not isinstance(uri, str) or len(uri) > MAX_DATA_URI or not uri.startswith(DATA_URI_SCHEMES):
            raise ProtocolError(f"TrialJob: data_uri={preview(uri)} is not allowed; allowed: a URI starting with "
                                f"{' or '.join(DATA_URI_SCHEMES)}, at most {MAX_DATA_URI} characters")
        sha = self.data_sha256
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ProtocolError(f"TrialJob: data_sha256={preview(sha)} is not allowed; allowed: 64 lowercase "
                                "hexadecimal digits (the SHA-256 of the data file)")
        if self.modality not in get_args(catalog.Modality):
            raise ProtocolError(f"TrialJob: modality={preview(self.modality)} is not allowed; allowed: "
                                f"{', '.join(get_args(catalog.Modality))}")
        shape = self.input_shape
        if not 1 <= len(shape) <= 3 or any(not 1 <= d <= 100_000 for d in shape):
            raise ProtocolError(f"TrialJob: input_shape={preview(shape)} is not allowed; allowed: 1 to 3 "
                                "dimensions, each in [1, 100000]")
        if self.num_classes is None or not 2 <= self.num_classes <= 100_000:
            raise ProtocolError(f"TrialJob: num_classes={preview(self.num_classes)} is not allowed; allowed: "
                                "integer in [2, 100000]")
        vocab = self.vocab_size
        if (self.modality == "text") != (vocab is not None) or (vocab is not None and not 3 <= vocab <= 1_000_000):
            raise ProtocolError(f"TrialJob: vocab_size={preview(vocab)} is not allowed; allowed: an integer in "
                                "[3, 1000000] for modality 'text', null otherwise")
        return catalog.DatasetInfo(CUSTOM_DATASET, self.modality, tuple(shape), self.num_classes,  # type: ignore[arg-type]
                                   "your data", vocab)


@dataclass(frozen=True)
class EpochReport(Message):
    """Sent after every epoch (worker subprocess line, RunPod progress_update)."""

    trial_id: str
    epoch: int  # 1-based
    metrics: dict[str, float | None]
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class TrialResult(Message):
    """The outcome of one trial. Every trial's numbers travel in its own result."""

    trial_id: str
    status: TrialStatus
    history: dict[str, list[float | None]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int | None = None  # 1-based, by validation accuracy
    val_metrics: dict[str, float | None] = field(default_factory=dict)
    test_metrics: dict[str, float | None] = field(default_factory=dict)
    health: dict[str, float | None] = field(default_factory=dict)
    param_count: int | None = None
    train_seconds: float = 0.0
    executed_on: str = ""  # e.g. "local:worker-1 (pid 1234)", "runpod:<worker id>"
    device: str = ""  # e.g. "CPU", "2x GPU (MirroredStrategy)"
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # extras (gradient norms for plots, ...)
    #: the trained model, when the job asked for it (return_model): where the worker uploaded it
    #: ("s3://bucket/key.keras"), or the .keras file itself in base64 when no bucket is configured and it is small
    model_uri: str | None = None
    model_inline: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def val_accuracy(self) -> float | None:
        return self.val_metrics.get("accuracy")

    def replace(self, **changes: Any) -> TrialResult:
        return dataclasses.replace(self, **changes)
