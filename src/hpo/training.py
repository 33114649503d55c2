"""run_trial: train one TrialJob and return its TrialResult. Shared by local worker processes and RunPod workers.

Seeds everything, loads the dataset's honest splits, builds the model (MirroredStrategy over several GPUs when asked
and available), trains with early stopping on validation accuracy, reports every epoch, stops when asked, restores
the best epoch's weights, evaluates on validation and test (a pruned trial: validation only), and frees the Keras
session. Failures (NaN loss, an exception while training) come back as a failed TrialResult, never as an exception.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import datasets
from .exceptions import DatasetError, HPOError
from .protocol import CUSTOM_DATASET, TrialJob, TrialResult

__all__ = ["run_trial", "configure_tensorflow", "TimedCosine"]

EpochCallback = Callable[[int, dict[str, float]], None]
StopCheck = Callable[[], bool]

_TF_READY = False


def configure_tensorflow() -> None:
    """One-time process setup: quiet logs, GPU memory growth (several workers may share a GPU), determinism.

    oneDNN stays on (TensorFlow's default): it is ~1.5x faster per epoch on CPUs and, on one machine, gives the same
    numbers in every process, so local and worker processes agree to the last bit.
    """
    global _TF_READY
    if _TF_READY:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized: keep going with what we have
            pass
    threads = os.environ.get("HPO_TF_THREADS")
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(max(1, int(threads)))
        except RuntimeError:
            pass
    tf.config.experimental.enable_op_determinism()
    _TF_READY = True


def _strategy(job: TrialJob, devices: list[str] | None) -> tuple[Any, str]:
    import tensorflow as tf

    if devices is not None:
        if len(devices) > 1:
            kind = devices[0].split(':')[-2].strip('/').upper()
            return tf.distribute.MirroredStrategy(devices), f"{len(devices)}x {kind} (MirroredStrategy)"
        return tf.distribute.OneDeviceStrategy(devices[0]), devices[0]
    gpus = tf.config.list_logical_devices("GPU")
    if job.use_multi_gpu and len(gpus) > 1:
        n = len(gpus) if job.target_gpus == 0 else min(job.target_gpus, len(gpus))
        if n > 1:
            names = [g.name for g in gpus[:n]]
            return tf.distribute.MirroredStrategy(names), f"{n}x GPU (MirroredStrategy)"
    return tf.distribute.get_strategy(), "1x GPU" if gpus else "CPU"


class TimedCosine:
    """A cosine learning-rate schedule over ``steps`` optimizer steps that a time limit can shorten (and lengthen
    again, never past ``steps``): :meth:`replan` re-aims the rest of the curve at a new end step from wherever it is,
    so the rate stays continuous and reaches 0 where training will end. A job with a time limit (a final of
    final_training_share, the last trials of time_budget_minutes) thereby always ends its schedule, however far its
    epoch time strays from the estimate its epochs were counted with; a step-based cosine cut at 60 % of its steps
    would have ended at 35 % of its rate. Pure Python: the trainer assigns :meth:`rate` before each batch."""

    def __init__(self, learning_rate: float, steps: int) -> None:
        self.learning_rate, self.steps = float(learning_rate), max(1, int(steps))
        self._p0, self._s0, self._per_step = 0.0, 0, 1.0 / self.steps  # progress = p0 + (step - s0) * per_step

    def progress(self, step: int) -> float:
        return min(1.0, self._p0 + (step - self._s0) * self._per_step)

    def rate(self, step: int) -> float:
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))

    def end(self) -> int:
        """The step at which the rate reaches 0."""
        return self._s0 + math.ceil(round((1.0 - self._p0) / self._per_step, 9)) if self._per_step > 0 else self.steps

    def replan(self, step: int, steps_left: int) -> None:
        """From ``step`` on, end the curve after ``steps_left`` more steps (at most the planned ``steps``)."""
        p = self.progress(step)
        end = min(self.steps, step + max(1, int(steps_left)))
        self._p0, self._s0 = p, step
        self._per_step = (1.0 - p) / (end - step) if end > step else 0.0


def _finite(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


#: the end of a trial (best weights restored, validation and test evaluated, the model file written) is expected to take
#: END_MARGIN x its evaluation at the rate the epochs' validation ran + END_FIXED_S seconds: on 2 CPU cores the end
#: of a Fashion-MNIST trial (1,000 validation, 10,000 test images) took 2.0-3.4 s against 2.7 s estimated without them,
#: and a trial still running when the time budget's finishing reserve is cut is lost
END_MARGIN, END_FIXED_S = 1.5, 1.0
#: a final waits at most this long, and this share of its time limit, for its source trial's model to be kept
#: (final_warm_start: a source cut as the finals began ends a few seconds later)
WARM_WAIT_S, WARM_WAIT_SHARE = 15.0, 0.1
#: a final that may average models (final_ensemble) also reads the kept predictions, loads the members it chooses
#: and saves them as one model: this many seconds more
ENSEMBLE_FIXED_S = 3.0


class _EndClock:
    """The seconds a trial's end took (after training: evaluation, ensemble or model file, health), part by part,
    beside what the time-limit rule kept for it, the job's time limit and the seconds from the trainer's start to the
    end of training (``details["end_phase"]``), so a run that ends late, or early, says where."""

    def __init__(self, reserved_s: float | None, limit_s: float | None, trained_s: float) -> None:
        self.reserved_s, self.limit_s, self.trained_s = reserved_s, limit_s, trained_s
        self.began = self._last = time.perf_counter()
        self.parts: dict[str, float] = {}

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] = round(now - self._last, 2)
        self._last = now

    def summary(self) -> dict[str, Any]:
        took = round(time.perf_counter() - self.began, 2)
        reserved = None if self.reserved_s is None else round(self.reserved_s, 2)
        return {"took_s": took, "reserved_s": reserved, "limit_s": self.limit_s, "trained_s": round(self.trained_s, 2),
                **{f"{k}_s": v for k, v in self.parts.items()}}


def _make_callback(job: TrialJob, on_epoch: EpochCallback | None, should_stop: StopCheck | None,
                   started: float, timed: TimedCosine | None = None, steps_per_epoch: int = 1,
                   evaluated_share: float = 1.0, end_fixed_s: float = END_FIXED_S) -> Any:
    """``evaluated_share``: examples evaluated at the end (validation and test) per validation example, so that the
    end's duration is estimated from the validation pass each epoch makes."""
    import keras

    class TrialCallback(keras.callbacks.Callback):
        """Reports epochs, watches for NaN/inf loss, keeps the best weights, early-stops, and honours stop requests."""

        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float | None]] = {}
            self.best_acc = -math.inf
            self.best_epoch: int | None = None
            self.best_weights: list[Any] | None = None
            self.non_finite: str | None = None
            self.stopped_on_request = False
            self.epochs_run = 0
            #: the job's time limit ended training early (the trial is complete at the epochs it trained)
            self.out_of_time = False
            self._epoch_began = 0.0
            self._lengths: list[float] = []
            #: the seconds the time-limit rule last kept for the trial's end (None: no time limit, or not judged)
            self.reserved_s: float | None = None
            self._validation_began, self._validation_s = 0.0, 0.0  # the last epoch's validation pass
            self._step = 0  # optimizer steps taken (the timed schedule's clock)
            self._batch_began = 0.0  # when the last batch began (the time limit within an epoch)
            self._epoch = 0  # the epoch in progress (0-based)
            #: a stop that came during an epoch ended it there: {"epoch", "batches" (trained of it), "of"}
            self.cut_in_epoch: dict[str, int] | None = None

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._epoch_began, self._epoch = time.perf_counter(), epoch

        def on_test_begin(self, logs: dict | None = None) -> None:
            self._validation_began = time.perf_counter()

        def on_test_end(self, logs: dict | None = None) -> None:
            self._validation_s = time.perf_counter() - self._validation_began

        def end_s(self, epoch_s: float) -> float:
            """Seconds the end of the trial may take: validation and test evaluated at the rate this epoch's
            validation pass ran, and the model file (:data:`END_MARGIN`, :data:`END_FIXED_S`); at least half an
            epoch."""
            return max(0.5 * epoch_s, END_MARGIN * evaluated_share * self._validation_s + end_fixed_s)

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            """Before each step (a hook without logs: no device sync): a stop asked during the epoch (a trial cut
            for the final training or at the budget's end: the worker sets the flag as the request comes) ends the
            epoch after this batch -- Keras then validates what it trained and ends the epoch, so the trial keeps
            its best epoch so far, where an epoch of a minute would have held the worker that long. The same for the
            job's time limit when this epoch runs slower than the ones it was judged on (a shared machine): cut when
            its validation pass and the trial's end would no longer end in time. And the rate of the timed cosine."""
            if self.cut_in_epoch is None:  # (the last batch ends the epoch anyway)
                if should_stop is not None and should_stop():
                    self._cut(batch)
                elif self.reserved_s is not None and job.time_limit_s is not None:  # judged at an epoch's end
                    now = time.perf_counter()
                    step_s, self._batch_began = (now - self._batch_began if batch else 0.0), now
                    # this batch and, not cut now, the next one must leave the validation pass and the end in time
                    if now - started + 2 * step_s + self._validation_s + self.reserved_s > job.time_limit_s:
                        self.out_of_time = self._cut(batch)
            if timed is not None:
                self.model.optimizer.learning_rate = timed.rate(self._step)
                self._step += 1

        def _cut(self, batch: int) -> bool:
            """End the epoch after this batch (whether it did: not at the epoch's last, which ends it anyway)."""
            if batch + 1 >= steps_per_epoch:
                return False
            self.cut_in_epoch = {"epoch": self._epoch + 1, "batches": batch + 1, "of": steps_per_epoch}
            self.model.stop_training = True
            return True

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            # NaN/inf is checked once per epoch (the epoch's mean loss is NaN if any batch was): a batch-level hook
            # would force a device sync after every batch and slow every trial down.
            metrics = {k: _finite(v) for k, v in (logs or {}).items()}
            if metrics.get("loss") is None:
                self.non_finite = f"loss became {(logs or {}).get('loss')} in epoch {epoch + 1}"
                self.model.stop_training = True
                return
            self.epochs_run = epoch + 1
            try:  # the learning rate the epoch ended with (lr_schedule=cosine: falling to 0 at max_epochs)
                metrics["learning_rate"] = _finite(self.model.optimizer.learning_rate)
            except (AttributeError, TypeError, ValueError):
                pass
            for key, value in metrics.items():
                self.history.setdefault(key, []).append(value)
            acc = metrics.get("val_accuracy")
            if acc is not None and acc > self.best_acc:
                self.best_acc, self.best_epoch = acc, epoch + 1
                self.best_weights = self.model.get_weights()
            if on_epoch is not None:
                # + seconds since the trial started (data, model, every epoch so far), measured where it trains, so
                # local and remote trials report comparable times however long a job queued; not in the history,
                # which stays identical wherever and whenever the job runs
                on_epoch(epoch + 1, dict(metrics, elapsed_s=time.perf_counter() - started))
            if should_stop is not None and should_stop():
                self.stopped_on_request = True
                self.model.stop_training = True
            elif (self.epochs_run >= job.min_epochs and self.best_epoch is not None
                  and self.epochs_run - self.best_epoch >= job.patience):
                self.model.stop_training = True
            elif job.time_limit_s is not None and self.epochs_run < job.max_epochs:
                # another epoch, then the evaluation and the model file (:meth:`end_s`), must end in time; an
                # epoch's length is the longer of the last two (epochs vary on a shared machine)
                now = time.perf_counter()
                self._lengths = [*self._lengths[-1:], now - self._epoch_began]
                pace = max(self._lengths)
                self.reserved_s = self.end_s(pace)
                if now - started + pace + self.reserved_s > job.time_limit_s:
                    self.out_of_time = True
                    self.model.stop_training = True
                elif timed is not None:  # the schedule ends where the rule above will stop: the epochs that fit
                    fit = math.floor((job.time_limit_s - (now - started) - self.end_s(pace)) / pace)
                    timed.replan(self._step, min(fit, job.max_epochs - self.epochs_run) * steps_per_epoch)

    return TrialCallback()


