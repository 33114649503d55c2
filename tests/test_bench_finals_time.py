"""bench/finals_time.py: how much of T a recorded run's finals used, and two outputs compared pair by pair."""

from __future__ import annotations

import json

import optuna
import pytest

from .conftest import bench_modules


@pytest.fixture()
def finals_time(request):
    return bench_modules(request, "finals_time")[0]


def _run(out, seed, finals, *, budget=120.0, wall=110.0):
    """A protocol output's run folder: record.json, trials.jsonl and the study; ``finals``: (epochs, ended_s, took)."""
    run = out / "runs" / "fashion_mnist" / f"T{int(budget)}" / "hpo-2" / f"seed{seed}"
    (run / "hpo" / "bench").mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"method": "hpo-2", "dataset": "fashion_mnist", "seed": seed,
                                                 "budget_s": budget, "wall_s": wall}))
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{run / 'hpo' / 'bench' / 'study.db'}",
                                direction="maximize")
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    lines = [{"n": 0, "end_s": 50.0}]
    study.add_trial(optuna.trial.create_trial(value=0.8, params={"learning_rate": 0.001}, distributions=dist,
                                              user_attrs={"result": {"epochs_run": 3, "train_seconds": 40.0}}))
    for i, (epochs, ended, took) in enumerate(finals, start=1):
        details = {} if took is None else {"end_phase": {"took_s": took, "reserved_s": 2 * took}}
        result = {"epochs_run": epochs, "train_seconds": 45.0, "details": details}
        study.add_trial(optuna.trial.create_trial(value=0.85, params={"learning_rate": 0.001}, distributions=dist,
                                                  user_attrs={"result": result, "final_of": 0}))
        lines.append({"n": i, "end_s": ended})
    (run / "trials.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_run_says_what_its_finals_trained_and_how_much_of_t_was_left(finals_time, tmp_path):
    _run(tmp_path / "a", 0, [(4, 98.6, 7.0), (4, 106.3, None)])  # an older hpo records no end_phase
    rows = finals_time.runs(str(tmp_path / "a"))
    row = rows[("fashion_mnist", "hpo-2", 120, 0)]
    assert row["epochs"] == 8 and row["unused_s"] == pytest.approx(13.7)
    assert [f["end_took_s"] for f in row["finals"]] == [7.0, None]
    assert row["finals"][0]["end_reserved_s"] == 14.0 and row["wall_s"] == 110.0


def test_two_outputs_compare_pair_by_pair_and_a_run_without_finals_is_left_out(finals_time, tmp_path, capsys):
    _run(tmp_path / "a", 0, [(4, 98.6, 7.0), (4, 106.3, 11.0)])
    _run(tmp_path / "a", 1, [(5, 104.0, 6.0), (2, 105.0, 18.0)])
    _run(tmp_path / "a2", 2, [])  # no room for finals: not a pair
    _run(tmp_path / "b", 0, [(5, 108.0, 4.0), (5, 112.3, 6.0)])
    _run(tmp_path / "b", 1, [(6, 110.0, 4.0), (4, 111.0, 7.0)])
    _run(tmp_path / "b", 2, [(3, 100.0, 4.0)])
    a, b = finals_time.runs(f"{tmp_path / 'a'},{tmp_path / 'a2'}"), finals_time.runs(str(tmp_path / "b"))
    figures = finals_time.compare(a, b)
    assert figures["pairs"] == 2 and figures["epochs_ratio"] == [1.25, round(10 / 7, 3)]
    assert figures["unused_s_difference"] == [-6.0, -6.0] and figures["median_unused_s_difference"] == -6.0
    assert finals_time.main([f"{tmp_path / 'a'},{tmp_path / 'a2'}", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "no finals" in printed and "end took 7.0 s of 14.0 kept" in printed and "'pairs': 2" in printed
    assert finals_time.main([]) == 2
