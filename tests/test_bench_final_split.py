"""bench/final_split.py: one long final against two of half the time averaged, on validation (hpo.finale's choice of
one final per worker rests on it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import bench_modules


@pytest.fixture()
def final_split(request):
    return bench_modules(request, "final_split")[0]


def test_both_arms_are_trained_for_their_time_and_the_halves_averaged_on_validation(final_split, tmp_path, capsys):
    from hpo import datasets

    assert final_split.main(["--datasets", "synthetic_images", "--seeds", "0", "--seconds", "8",
                             "--out", str(tmp_path)]) == 0
    row, = json.loads((tmp_path / "rows.json").read_text())
    assert row["dataset"] == "synthetic_images" and row["seed"] == 0
    assert row["long_epochs"] >= 1 and all(e >= 1 for e in row["half_epochs"])
    plan = final_split.plan_for("synthetic_images").to_dict()
    data = datasets.load("synthetic_images", validation_split=plan["validation_split"], seed=0,
                         data_fraction=plan["data_fraction"])
    halves = [np.load(tmp_path / f"synthetic_images-0-half{k}.npz")["val"].astype(np.float64) for k in range(2)]
    y = np.asarray(data.y_val).ravel()
    assert row["halves_averaged_val"] == pytest.approx(float(np.mean(np.argmax(halves[0] + halves[1], -1) == y)))
    assert [round(v, 6) for v in row["half_vals"]] == [round(float(np.mean(np.argmax(h, -1) == y)), 6)
                                                       for h in halves]
    assert row["difference_pp"] == pytest.approx(100 * (row["halves_averaged_val"] - row["long_val"]), abs=0.01)
    out = capsys.readouterr().out
    assert f"| synthetic_images | 0 | {100 * row['long_val']:.2f} ({row['long_epochs']}) |" in out
    assert "synthetic_images: halves - long, median" in out
