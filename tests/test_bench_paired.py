"""bench/paired.py: one method of two protocol outputs compared seed by seed (validation to decide, test reported)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import bench_modules


@pytest.fixture()
def paired(request):
    return bench_modules(request, "paired")[0]


def _output(out, method, runs, examples=10):
    """A protocol output: results.json (each run's answer at T) and correct.npz; ``runs``: seed -> (val, test)."""
    out.mkdir(parents=True)
    doc, correct = {"runs": []}, {}
    for seed, (val, test) in runs.items():
        doc["runs"].append({"method": method, "dataset": "fashion_mnist", "seed": seed, "budget_s": 120.0,
                            "at": {"1.0": {"val": val, "test": test}}})
        right = round(test * examples)
        correct[f"fashion_mnist|{method}|120.0|{seed}|1.0"] = np.arange(examples) < right
    (out / "results.json").write_text(json.dumps(doc))
    np.savez(out / "correct.npz", **correct)
    return str(out)


def test_two_sides_are_compared_seed_by_seed_on_validation_and_test(paired, tmp_path, capsys):
    a = ",".join([_output(tmp_path / "a0", "hpo-2", {0: (0.90, 0.8), 1: (0.91, 0.9)}),
                  _output(tmp_path / "a2", "hpo-2", {2: (0.88, 0.7), 9: (0.5, 0.5)})])  # seed 9: not on side B
    b = _output(tmp_path / "b", "hpo-2", {0: (0.89, 0.7), 1: (0.91, 0.9), 2: (0.89, 0.7)})
    result = paired.compare(paired.read(a, "hpo-2"), paired.read(b, "hpo-2"))
    assert [(r["seed"], r["val"][2], r["test"][2]) for r in result["pairs"]] == [(0, 1.0, 10.0), (1, 0.0, 0.0),
                                                                                 (2, -1.0, 0.0)]
    group = result["groups"]["fashion_mnist T=120"]
    assert group["seeds"] == [0, 1, 2]
    assert group["val"]["median_diff_pp"] == 0.0 and (group["val"]["a_above"], group["val"]["ties"]) == (1, 1)
    assert group["test"]["median_a"] == 0.8 and group["test"]["median_b"] == 0.7
    assert group["test"]["median_of_medians_pp"] == 10.0
    boot = group["test_bootstrap_pp"]
    assert boot["diff"] == pytest.approx(100 * 0.1 / 3, abs=0.01) and boot["low"] <= boot["diff"] <= boot["high"]
    assert paired.main([a, b]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist T=120 val: median A 90.00, B 89.00 (by medians +1.00 pp), median of A-B +0.00 pp, " \
           "A above on 1 of 3 (1 ties)" in out


def test_another_method_on_side_b_and_nothing_in_common(paired, tmp_path, capsys):
    a = _output(tmp_path / "a", "hpo-2", {0: (0.9, 0.9)})
    b = _output(tmp_path / "b", "default", {0: (0.8, 0.8)})
    assert paired.main([a, b, "--method-b", "default"]) == 0
    assert "+10.00 pp" in capsys.readouterr().out
    assert paired.main([a, b]) == 2  # side B has no hpo-2
    assert "no (dataset, seed, T) recorded on both sides" in capsys.readouterr().err