def _warm_start(model: Any, source: int, path: Path, wait_s: float) -> dict[str, Any]:
    """Set ``model``'s weights to those of trial ``source``'s kept model (the run's ``models/kept/``, :mod:`hpo.kept`),
    the same configuration: a final continues from where its search trial ended, on a new schedule (a warm restart),
    instead of from scratch. A source still ending (cut as the finals began: its evaluation and model file take a few
    seconds) is waited for, at most ``wait_s``. Returns the details' ``warm_start``; a model not kept by then, or one
    that does not fit, leaves the final to train from scratch (it is never lost to its warm start)."""
    from . import kept

    found = kept.kept_dir(path) / f"trial-{source}.keras"  # only the model: not ensemble.await_kept's .npz too
    began = time.perf_counter()
    while not found.exists() and time.perf_counter() - began < wait_s:
        time.sleep(0.1)
    record: dict[str, Any] = {"from_trial": source, "loaded": False, "waited_s": round(time.perf_counter() - began, 2)}
    if not found.exists():
        return {"warm_start": dict(record, why=f"its model was not kept within {wait_s:.0f} s")}
    import keras

    try:
        weights = keras.models.load_model(found, compile=False).get_weights()
        shapes = [tuple(w.shape) for w in weights]
        if shapes != [tuple(v.shape) for v in model.weights]:  # checked first: nothing is half-set
            raise ValueError(f"its {len(shapes)} weights do not fit this model's {len(model.weights)}")
        model.set_weights(weights)
    except Exception as exc:  # noqa: BLE001 - a file being replaced, another shape: the final trains from scratch
        return {"warm_start": dict(record, why=f"{type(exc).__name__}: {exc}"[:200])}
    return {"warm_start": dict(record, loaded=True)}


