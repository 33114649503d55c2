"""epoch_budget (total training epochs of a run) and warm_start (the first trial trains the space's defaults)."""

import io
import threading
import time

import optuna
import pytest

import hpo
from hpo import search_space
from hpo.backends import Backend
from hpo.progress import LineLog, ProgressTracker, estimate_eta_epochs
from hpo.protocol import EpochReport, TrialResult

FAST = dict(quiet=True, plot_generation="none")


class Epochs(Backend):
    """A fake trainer that reports one epoch at a time and honours cancellation (pruning) after an epoch.

    Val accuracy after epoch e: a known function of the params that rises with e. A trial whose accuracy stops
    rising for ``patience`` epochs stops early (like the real trainer): odd-numbered trials plateau at epoch 2, so
    they end early and give epochs back to the budget.
    """

    name = "epochs"

    def __init__(self, delay: float = 0.0, seconds_per_epoch=None):
        self.seconds_per_epoch = seconds_per_epoch  # params -> simulated training seconds per epoch
        self.jobs = []
        self.trained = {}
        self.delay = delay
        self.lock = threading.Lock()

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        with self.lock:
            self.jobs.append(job)
        base = 0.3 + 0.1 * job.params["conv_blocks"] - job.params["dropout"] / 10
        history, best, best_epoch, epochs = [], -1.0, 0, 0
        for epoch in range(1, job.max_epochs + 1):
            time.sleep(self.delay)
            plateau = 2 if int(job.trial_id.rsplit("#", 1)[1]) % 2 else job.max_epochs
            acc = base + 0.02 * min(epoch, plateau)
            history.append(acc)
            epochs = epoch
            if acc > best:
                best, best_epoch = acc, epoch
            if on_epoch:
                metrics = {"val_accuracy": acc}
                if self.seconds_per_epoch is not None:
                    metrics["elapsed_s"] = self.seconds_per_epoch(job.params) * epoch
                on_epoch(EpochReport(trial_id=job.trial_id, epoch=epoch, metrics=metrics))
            if cancel is not None and cancel.cancelled:
                break
            if epoch >= job.min_epochs and epoch - best_epoch >= job.patience:
                break
        self.trained[job.trial_id] = epochs
        status = "stopped" if cancel is not None and cancel.cancelled else "completed"
        return TrialResult(trial_id=job.trial_id, status=status, epochs_run=epochs, best_epoch=best_epoch,
                           val_metrics={"accuracy": best}, test_metrics={"accuracy": best - 0.01},
                           executed_on="fake", history={"val_accuracy": history})


def _study(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name / 'study.db'}")


@pytest.mark.parametrize("workers", [1, 3])
def test_epoch_budget_is_never_exceeded_and_savings_buy_more_trials(tmp_path, workers):
    backend = Epochs(delay=0.01)
    result = hpo.optimize(dataset="synthetic_images", epoch_budget=20, trials=100, max_epochs_per_trial=6,
                          early_stopping_patience=1, pruner="none", concurrent_workers=workers,
                          output_dir=str(tmp_path), run_name="b", backend=backend, **FAST)
    trained = sum(backend.trained.values())
    assert trained == 20  # spent exactly, never more
    assert sum(t["epochs"] or 0 for t in result.trials) == 20  # and the run's records agree
    assert "epoch_budget=20 spent" in result.stop_reason and not result.aborted
    # epochs saved by early stopping went to more trials than 20 // 6 full-length ones
    assert len(backend.jobs) > 20 // 6 + 1
    assert any(n < 6 for n in backend.trained.values())
    # no job was ever granted more epochs than the budget had left
    assert all(j.max_epochs <= 6 for j in backend.jobs)
    study = _study(tmp_path, "b")
    assert sum(t.user_attrs.get("epochs_trained", 0) for t in study.trials) == 20


def test_pruned_trials_give_their_epochs_back(tmp_path):
    backend = Epochs()
    result = hpo.optimize(dataset="synthetic_images", epoch_budget=30, trials=100, max_epochs_per_trial=9,
                          pruner="median", sampler="random", output_dir=str(tmp_path), run_name="p",
                          portfolio_size=1, backend=backend, **FAST)  # the default, then the sampler
    assert sum(backend.trained.values()) == 30
    assert result.pruned >= 1
    assert len(backend.jobs) > 30 // 9 + 1


