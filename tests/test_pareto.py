"""mode=pareto: a multi-objective study of (val_accuracy, overall_health); the reported Pareto front is exactly the set
of mutually non-dominated completed trials, it lands in best.json and `hpo show`, and the pruner is off (and said so)."""

from __future__ import annotations

import json

import optuna
import pytest

import hpo
from hpo import health
from hpo.cli import main as cli_main
from hpo.protocol import TrialResult
from hpo.results import best_records, trial_records

optuna.logging.set_verbosity(optuna.logging.WARNING)


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def _point(record: dict) -> tuple[float, float]:
    return record["val_accuracy"], record["overall_health"]


def _check_front(records: list[dict], front: list[dict]) -> None:
    complete = [r for r in records if r["state"] == "complete"]
    assert front, "an empty Pareto front"
    for a in front:
        for b in front:
            assert not dominates(_point(a), _point(b)), (a["number"], b["number"])
    front_numbers = {r["number"] for r in front}
    for r in complete:  # every completed trial left out is dominated by a front member
        if r["number"] not in front_numbers:
            assert any(dominates(_point(f), _point(r)) for f in front), r["number"]


def test_constructed_study_front_is_the_non_dominated_set():
    points = [(0.90, 0.40), (0.85, 0.70), (0.80, 0.90), (0.84, 0.60), (0.70, 0.50), (0.90, 0.30), (0.60, 0.95)]
    study = optuna.create_study(directions=["maximize", "maximize"])
    for i, (acc, h) in enumerate(points):
        r = TrialResult(trial_id=f"p#{i}", status="completed", val_metrics={"accuracy": acc},
                        test_metrics={"accuracy": 1.0 - acc}, health={"overall_health": h})
        study.add_trial(optuna.trial.create_trial(
            params={"i": i}, distributions={"i": optuna.distributions.IntDistribution(0, 100)},
            values=health.objective(r, mode="pareto"), user_attrs={"result": r.to_dict(), "counted": True}))
    records = trial_records(study)
    best, front = best_records(study, records, "pareto")
    assert {r["number"] for r in front} == {0, 1, 2, 6}
    _check_front(records, front)
    assert best["number"] == 0  # the front member with the highest validation accuracy (never test accuracy)


@pytest.fixture(scope="module")
def pareto_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pareto")
    result = hpo.optimize(dataset="synthetic_images", mode="pareto", pruner="hyperband", trials=5,
                          max_epochs_per_trial=2, data_fraction=0.5, output_dir=str(out), run_name="pf", quiet=True,
                          plot_generation="none", conv_blocks=1, filters=16, batch_size=64, dense_layers=0)
    return result, out / "pf"


def test_pareto_run_reports_a_mutually_non_dominated_front(pareto_run):
    result, run_dir = pareto_run
    assert result.completed == 5 and result.pruned == 0
    _check_front(result.trials, result.pareto_front)
    for record in result.trials:
        assert record["value"] == [record["val_accuracy"], record["overall_health"]]
        for name in health.COMPONENTS:
            value = record["health"][name]
            assert value is None or 0.0 <= value <= 1.0, (name, value)
    best = json.loads((run_dir / "best.json").read_text())
    assert [e["number"] for e in best["pareto_front"]] == [e["number"] for e in result.pareto_front]
    assert best["number"] == max(result.pareto_front, key=lambda e: e["val_accuracy"])["number"]
    assert (run_dir / "best_model.keras").is_file()


def test_pareto_mode_turns_the_pruner_off_and_says_so(pareto_run):
    result, run_dir = pareto_run
    assert any("pruner=hyperband is off" in note for note in result.notes)
    study = optuna.load_study(study_name="pf", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.directions) == 2
    assert all(not t.intermediate_values for t in study.trials)  # nothing was fed to a pruner


def test_hpo_show_lists_the_pareto_front(pareto_run, capsys):
    result, run_dir = pareto_run
    assert cli_main(["show", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "pareto front" in out
    for entry in result.pareto_front:
        assert f"#{entry['number']}:" in out
