"""Search short, then train long: the final training of a time-budgeted run (``final_training_share``).

Under ``time_budget_minutes`` the run knows its horizon. Trials of the search phase train on the search's short
schedule (``max_epochs_per_trial``, pruned by Hyperband); once ``1 - final_training_share`` of the time for trials
has passed, the search stops and the best configurations found so far (one per worker, at most two; of two, one from
the start queue: :meth:`Finale.choose`) are trained again on a learning-rate schedule that spans the time left,
without early stopping or pruning: from scratch, or (``final_warm_start``, off by default: measured, it did not
raise the finals' validation accuracy) from the weights their search trial ended with, where the run keeps its model. Search
trials still running are stopped (:data:`FINAL_CUT`; local trainers after the batch in training, RunPod workers at
their epoch's end) and kept, complete at what they trained.

A final trial is an ordinary trial of the study (queued with its parameters; user attribute ``final_of``: the trial
whose configuration it trains again), so its result competes for the best model like any other: when a longer
schedule does not help, the search's best stays the best.

The final's model may be an ensemble (``final_ensemble``, :mod:`hpo.ensemble`): when the run keeps its best models
(local trainers, built-in models), every trial leaves its validation and test predictions beside its model file, the
search keeps the best completed ones (:class:`hpo.results.ModelFiles`), and a final averages itself with those of them
that raise its validation accuracy. With two workers the two finals train side by side: the one asked first ends
:data:`GATHER_S` seconds earlier, so that the last one finds it kept and may average it too (``TrialJob.gather``: it
waits for it, in time); the run's result may thus average both finals. (With one worker the final is not split in two
shorter ones: measured on validation, two halves averaged did not beat one long final: bench/final_split.py,
docs/bench/protocol-20261205-two-finals.md.)

Not used: without ``time_budget_minutes``, with ``mode=pareto`` (no single best) and in a shared study (``storage``:
each process would train its own finals of the same configurations).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from .budget import TimeBudget
from .config import OptimizationConfig
from .search_space import start_params

__all__ = ["Finale", "ensemble_size", "keeps_models", "FINAL_CUT", "FINAL_DROPPED", "FINAL_EPOCHS_MARGIN",
           "FINAL_LATE", "GATHER_S", "MAX_FINALS", "MIN_SEARCH_TRIALS", "ROOM_EPOCH"]

#: the cancel reason of a search trial still running when the final training begins
FINAL_CUT = "cut for the final training"
#: why a configuration still queued when the search ended (the default, an initial config, a portfolio member) never
#: trained: the finals are asked first, so these are rejected (not trials of the run, left out of its records)
FINAL_DROPPED = "dropped: the final training began before it started"
#: the reason of a search trial that ended after the configurations to train again were chosen (it was not considered)
FINAL_LATE = "ended after the final training was chosen"
#: the most configurations trained again (one per worker)
MAX_FINALS = 2
#: finals side by side that may average: each but the last asked ends its training this many seconds before the last
#: one does (its end: evaluation, predictions, its own ensemble, its record), so that the last one averages it too
GATHER_S = 5.0
#: the search phase must have room for this many trials of max_epochs_per_trial, else the final begins at once
MIN_SEARCH_TRIALS = 3
#: the room for a search is judged at the first trial's epoch ROOM_EPOCH, from the faster of its epochs measured by
#: then: one epoch alone, slowed beside another trial's start, judged a 3T run to have no room (seed 3 twice)
ROOM_EPOCH = 3
#: a final's job asks this many times the epochs estimated to fit (:meth:`Finale.epochs`): its time limit ends it, and
#: its trainer re-aims the cosine at the epochs that fit (built-in models), so asking too many costs nothing, while an
#: estimate from slow measured epochs (the first trial beside another's start) left finals done 15-20 % of T early
FINAL_EPOCHS_MARGIN = 1.5


def _keeps(config: OptimizationConfig) -> bool:
    """Whether finals may read the run's kept models: built-in models only (a user's build function may hold layers a
    combined model could not save), local trainers only (a RunPod worker's model stays on the worker); pareto and
    shared studies have no finals."""
    return not (config.time_budget_minutes is None or config.final_training_share <= 0 or config.model is not None
                or config.use_runpod_service or config.mode == "pareto" or config.storage is not None)


def ensemble_size(config: OptimizationConfig) -> int:
    """The most models a final's ensemble averages under ``config`` (1: no ensemble)."""
    return config.final_ensemble if _keeps(config) else 1


def keeps_models(config: OptimizationConfig) -> bool:
    """Whether the run keeps its best trials' models for its finals: to average them (``final_ensemble``) or to start
    a final from its source trial's weights (``final_warm_start``)."""
    return _keeps(config) and (config.final_ensemble > 1 or config.final_warm_start)


class Finale:
    """When the final training begins, what it trains and for how many epochs (thread-safe)."""

    def __init__(self, config: OptimizationConfig, budget: TimeBudget) -> None:
        share = config.final_training_share
        self.active = bool(budget.active and share > 0 and config.mode != "pareto" and config.storage is None)
        self.begins_at = (budget.started + (1 - share) * (budget.end_by - budget.started)  # type: ignore[operator]
                          if self.active else None)
        self.count = min(MAX_FINALS, config.concurrent_workers)
        #: models a final may average (1: none); trials then keep their predictions for it
        self.ensemble = ensemble_size(config) if self.active else 1
        #: trials keep their predictions and models for the finals; a final starts from its source's weights
        self.keep = self.active and keeps_models(config)
        self.warm = self.keep and config.final_warm_start
        self._budget = budget
        self._min_epochs = config.min_epochs_per_trial
        # a user's model compiled with a step-based cosine would end its training before its rate reached 0: no margin
        self._margin = 1.0 if config.model is not None and config.lr_schedule == "cosine" else FINAL_EPOCHS_MARGIN
        self.begun = False
        #: final trials queued and not asked yet; the epochs of those asked, by trial number
        self.pending = 0
        self._sources: list[int] = []  # the source trials of the finals still pending
        self.epochs_of: dict[int, int] = {}
        self._source_of: dict[int, int] = {}  # final -> the trial whose configuration it trains again
        self._gather: dict[int, list[int]] = {}  # the last final asked (of several that average) -> the others
        self._early: set[int] = set()  # the others: they end GATHER_S earlier
        self._elapsed: dict[int, dict[int, float]] = {}  # trial -> epoch -> seconds of training at its end
        self._train_seconds: dict[int, float] = {}  # trial -> seconds from start to answer
        self._room_checked = False
        #: (the search's trial, the start queue's trial in its place) when :meth:`choose` replaced one
        self.replaced: tuple[int, int] | None = None
        self._notes: list[str] = []
        self._lock = threading.Lock()

    # -- what the trials measured ---------------------------------------------------------------------------------
    def note_epoch(self, number: int, epoch: int, elapsed_s: float | None) -> None:
        if self.active and elapsed_s is not None:
            with self._lock:
                self._elapsed.setdefault(number, {})[int(epoch)] = float(elapsed_s)

    def note_result(self, number: int, train_seconds: float | None) -> None:
        if self.active and train_seconds:
            with self._lock:
                self._train_seconds[number] = float(train_seconds)

    def timing(self, number: int) -> tuple[float, float] | None:
        """(seconds per epoch, seconds outside the epochs: data, model, evaluation) trial ``number`` measured. An
        epoch's time is the fastest of its epochs (the first ones are slower: tracing, caches), the rest is overhead."""
        with self._lock:
            marks = sorted(self._elapsed.get(number, {}).items())
            total = self._train_seconds.get(number)
        if not marks:
            return None
        (e0, t0), (e1, t1) = marks[0], marks[-1]
        steps = [(tb - ta) / (eb - ea) for (ea, ta), (eb, tb) in zip(marks, marks[1:]) if eb > ea]
        per_epoch = min(steps) if steps else t1 / e1
        if total is None:  # still running: an evaluation to come (elapsed_s counts from the trainer's start)
            total = t1 + 0.5 * per_epoch
        overhead = max(0.0, total - t1) + max(0.0, t0 - e0 * per_epoch)
        return max(per_epoch, 1e-3), overhead

    # -- the switch -------------------------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> bool:
        """Whether the search phase is over and the finals are not chosen yet."""
        now = time.monotonic() if now is None else now
        return self.active and not self.begun and now >= self.begins_at  # type: ignore[operator]

    def no_room(self, number: int, epoch: int, max_epochs: int) -> bool:
        """Checked once, at the first trial's epoch :data:`ROOM_EPOCH` (or its last, when it has fewer, but at least
        its second: an epoch's time is then measured, the faster of those measured counts): True when the search
        phase has no room for :data:`MIN_SEARCH_TRIALS` trials of ``max_epochs`` on each worker (all workers together
        was tried and not kept: docs/bench/protocol-20261205-start-up.md); the final training of that trial's
        configuration then begins at once (a budget that fits a few epochs is best spent on one long schedule)."""
        if not self.active or self.begun or epoch < max(2, min(ROOM_EPOCH, max_epochs)):
            return False
        with self._lock:
            if self._room_checked:
                return False
            self._room_checked = True
        timing = self.timing(number)
        search_s = self.begins_at - time.monotonic()  # type: ignore[operator]
        return timing is not None and search_s < MIN_SEARCH_TRIALS * max_epochs * timing[0]

    def choose(self, trials: list[Any]) -> list[tuple[int, dict[str, Any]]]:
        """The configurations to train again: the best completed trials by value (maximized), distinct parameters,
        at most :attr:`count`; each as (its trial number, its parameters). With two or more, one is always from the
        start queue (:data:`hpo.search_space.START_ATTRS`: the default, an initial configuration, a portfolio member):
        when the best ones by value are all the search's own, the best of the start queue takes the last place (a
        ranking after a few epochs is noisy: a known-strong configuration ranked below the search's pick and trained
        long beside it validated above it in 6 of 9 Fashion-MNIST runs at 3T, mean +0.6 pp, though in 1 of 4 on
        MNIST-1D at T; measured: docs/bench/protocol-20261205-prior.md); :attr:`replaced` then says which. Fewer
        distinct ones than :attr:`count` (workers): the best fills the rest (each final has its own seed), so no
        worker idles through the final."""
        done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and t.params
                and "final_of" not in t.user_attrs]
        start = start_params(trials)
        picks: list[Any] = []
        for t in sorted(done, key=lambda t: (-t.value, t.number)):
            if all(t.params != p.params for p in picks):
                picks.append(t)
            if len(picks) >= self.count and (self.count == 1 or any(p.params in start for p in picks)):
                break  # the best ones and the start queue's best are known
        chosen = picks[:self.count]
        known = [t for t in picks if t.params in start]
        if self.count > 1 and known and not any(t.params in start for t in chosen):
            self.replaced = (chosen[-1].number, known[0].number)
            chosen[-1] = known[0]
        out = [(t.number, dict(t.params)) for t in chosen]
        return out + out[:1] * (self.count - len(out))

    def reason(self, trial: Any, cancel_reason: str | None, out_of_time: bool) -> str | None:
        """Why a completed trial's value is qualified: cut for the final training (``FINAL_CUT``) or by the time budget
        at an epoch's end, or a search trial that ended after the final training was chosen (``FINAL_LATE``: it was
        not considered); None when it trained as asked."""
        if out_of_time:
            return FINAL_CUT if cancel_reason == FINAL_CUT else "time_budget_minutes"
        return FINAL_LATE if self.begun and "final_of" not in trial.user_attrs else None

    def epochs(self, source: int) -> int:
        """Epochs a final of trial ``source``'s configuration can train in the time left now, at the
        seconds per epoch and the overhead ``source`` measured (the job asks :data:`FINAL_EPOCHS_MARGIN` times as
        many, :meth:`asked`: counting too few leaves the end of the budget unused)."""
        left = self._budget.time_left() or 0.0
        timing = self.timing(source)
        if timing is None:
            return self._min_epochs
        per_epoch, overhead = timing
        return max(self._min_epochs, math.floor((left - overhead) / per_epoch))

    def queue(self, study: Any, notes: list[str], source: int | None = None) -> list[int] | None:
        """The search phase is over: the best configurations (:meth:`choose`) are queued in ``study`` to train again,
        each only if the time left is enough to train longer than it did; their source trials' numbers. None: no
        trial completed yet (asked again later); [] when none would train longer (the final training is off and the
        search goes on). ``source``: the running trial whose configuration to train (no room for a search,
        :meth:`no_room`). A final's epochs are counted when it is asked (:meth:`asked`), from the time left then."""
        trials = study.get_trials(deepcopy=False)
        # no room for a search: the first configuration once per worker (each trial has its own seed), the better kept
        chosen = [(source, dict(trials[source].params))] * self.count if source is not None else self.choose(trials)
        if not chosen:
            return None
        trained = {t.number: int(t.user_attrs.get("epochs_trained", 0)) for t in trials}
        plan = [(n, p) for n, p in chosen if self.epochs(n) > trained.get(n, 0)]
        for number, params in plan:
            study.enqueue_trial(params, user_attrs={"final_of": number}, skip_if_exists=False)
        if source is None and self.replaced is not None and self.replaced[1] in [n for n, _ in plan]:
            notes.append(f"final training: trial {self.replaced[1]} (the start queue's best) is trained again in place "
                         f"of trial {self.replaced[0]}, the search's second best: of two finals one is from the start "
                         "queue")
        with self._lock:
            self.begun, self.pending, self.active, self._notes = bool(plan), len(plan), bool(plan), notes
            self._sources = [n for n, _ in plan]
        if not plan:
            notes.append("final training: none, too little time left to train longer than the search did")
        return [n for n, _ in plan]

    def asked(self, number: int, source: int) -> int:
        """Final trial ``number`` (of trial ``source``'s configuration) starts: the epochs its job asks, from the time
        left now (:data:`FINAL_EPOCHS_MARGIN` times those estimated to fit; its time limit ends it)."""
        fit = self.epochs(source)
        epochs = math.ceil(fit * self._margin)  # the margin is >= 1
        per_epoch, overhead = self.timing(source) or (0.0, 0.0)
        with self._lock:
            self.epochs_of[number], self._source_of[number] = epochs, source
            self.pending = max(0, self.pending - 1)
            if source in self._sources:
                self._sources.remove(source)
            if self.ensemble > 1 and self.pending > 0:  # another final comes: it will average this one
                self._early.add(number)
            elif self.ensemble > 1 and len(self.epochs_of) > 1:
                self._gather[number] = sorted(n for n in self.epochs_of if n != number)
            self._notes.append(f"final training: trial {number} trains trial {source}'s configuration again"
                               f"{' from its weights' if self.warm else ''} for {epochs} epochs at most, until its "
                               f"time limit ({fit} fit in the {(self._budget.time_left() or 0):.0f} s left at the "
                               f"{per_epoch:.2f} s per epoch + {overhead:.1f} s trial {source} measured)")
        return epochs

    def final_fits(self, left: float) -> bool | None:
        """Whether a final still pending fits in ``left`` seconds: ``min_epochs_per_trial`` epochs and half an epoch
        more at the pace, plus the overhead, its source trial measured (:meth:`timing`); None when no final is pending
        (the budget's own rule, :meth:`hpo.budget.TimeBudget.fits`, applies). The budget's rule takes the median
        seconds per epoch of every trial so far, all its overhead included: after search trials cut at their first,
        slow epoch (a larger model, its tracing) it judged both finals of a Fashion-MNIST run not to fit in 38 s where
        their configuration's epochs took about 10 s, and the run ended with its search trials."""
        with self._lock:
            sources = list(self._sources) if self.begun and self.pending > 0 else []
        timings = [t for t in map(self.timing, sources) if t is not None]
        if not sources:
            return None
        need = min((per_epoch * (self._min_epochs + 0.5) + overhead for per_epoch, overhead in timings), default=0.0)
        return left > max(need, 1.0)

    def is_final(self, number: int) -> bool:
        """Whether trial ``number`` is a final (asked as one, :meth:`asked`)."""
        with self._lock:
            return number in self.epochs_of

    def job_fields(self, number: int) -> dict[str, Any]:
        """What trial ``number``'s job carries for the finals: keep its predictions (and model); a final: average,
        start from its source trial's weights (``final_warm_start``); the last final of several: the others, to
        wait for."""
        if not self.keep:
            return {}
        with self._lock:
            final, source = number in self.epochs_of, self._source_of.get(number)
            gather = list(self._gather.get(number, []))
        return {"keep_predictions": True, "ensemble": self.ensemble if final else 0, "gather": gather,
                **({"warm_from": source} if self.warm and source is not None else {})}

    def time_limit(self, number: int, left: float | None) -> float | None:
        """The seconds trial ``number`` may use when ``left`` are left (None: no budget): a final that another will
        average (one asked before the last of several) ends :data:`GATHER_S` earlier."""
        with self._lock:
            early = number in self._early
        return left - GATHER_S if early and left is not None else left

    @property
    def closed(self) -> bool:
        """No trial may start any more: the finals are all asked."""
        return self.begun and self.pending == 0