def test_the_last_trial_gets_only_the_epochs_that_remain(tmp_path):
    backend = Epochs()
    # no trials given: the budget alone decides how many trials run
    hpo.optimize(dataset="synthetic_images", epoch_budget=10, max_epochs_per_trial=4, pruner="none",
                 early_stopping_patience=10, output_dir=str(tmp_path), run_name="tail",
                 backend=backend, **FAST)
    assert [j.max_epochs for j in backend.jobs] == [4, 4, 2]
    assert sum(backend.trained.values()) == 10


def test_a_resumed_run_counts_the_epochs_already_trained(tmp_path):
    backend = Epochs()
    first = hpo.optimize(dataset="synthetic_images", epoch_budget=100, trials=2, max_epochs_per_trial=3,
                         pruner="none", early_stopping_patience=10, output_dir=str(tmp_path), run_name="r", backend=backend,
                         **FAST)
    assert first.completed == 2 and sum(backend.trained.values()) == 6
    second = hpo.optimize(dataset="synthetic_images", epoch_budget=10, trials=100, max_epochs_per_trial=3,
                          pruner="none", early_stopping_patience=10, output_dir=str(tmp_path), run_name="r", backend=backend,
                          **FAST)
    assert sum(backend.trained.values()) == 10  # 6 before + 4 in the resumed run
    assert "epoch_budget=10 spent" in second.stop_reason
    assert [j.max_epochs for j in backend.jobs[2:]] == [3, 1]


def test_a_spent_budget_starts_nothing(tmp_path):
    backend = Epochs()
    hpo.optimize(dataset="synthetic_images", epoch_budget=4, trials=100, max_epochs_per_trial=2, pruner="none",
                 early_stopping_patience=10, output_dir=str(tmp_path), run_name="s", backend=backend, **FAST)
    assert len(backend.jobs) == 2
    again = hpo.optimize(dataset="synthetic_images", epoch_budget=4, trials=100, max_epochs_per_trial=2,
                         pruner="none", output_dir=str(tmp_path), run_name="s", backend=backend, **FAST)
    assert len(backend.jobs) == 2 and again.completed == 2


def test_budget_must_be_positive_and_fit_a_trial():
    with pytest.raises(hpo.ConfigError, match="epoch_budget=0 is out of range"):
        hpo.OptimizationConfig(dataset="synthetic_images", epoch_budget=0)
    with pytest.raises(hpo.ConfigError, match="epoch_budget=2 is below min_epochs_per_trial=3"):
        hpo.OptimizationConfig(dataset="synthetic_images", epoch_budget=2, min_epochs_per_trial=3)


def test_how_many_trials_a_run_may_train():
    config = hpo.OptimizationConfig
    assert config(dataset="synthetic_images").trial_limit == 20
    assert config(dataset="synthetic_images", epoch_budget=30).trial_limit == 30  # each trial trains >= 1 epoch
    assert config(dataset="synthetic_images", epoch_budget=30, trials=4).trial_limit == 4


def test_the_report_shows_epochs_against_the_budget(tmp_path):
    hpo.optimize(dataset="synthetic_images", epoch_budget=5, max_epochs_per_trial=2, pruner="none",
                 early_stopping_patience=10, output_dir=str(tmp_path), run_name="rep", backend=Epochs(), quiet=True,
                 plot_generation="best")
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "epochs / budget" in html and "5 / 5" in html


# -- warm start ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality,dataset,shape", [("image", "synthetic_images", (16, 16, 3)),
                                                    ("text", "synthetic_text", None)])
def test_the_first_trial_trains_the_spaces_defaults(tmp_path, modality, dataset, shape):
    backend = Epochs()
    hpo.optimize(dataset=dataset, trials=3, pruner="none", output_dir=str(tmp_path), run_name="w",
                 backend=backend, **FAST)
    expected = search_space.default_params(modality, input_shape=shape)
    assert backend.jobs[0].params == expected
    assert all(j.params != expected for j in backend.jobs[1:])  # then the sampler takes over
    assert _study(tmp_path, "w").trials[0].user_attrs["warm_start"] is True


