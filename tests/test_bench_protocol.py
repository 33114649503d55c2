"""The benchmark protocol's statistics and bookkeeping (bench/protocol_lib), on constructed data: no training.

Shown here: the paired bootstrap interval on data whose answer is known (examples and seeds both resampled, fixed
seed), the best-so-far curve, the mean rank with ties, the model tested at T/4 being the one that was best *then*
(not a later, better one), the report's search gain and ranks, the time guard, and how hpo's budget option is found.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, bench_modules


@pytest.fixture(scope="module")
def lib(request):
    """The bench/protocol_lib package (bench/ is not installed: imported from its folder)."""
    names = ("stats", "evaluate", "report", "record", "hpo_method", "settings", "controlled")
    return dict(zip(names, bench_modules(request, *(f"protocol_lib.{name}" for name in names))))


def trial(n, end_s, val, candidate=True, model=None):
    return {"n": n, "end_s": end_s, "val": val, "candidate": candidate, "model": model or f"m{n}"}


# -- paired bootstrap ---------------------------------------------------------------------------------------------------

def test_bootstrap_of_identical_and_opposite_methods_is_exact(lib):
    boot = lib["stats"].paired_bootstrap
    rng = np.random.default_rng(1)
    a = rng.random((3, 500)) < 0.7
    same = boot(a, a.copy(), resamples=300, seed=5)
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    ones, zeros = np.ones((3, 200), bool), np.zeros((3, 200), bool)
    best = boot(ones, zeros, resamples=300, seed=5)
    assert best["diff"] == pytest.approx(1.0) and best["low"] == pytest.approx(1.0) and best["high"] == pytest.approx(1.0)


def test_bootstrap_interval_over_examples_matches_the_binomial_spread(lib):
    # A right on 60 % of 2,000 examples, B on 50 %, B's right ones a subset of A's: the difference is +1 on 10 % of the
    # examples, in every seed; its standard error is sqrt(0.1 * 0.9 / 2000) = 0.0067, so the 95 % interval is
    # about 0.1 +- 0.013, and the seeds (all alike) add nothing
    idx = np.arange(2000)
    a = np.tile(idx % 10 < 6, (3, 1))
    b = np.tile(idx % 10 < 5, (3, 1))
    out = lib["stats"].paired_bootstrap(a, b, resamples=2000, seed=7)
    assert out["diff"] == pytest.approx(0.1)
    assert 0.1 - 0.018 < out["low"] < 0.1 - 0.008
    assert 0.1 + 0.008 < out["high"] < 0.1 + 0.018
    again = lib["stats"].paired_bootstrap(a, b, resamples=2000, seed=7)
    assert (again["low"], again["high"]) == (out["low"], out["high"])  # a fixed seed reproduces the interval


def test_bootstrap_resamples_seeds_too(lib):
    # A beats B on every example in seed 0 and ties in seeds 1 and 2: the observed difference is 1/3; resampling the
    # seeds gives 0 with probability (2/3)^3 = 0.30 and 1 with (1/3)^3 = 0.04 (> 2.5 %), so the interval is [0, 1]
    a = np.array([np.ones(300, bool), np.zeros(300, bool), np.ones(300, bool)])
    b = np.array([np.zeros(300, bool), np.zeros(300, bool), np.ones(300, bool)])
    out = lib["stats"].paired_bootstrap(a, b, resamples=2000, seed=3)
    assert out["diff"] == pytest.approx(1 / 3)
    assert out["low"] == pytest.approx(0.0) and out["high"] == pytest.approx(1.0)


def test_bootstrap_rejects_unpaired_arrays(lib):
    with pytest.raises(ValueError, match="same"):
        lib["stats"].paired_bootstrap(np.ones((3, 10)), np.ones((2, 10)))


# -- best so far --------------------------------------------------------------------------------------------------------

def test_best_so_far_counts_only_candidates_that_had_ended(lib):
    s = lib["stats"]
    trials = [trial(0, 10.0, 0.80), trial(1, 25.0, 0.95, candidate=False),  # pruned: never the best
              trial(2, 30.0, 0.85), trial(3, 50.0, 0.85), trial(4, 70.0, 0.90)]
    assert s.best_so_far(trials, 9.9) is None
    assert s.best_so_far(trials, 10.0)["n"] == 0  # ended exactly then: counts
    assert s.best_so_far(trials, 29.0)["n"] == 0
    assert s.best_so_far(trials, 60.0)["n"] == 2  # the tie at 50 s does not replace the earlier 0.85
    assert s.best_so_far(trials, 100.0)["n"] == 4


def test_best_so_far_curve_steps_up_and_is_nan_before_the_first_trial(lib):
    trials = [trial(1, 40.0, 0.6), trial(0, 20.0, 0.5), trial(2, 60.0, 0.4)]  # any order
    curve = lib["stats"].best_so_far_curve(trials, [0, 19, 20, 45, 61])
    assert math.isnan(curve[0]) and math.isnan(curve[1])
    assert list(curve[2:]) == [0.5, 0.6, 0.6]


def test_time_to_reach(lib):
    trials = [trial(0, 20.0, 0.5), trial(1, 40.0, 0.7), trial(2, 60.0, 0.8)]
    assert lib["stats"].time_to_reach(trials, 0.7) == 40.0
    assert lib["stats"].time_to_reach(trials, 0.9) is None


def test_the_model_tested_at_a_quarter_of_t_is_the_best_one_then_not_later(lib, tmp_path, monkeypatch):
    ev = lib["evaluate"]
    paths = {}
    for n in range(3):
        paths[n] = tmp_path / f"trial-{n}.keras"
        paths[n].write_bytes(b"model")
    # T = 120: trial 0 (val 0.70) ended at 20 s, trial 1 (0.90, better) at 45 s, trial 2 (0.95) after T
    run = {"dataset": "d", "method": "m", "seed": 0, "budget_s": 120.0,
           "trials": [trial(0, 20.0, 0.70, model=str(paths[0])), trial(1, 45.0, 0.90, model=str(paths[1])),
                      trial(2, 130.0, 0.95, model=str(paths[2])),
                      trial(3, 10.0, 0.99, model=str(tmp_path / "gone.keras"))]}  # its file is missing
    y = np.zeros(8, dtype=int)
    monkeypatch.setattr(ev, "load_test", lambda plan: (np.zeros((8, 1)), y))
    hits = {str(paths[n]): np.arange(8) < 2 * (n + 1) for n in range(3)}  # trial n: 2(n+1)/8 right
    monkeypatch.setattr(ev, "_correct", lambda path, x, yy: hits[path])
    correct = ev.evaluate_runs([run], {"d": {}})
    assert run["at"][0.25]["trial"] == 0 and run["at"][0.25]["test"] == pytest.approx(2 / 8)
    assert run["at"][0.5]["trial"] == 1 and run["at"][1.0]["trial"] == 1  # trial 2 ended after T
    assert run["at"][1.0]["test"] == pytest.approx(4 / 8)
    assert run["models_missing"] == 1  # trial 3 could not be tested, so it was never the best
    assert np.array_equal(correct[("d", "m", 120.0, 0, 0.25)], hits[str(paths[0])])


# -- ranks, summary -----------------------------------------------------------------------------------------------------

def test_ranks_share_ties_and_put_missing_last(lib):
    s = lib["stats"]
    assert s.rank_with_ties([0.9, 0.8, 0.9, None]) == [1.5, 3.0, 1.5, 4.0]
    assert s.rank_with_ties([0.5, 0.5, 0.5]) == [2.0, 2.0, 2.0]
    ranks = s.mean_ranks({"a": [0.9, 0.7, 0.8], "b": [0.8, 0.7, 0.9], "c": [0.7, 0.6, None]})
    assert ranks == {"a": pytest.approx((1 + 1.5 + 2) / 3), "b": pytest.approx((2 + 1.5 + 1) / 3), "c": 3.0}
    with pytest.raises(ValueError, match="same number of seeds"):
        s.mean_ranks({"a": [0.1, 0.2], "b": [0.3]})


def test_summary_is_median_and_range_over_present_values(lib):
    out = lib["stats"].summary([0.8, None, 0.9, 0.7, float("nan")])
    assert out == {"median": pytest.approx(0.8), "min": 0.7, "max": 0.9, "n": 3, "missing": 2}
    assert lib["stats"].summary([None])["median"] is None


# -- the report on constructed runs -------------------------------------------------------------------------------------

def test_report_gain_ranks_and_targets(lib):
    n_test, budget = 100, 120.0
    runs, correct = [], {}
    accuracy = {"default": [0.80, 0.82], "tpe": [0.84, 0.81], "hpo-1": [0.86, 0.85]}
    for m, accs in accuracy.items():
        for seed, acc in enumerate(accs):
            at = {f: {"trial": 0, "val": acc, "end_s": 10.0, "test": acc} for f in (0.25, 0.5, 1.0)}
            runs.append({"dataset": "d", "method": m, "seed": seed, "budget_s": budget, "wall_s": 119.0,
                         "returncode": 0, "killed": False, "notes": {}, "n_test": n_test, "at": at,
                         "trials": [trial(0, 10.0 if m != "hpo-1" else 50.0, acc)]})
            for f in (0.25, 0.5, 1.0):
                correct[("d", m, budget, seed, f)] = np.arange(n_test) < round(acc * n_test)
    plan = lib["settings"].DATASETS["mnist1d"].to_dict()
    meta = {"date": "x", "mode": "custom", "budget_s": budget, "seeds": [0, 1], "cores": 2, "load_before": "?",
            "load_after": "?", "total_s": 60.0}
    text, summary = lib["report"].build_report(runs, correct, {"d": dict(plan, name="d")}, meta)
    ds = summary["datasets"]["d"]
    gain = ds["gain"]["hpo-1@1T"]
    assert gain["per_seed"] == [pytest.approx(0.06), pytest.approx(0.03)]
    assert gain["summary"]["median"] == pytest.approx(0.045)
    assert ds["tables"]["controlled"]["hpo-1"]["mean_rank"] == 1.0
    assert ds["tables"]["controlled"]["default"]["mean_rank"] == pytest.approx(2.5)
    assert ds["targets"]["hpo-1"]["controlled"]["best_other"] == "tpe"
    assert ds["targets"]["hpo-1"]["controlled"]["met"] is True  # 85.5 vs 82.5
    assert ds["targets"]["hpo-1"]["reach_half_T"] == {"times_s": [50.0, 50.0], "within_half_T": True}
    assert "| hpo-1 | 85.50 [85.00-86.00] |" in text
    assert "search gain at 1T: +4.50 pp" in text
    assert "| test % at T | seed 0 | seed 1 |" in text  # each seed's figure, not only the spread
    assert "| tpe | 84.00 | 81.00 |" in text and "| hpo-1 | 86.00 | 85.00 |" in text
    assert "per seed (seeds 0, 1) +6.00, +3.00; per-seed median +4.50" in text


# -- the run's clock and hpo's budget option ----------------------------------------------------------------------------

class _Clock:
    def __init__(self, left):
        self.value = left

    def left(self):
        return self.value


def test_epoch_guard_stops_when_the_next_epoch_would_miss_the_deadline(lib):
    clock = _Clock(100.0)
    guard = lib["record"].EpochGuard(clock, reserve_s=1.5)
    assert guard.can_start()  # nothing known yet
    guard.start_trial()
    for elapsed in (6.0, 8.0, 10.0):  # first epoch 6 s (overhead included), then 2 s per epoch
        guard.on_epoch(elapsed)
    assert guard.epoch_s == pytest.approx(2.0)
    clock.value = 3.6
    assert not guard.out_of_time()  # 2 s epoch + 1.5 s reserve fit
    clock.value = 3.4
    assert guard.out_of_time()
    clock.value = 7.0
    assert not guard.can_start()  # a new trial needs its 6 s first epoch + the reserve
    clock.value = 8.0
    assert guard.can_start()


def test_epoch_guard_keeps_room_for_the_longest_end_a_trial_measured(lib):
    clock = _Clock(100.0)
    guard = lib["record"].EpochGuard(clock, reserve_s=1.5)
    guard.start_trial()
    for elapsed in (6.0, 8.0, 10.0):
        guard.on_epoch(elapsed)
    guard.ended(13.5)  # 3.5 s from its last epoch to its result (a large test set evaluated, the model file)
    assert guard.end_s == pytest.approx(3.5)
    clock.value = 5.4
    assert guard.out_of_time()  # 2 s epoch + 3.5 s end do not fit
    clock.value = 5.6
    assert not guard.out_of_time()
    guard.ended(11.0)  # a shorter end later does not shrink the room kept
    assert guard.end_s == pytest.approx(3.5)


def test_default_only_trains_for_the_time_left_as_hpos_final_does(lib, tmp_path, monkeypatch):
    """Default-only's long run carries the time left to hpo's trainer (which ends it in time and its schedule with
    it), with room for more epochs than the probe's one-epoch estimate; the protocol's guard no longer cuts it."""
    import json
    import time
    import types

    import hpo.training

    controlled = lib["controlled"]
    run = lib["record"].MethodRun({"method": "default", "dataset": {"name": "mnist1d", "validation_split": 0.2,
                                                                    "data_fraction": 1.0},
                                   "seed": 0, "budget_s": 100.0, "start": time.time(), "run_dir": str(tmp_path)})
    monkeypatch.setattr(controlled, "load_info", lambda run: types.SimpleNamespace(modality="sequence",
                                                                                   input_shape=(40, 1)))
    clock = {"left": 100.0}  # the run's clock, seconds left: set by the fake trainer
    monkeypatch.setattr(run, "left", lambda: clock["left"])
    jobs, stops = [], []

    def fake_run_trial(job, on_epoch=None, should_stop=None, save_model_to=None):
        jobs.append(job)
        for epoch, elapsed in ((1, 3.0), (2, 5.0)) if len(jobs) == 1 else ((1, 90.0),):
            clock["left"] = 100.0 if len(jobs) == 1 else 3.0  # the long run: 3 s left, less than an epoch + its end
            on_epoch(epoch, {"val_accuracy": 0.5, "elapsed_s": elapsed})  # probe: 1 s overhead, 2 s per epoch
            stops.append(should_stop())
        return types.SimpleNamespace(status="completed", val_metrics={"accuracy": 0.5}, epochs_run=2,
                                     train_seconds=elapsed + 1.0)

    monkeypatch.setattr(hpo.training, "run_trial", fake_run_trial)
    controlled.run_default(run)
    probe, long = jobs
    assert probe.max_epochs == 2 and probe.time_limit_s is None
    notes = json.loads((tmp_path / "notes.json").read_text())
    # 100 s - 0.5 s for the record - 1 s overhead - 1.5 s end, at 2 s per epoch
    assert notes["default_epochs"] == 48
    assert long.max_epochs == 2 * 48 and long.patience == long.max_epochs
    assert long.time_limit_s == 99.5
    assert stops == [False, False, False]  # near the deadline: the trainer's time limit decides, not the guard
    assert [json.loads(line)["n"] for line in run.log.read_text().splitlines()] == [0, 1]  # probe, long run


def test_hpo_budget_option_is_found_by_name_else_none(lib):
    find = lib["hpo_method"].budget_option
    assert find(["epoch_budget", "timeout_minutes", "trials"], 120.0) is None
    assert find(["epoch_budget", "time_budget_minutes"], 120.0) == ("time_budget_minutes", 2.0)
    assert find(["wall_budget_s"], 90.0) == ("wall_budget_s", 90.0)


def test_dataset_plans_subset_the_official_training_split(lib):
    fm = lib["settings"].DATASETS["fashion_mnist"]
    assert fm.n_val == round(fm.validation_split * fm.official_train)
    assert round(fm.data_fraction * (fm.official_train - fm.n_val)) == fm.n_train
    assert lib["settings"].DATASETS["mnist1d"].data_fraction == 1.0
    assert set(lib["settings"].QUICK_METHODS) <= set(lib["settings"].METHODS)
    assert Path(ROOT / "bench" / "protocol.py").exists()


# -- the command line ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def entry(lib):
    spec = importlib.util.spec_from_file_location("bench_protocol_entry", ROOT / "bench" / "protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_plan_and_3t_runs(entry, lib):
    args = entry.parse_args(["--quick"])
    assert args.datasets in (["mnist1d"], ["synthetic_sequence"]) and args.seeds == [0, 1]
    assert args.budget_s == 35.0 and tuple(args.methods) == lib["settings"].QUICK_METHODS
    runs = entry.plan_runs(args)
    assert len(runs) == 2 * 4 and [m for _, s, m, _ in runs if s == 0] == list(args.methods)
    args = entry.parse_args(["--datasets", "mnist1d", "--seeds", "3", "--methods", "tpe,default,hpo-1",
                             "--budget-s", "60", "--gain-3t"])
    assert sorted((m, b) for *_, m, b in entry.plan_runs(args) if b == 180.0) == [("default", 180.0),
                                                                                ("hpo-1", 180.0)]


@pytest.mark.parametrize("argv, says", [
    (["--methods", "tpe,grid"], "--methods: unknown grid; allowed: default, random"),
    (["--seeds", "0,x"], "--seeds"),
    (["--seeds", "1,1"], "--seeds: distinct"),
    (["--budget-s", "5"], "--budget-s: at least 10"),
    (["--datasets", "cifar"], "--datasets: unknown dataset 'cifar'; allowed: fashion_mnist, mnist1d"),
])
def test_bad_options_say_which_and_what_is_allowed(entry, argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        entry.parse_args(argv)
    assert says in (capsys.readouterr().err + str(exc.value.code))