def _evaluate(model: Any, x: Any, y: Any, batch_size: int) -> dict[str, float | None]:
    values = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return {k: _finite(v) for k, v in values.items()}


def _load_data(job: TrialJob) -> Any:
    """The job's splits: a built-in dataset by name, or own data by URI, checked against its SHA-256 and against
    the description the job carries."""
    split_seed = job.seed if job.split_seed is None else job.split_seed
    if job.dataset != CUSTOM_DATASET:
        return datasets.load(job.dataset, options=job.dataset_options, validation_split=job.validation_split,
                             seed=split_seed, data_fraction=job.data_fraction)
    from .datasets.custom import load_custom

    data = load_custom(job.data_uri, job.data_sha256, validation_split=job.validation_split, seed=split_seed,
                       data_fraction=job.data_fraction)
    expected = job.dataset_info()
    got = data.info
    if (got.modality, tuple(got.input_shape), got.num_classes) != (expected.modality, expected.input_shape,
                                                                  expected.num_classes):
        raise DatasetError(f"the data at {job.data_uri} is {got.modality} {tuple(got.input_shape)} with "
                           f"{got.num_classes} classes, but the job describes {expected.modality} "
                           f"{expected.input_shape} with {expected.num_classes} classes")
    return data


def run_trial(job: TrialJob, on_epoch: EpochCallback | None = None, should_stop: StopCheck | None = None, *,
              save_model_to: str | None = None, devices: list[str] | None = None,
              executed_on: str | None = None) -> TrialResult:
    """Train ``job`` and return its result.

    ``on_epoch(epoch, metrics)`` is called after every epoch (1-based; metrics: loss, accuracy, val_loss,
    val_accuracy, learning_rate, elapsed_s). ``should_stop()`` is checked after every epoch and before every batch:
    training stops after the epoch, or the batch, in which it returns true
    (status ``stopped``); when ``should_stop.discard`` is then true (a prune, :class:`hpo.worker.StopFlag`) the test
    split is not evaluated (``test_metrics`` empty) and no predictions are kept.
    ``devices`` overrides device discovery (e.g. two logical CPUs, to exercise the MirroredStrategy path).
    ``save_model_to`` saves the best-epoch model as a ``.keras`` file.
    """
    started = time.perf_counter()
    where = executed_on or f"{socket.gethostname()} (pid {os.getpid()})"
    base = dict(trial_id=job.trial_id, executed_on=where)
    try:
        configure_tensorflow()
        import keras

        from . import models

        keras.utils.set_random_seed(job.seed)
        data = _load_data(job)
        info = data.info
        strategy, device = _strategy(job, devices)
        replicas = strategy.num_replicas_in_sync
        batch_size = int(job.params.get("batch_size", 64)) * replicas
        decay_steps, timed, steps_per_epoch = None, None, math.ceil(len(data.x_train) / batch_size)
        if job.lr_schedule == "cosine":
            horizon = job.schedule_epochs or job.max_epochs  # the run's fidelity, not this trial's leftover allowance
            decay_steps = horizon * steps_per_epoch
            if job.time_limit_s is not None and job.model is None and horizon == job.max_epochs:
                # a time limit may end training before max_epochs: the schedule follows the time (own models
                # compiled by the user keep theirs)
                timed, decay_steps = TimedCosine(float(job.params.get("learning_rate", 1e-3)), decay_steps), None
        if job.model is not None:  # the user's build function, compiled as the built-in models when it is not
            from .user_model import build_user_model

            model = build_user_model(job.model, dict(job.params), info.input_shape, info.num_classes,
                                     strategy=strategy, decay_steps=decay_steps)
        else:
            model = models.build_model(dict(job.params), modality=info.modality, input_shape=info.input_shape,
                                       num_classes=info.num_classes, vocab_size=info.vocab_size, strategy=strategy,
                                       decay_steps=decay_steps)
        evaluated = (len(data.x_val) + len(data.x_test)) / max(1, len(data.x_val))
        end_fixed, predicts = END_FIXED_S, bool(job.keep_predictions and save_model_to and job.model is None)
        warm = {}
        if predicts and job.warm_from is not None:  # a final: from its source's weights (waited for, briefly)
            wait_s = min(WARM_WAIT_S, WARM_WAIT_SHARE * job.time_limit_s) if job.time_limit_s else WARM_WAIT_S
            warm = _warm_start(model, job.warm_from, Path(save_model_to), wait_s)
        if predicts:  # the predictions kept (final_ensemble), and a final's ensemble loaded and saved
            end_fixed = END_FIXED_S + (ENSEMBLE_FIXED_S if job.ensemble > 1 else 0.0)
        callback = _make_callback(job, on_epoch, should_stop, started, timed, steps_per_epoch, evaluated, end_fixed)
        model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=job.max_epochs,
                  validation_data=(data.x_val, data.y_val), callbacks=[callback], shuffle=True, verbose=0)
        seconds = time.perf_counter() - started
        common = dict(base, history=callback.history, epochs_run=callback.epochs_run, device=device,
                      param_count=int(model.count_params()), train_seconds=seconds)
        if callback.non_finite:
            return TrialResult(status="failed", error=f"training diverged: {callback.non_finite}", **common)
        if callback.cut_in_epoch is not None and callback.cut_in_epoch["epoch"] == 1:
            # stopped before one whole epoch: a model of a few batches is nothing to keep (the run records it cut,
            # not complete), so neither evaluation nor model file
            return TrialResult(status="stopped", details={"cut_in_epoch": callback.cut_in_epoch}, **common)
        if callback.best_weights is None:
            return TrialResult(status="failed", error="no epoch finished with a validation accuracy", **common)
        model.set_weights(callback.best_weights)
        end = _EndClock(callback.reserved_s, job.time_limit_s, time.perf_counter() - started)
        eval_batch = max(batch_size, 256)
        # pruned (should_stop.discard, hpo.worker.StopFlag): never the answer nor an ensemble's member, so neither a
        # test evaluation (the test split is touched only by trials that count) nor predictions to keep
        discard = callback.stopped_on_request and getattr(should_stop, "discard", False) is True
        if predicts and not discard:  # one pass over each split: the metrics come from the predictions it keeps
            from .ensemble import finish, predict

            val_metrics, test_metrics, own = predict(model, data, eval_batch)
            end.lap("evaluate")
            alone = val_metrics
            until = started + (job.time_limit_s or 0.0) - ENSEMBLE_FIXED_S  # the other finals: waited for in time
            val_metrics, test_metrics, extra = finish(model, data, Path(save_model_to), own, members=job.ensemble,
                                                      val_metrics=val_metrics, test_metrics=test_metrics,
                                                      gather=job.gather, until=until)
            end.lap("ensemble")
        else:
            val_metrics = _evaluate(model, data.x_val, data.y_val, eval_batch)
            test_metrics = {} if discard else _evaluate(model, data.x_test, data.y_test, eval_batch)
            end.lap("evaluate")
            alone, extra = val_metrics, {}
            if save_model_to:
                model.save(save_model_to)
                end.lap("save")
        health_scores, details = {}, {}
        if job.compute_health and not callback.stopped_on_request:  # a stopped (pruned) trial is not scored
            from . import health

            health_scores, details = health.measure(
                model, history=callback.history, best_epoch=callback.best_epoch,
                val_accuracy=alone.get("accuracy"), num_classes=info.num_classes, x_val=data.x_val,
                x_train=data.x_train, y_train=data.y_train, param_count=common["param_count"])
            end.lap("health")
        details = dict(details, **extra, **warm, end_phase=end.summary())
        if callback.out_of_time:  # complete at fewer epochs than asked: the job's time limit (time_budget_minutes)
            details = dict(details, out_of_time=True)
        if callback.cut_in_epoch is not None:  # its last epoch was cut short (a stop request, the time limit)
            details = dict(details, cut_in_epoch=callback.cut_in_epoch)
        return TrialResult(status="stopped" if callback.stopped_on_request else "completed",
                           best_epoch=callback.best_epoch, val_metrics=val_metrics, test_metrics=test_metrics,
                           health=health_scores, details=details,
                           **dict(common, train_seconds=time.perf_counter() - started))
    except Exception as exc:  # noqa: BLE001 - one trial's failure never escapes as an exception
        # hpo's own checks (a user's model of the wrong shape, data that does not match the job) say everything in
        # their message; anything else shows where it was raised
        tail = "" if isinstance(exc, HPOError) else "\n" + "".join(traceback.format_exception(exc)[-3:]).strip()
        return TrialResult(status="failed", error=f"{type(exc).__name__}: {exc}{tail}"[:4000],
                           train_seconds=time.perf_counter() - started, **base)
    finally:
        if "keras" in sys.modules:
            sys.modules["keras"].backend.clear_session()  # also runs gc.collect()
        else:
            gc.collect()