def test_warm_start_applies_pins_and_can_be_turned_off(tmp_path):
    backend = Epochs()
    hpo.optimize(dataset="synthetic_images", trials=2, optimizer="sgd", conv_blocks=1, output_dir=str(tmp_path),
                 run_name="pins", backend=backend, **FAST)
    first = backend.jobs[0].params
    assert first == search_space.default_params("image", {"optimizer": "sgd", "conv_blocks": 1}, (16, 16, 3))
    assert first["optimizer"] == "sgd" and first["conv_blocks"] == 1 and first["learning_rate"] == 1e-3

    off = Epochs()
    hpo.optimize(dataset="synthetic_images", trials=2, warm_start=False, output_dir=str(tmp_path), run_name="off",
                 backend=off, **FAST)
    assert off.jobs[0].params != search_space.default_params("image", input_shape=(16, 16, 3))
    assert "warm_start" not in _study(tmp_path, "off").trials[0].user_attrs


def test_a_resumed_run_does_not_train_the_defaults_again(tmp_path):
    backend = Epochs()
    hpo.optimize(dataset="synthetic_images", trials=1, output_dir=str(tmp_path), run_name="again", backend=backend,
                 **FAST)
    hpo.optimize(dataset="synthetic_images", trials=3, output_dir=str(tmp_path), run_name="again", backend=backend,
                 **FAST)
    defaults = search_space.default_params("image", input_shape=(16, 16, 3))
    assert [j.params == defaults for j in backend.jobs] == [True, False, False]


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_defaults_are_inside_the_space_and_fit_the_input(shape):
    params = search_space.default_params("image", input_shape=shape)
    assert params["conv_blocks"] <= search_space.max_conv_blocks(shape)
    for p in search_space.CNN_SPACE:
        if p.name in params:
            assert search_space.coerce_pin(p, params[p.name], shape) == params[p.name]
    text = search_space.default_params("text")
    assert set(text) == {p.name for p in search_space.LSTM_SPACE}
    no_head = search_space.default_params("image", {"dense_layers": 0}, shape)
    assert "dense_units" not in no_head  # inactive without dense layers, as the sampler leaves it out


# -- progress with an epoch budget ----------------------------------------------------------------------------------

def test_eta_counts_epochs_when_there_is_a_budget():
    assert estimate_eta_epochs(budget=30, epochs_done=10, trial_seconds=40.0, trial_epochs=10,
                               concurrency=2) == pytest.approx(20 * 4.0 / 2)
    assert estimate_eta_epochs(budget=30, epochs_done=0, trial_seconds=0.0, trial_epochs=0, concurrency=1) is None
    assert estimate_eta_epochs(budget=30, epochs_done=30, trial_seconds=9.0, trial_epochs=3, concurrency=1) == 0.0

    t = [0.0]
    tracker = ProgressTracker(3, epoch_budget=12, epochs_before=2, clock=lambda: t[0])
    tracker.trial_started(0, max_epochs=5)
    t[0] = 6.0
    tracker.epoch(0, 3, {"val_accuracy": 0.5})
    snap = tracker.snapshot()
    assert snap["epochs"] == 5 and snap["epoch_budget"] == 12
    assert snap["eta_s"] == pytest.approx((12 - 5) * 6.0 / 3)
    stream = io.StringIO()
    tracker.listeners.append(LineLog(stream=stream))
    for n in (1, 2, 3):  # more trials than the estimate: the total follows, done never exceeds it
        tracker.trial_started(n, max_epochs=1)
        tracker.trial_finished(n, "completed", value=0.5)
    tracker.trial_finished(0, "completed", value=0.6)
    snap = tracker.snapshot()
    assert snap["done"] == 4 and snap["total"] == 4
    assert "epochs 5/12" in stream.getvalue().splitlines()[-1]


def test_hyperband_runs_are_guarded_against_hopeless_trials(tmp_path):
    """With the fake trainer, conv_blocks decides accuracy (0.1 per block): a 1-block trial is far behind a 4-block
    one (0.4 + ... vs 0.7 + ...), so once a strong trial exists every weak one is pruned after its first epoch."""
    backend = Epochs()
    result = hpo.optimize(dataset="synthetic_images", trials=10, max_epochs_per_trial=5, pruner="hyperband",
                          prune_below_best=0.15, sampler="random", output_dir=str(tmp_path), run_name="g",
                          backend=backend, **FAST)
    study = _study(tmp_path, "g")
    far = [t for t in result.trials if "far behind" in (t["reason"] or "")]
    assert far, [(t["number"], t["state"], t["epochs"], t["reason"]) for t in result.trials]
    for record in far:
        assert record["state"] == "pruned" and record["epochs"] < 5
        trial = next(t for t in study.trials if t.number == record["number"])
        step = trial.last_step
        best_other = max(t.intermediate_values.get(step, -1) for t in study.trials if t.number != trial.number)
        assert trial.intermediate_values[step] < 0.85 * best_other


def test_slow_configurations_are_judged_in_training_time_too(tmp_path):
    """Simulated clock: configs with dropout > 0.25 take 12x the epoch time. With conv_blocks pinned every trial is
    within the margin per epoch, but after 48 s a slow trial has trained one epoch while the fast first trial had
    trained ten: far behind in time, so it is pruned."""
    backend = Epochs(seconds_per_epoch=lambda p: 48.0 if p["dropout"] > 0.25 else 4.0)
    result = hpo.optimize(dataset="synthetic_images", trials=10, max_epochs_per_trial=10, pruner="median",
                          prune_below_best=0.15, prune_behind_in_time=0.15, early_stopping_patience=10,
                          conv_blocks=2, sampler="random",
                          output_dir=str(tmp_path), run_name="t", backend=backend, **FAST)
    in_time = [t for t in result.trials if "far behind in time" in (t["reason"] or "")]
    assert in_time, [(t["number"], t["state"], t["epochs"], t["reason"]) for t in result.trials]
    for t in in_time:
        assert t["params"]["dropout"] > 0.25 and t["state"] == "pruned" and t["epochs"] == 1
    assert not any("in time" in (t["reason"] or "") for t in result.trials if t["params"]["dropout"] <= 0.25)


def test_a_trial_is_never_pruned_at_its_last_epoch(tmp_path):
    """As above, but every trial has 2 epochs and is judged from epoch 2 on, with a margin (1 %) that the slow
    configurations miss at epoch 2 (a higher dropout gives a lower value): that is their last epoch, they have
    trained everything, so they complete instead of being pruned (pruning would only discard a finished result)."""
    backend = Epochs(seconds_per_epoch=lambda p: 48.0 if p["dropout"] > 0.25 else 4.0)
    result = hpo.optimize(dataset="synthetic_images", trials=10, max_epochs_per_trial=2, min_epochs_per_trial=2,
                          pruner="median", prune_below_best=0.01, prune_behind_in_time=0.01,
                          early_stopping_patience=2, conv_blocks=2, sampler="random",
                          output_dir=str(tmp_path), run_name="last", backend=backend, **FAST)
    slow = [t for t in result.trials if t["params"]["dropout"] > 0.25]
    fast = [t for t in result.trials if t["params"]["dropout"] <= 0.25]
    assert slow and fast and min(t["number"] for t in fast) < max(t["number"] for t in slow)  # judged against one
    assert result.pruned == 0 and result.completed == 10, [(t["number"], t["reason"]) for t in result.trials]
    assert all(t["state"] == "complete" and t["epochs"] == 2 for t in result.trials)


@pytest.mark.parametrize("budget, workers, min_epochs, expected", [
    (None, 1, 1, 10), (None, 4, 12, 12),  # no budget: 10 (or min_epochs_per_trial)
    (36, 1, 1, 18), (36, 2, 1, 18),  # half the budget
    (36, 3, 1, 12), (36, 4, 1, 10), (200, 8, 1, 25),  # a worker's share
    (10, 2, 1, 10), (1000, 2, 1, 50), (1000, 8, 1, 50)])  # at least 10, at most 50
def test_max_epochs_per_trial_follows_the_budget_when_not_given(budget, workers, min_epochs, expected):
    from hpo.config import OptimizationConfig, default_max_epochs

    assert default_max_epochs(budget, workers, min_epochs) == expected
    config = OptimizationConfig(dataset="synthetic_images", epoch_budget=budget, concurrent_workers=workers,
                                min_epochs_per_trial=min_epochs)
    assert config.max_epochs_per_trial == expected
    assert config.to_dict()["max_epochs_per_trial"] == expected  # the run folder records what was used
    given = OptimizationConfig(dataset="synthetic_images", epoch_budget=budget, concurrent_workers=workers,
                               max_epochs_per_trial=13)
    assert given.max_epochs_per_trial == 13  # a given value is never overridden


@pytest.mark.parametrize("budget, jobs", [(20, [9, 9]), (21, [9, 9, 3])])
def test_no_trial_starts_with_fewer_than_a_third_of_max_epochs(tmp_path, budget, jobs):
    """2 epochs left of 20 after two 9-epoch trials: a 2-epoch trial could not compete, so none starts; with 21 the
    third trial gets the 3 that remain (a third of 9)."""
    backend = Epochs()
    result = hpo.optimize(dataset="synthetic_images", epoch_budget=budget, max_epochs_per_trial=9, pruner="none",
                          early_stopping_patience=10, output_dir=str(tmp_path), run_name="third", backend=backend,
                          **FAST)
    assert [j.max_epochs for j in backend.jobs] == jobs
    assert sum(backend.trained.values()) == sum(jobs)
    if sum(jobs) < budget:
        assert result.stop_reason == (f"epoch_budget={budget} used up: 18 epochs trained, the 2 left are fewer "
                                      "than a trial is started with (3)")
    else:
        assert result.stop_reason == f"epoch_budget={budget} spent ({budget} epochs trained)"


class SlowWarmStart(Epochs):
    """The warm-start trial (#0) trains only once two other trials have ended (or after 30 s); the others train
    quickly. Waiting on events, not on a fixed sleep, keeps the test independent of the machine's speed."""

    def __init__(self):
        super().__init__(delay=0.02)
        self.events = []  # ("start", number) / ("end", number), in order
        self.changed = threading.Condition(self.lock)

    def _others_ended(self):
        return sum(1 for kind, n in self.events if kind == "end" and n != 0)

    def run(self, job, **kwargs):
        number = int(job.trial_id.rsplit("#", 1)[1])
        with self.changed:
            self.events.append(("start", number))
            if number == 0:
                self.changed.wait_for(lambda: self._others_ended() >= 2, timeout=30)
        try:
            return super().run(job, **kwargs)
        finally:
            with self.changed:
                self.events.append(("end", number))
                self.changed.notify_all()


def test_trials_started_while_the_warm_start_trains_are_its_neighbours(tmp_path):
    """Neighbours are decided when a trial is asked for, under the orchestrator's lock; the backend only sees when
    it is started. So: every trial started while the default trains is a neighbour; the neighbours are the trials
    asked before its result was in (a run of consecutive numbers after it); after its end at most one trial per
    other worker (asked before, started after) is still a neighbour, and the sampler picks the rest."""
    workers = 2
    backend = SlowWarmStart()
    hpo.optimize(dataset="synthetic_images", trials=16, max_epochs_per_trial=3, pruner="none", portfolio_size=1,
                 concurrent_workers=workers, output_dir=str(tmp_path), run_name="n", backend=backend, **FAST)
    ended = backend.events.index(("end", 0))
    during = {n for kind, n in backend.events[:ended] if kind == "start"} - {0}
    after = {n for kind, n in backend.events[ended:] if kind == "start"}
    assert len(during) >= 2 and after, backend.events
    study = _study(tmp_path, "n")
    default = search_space.DEFAULTS["image"]
    neighbours = {t.number for t in study.trials if t.user_attrs.get("near_default")}
    assert during <= neighbours, (during, neighbours)
    assert neighbours == set(range(1, max(neighbours) + 1)), neighbours  # asked in a row, right after the default
    assert len(neighbours & after) <= workers - 1, (neighbours, backend.events)
    assert after - neighbours  # once the default's result is in, the sampler takes over
    for t in study.trials:
        if t.number in neighbours:
            changed = {k for k, v in t.params.items() if v != default[k]}
            assert len(changed) <= 2, (t.number, changed)
    # every queued neighbour was trained: none is left waiting in the study
    assert not [t.number for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    # the neighbours are not all the same configuration
    assert len({tuple(sorted(t.params.items())) for t in study.trials if t.number in neighbours}) >= 2


def test_no_neighbours_of_a_default_that_max_params_rejects(tmp_path):
    """The default CNN on synthetic_images has 23,876 parameters: with max_params below that the warm-start trial is
    rejected before training, and the sampler, not neighbours of a configuration never trained, picks what follows."""
    backend = Epochs()
    hpo.optimize(dataset="synthetic_images", trials=4, max_params=23_000, pruner="none", sampler="random",
                 output_dir=str(tmp_path), run_name="big", backend=backend, **FAST)
    study = _study(tmp_path, "big")
    assert study.trials[0].user_attrs["warm_start"] and study.trials[0].user_attrs["rejected"]
    assert backend.jobs and not [t.number for t in study.trials if t.user_attrs.get("near_default")]
