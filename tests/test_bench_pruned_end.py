"""bench/pruned_end.py: the end of a trial stopped after epoch 1, pruned (validation only) against cut (validation and
test), through the local backend; the figures it prints are the medians of the trials it records."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from .conftest import bench_modules


@pytest.fixture()
def pruned_end(request):
    return bench_modules(request, "pruned_end")[0]


def test_pruned_trials_skip_the_test_split_and_the_printed_medians_are_the_recorded_ones(pruned_end, tmp_path,
                                                                                         capsys):
    assert pruned_end.main(["--dataset", "synthetic_images", "--rounds", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert sorted((r["config"], r["discard"]) for r in rows) == [("default", False), ("default", True),
                                                                ("larger", False), ("larger", True)]
    for row in rows:
        assert row["val_accuracy"] is not None  # both evaluated on validation
        assert (row["test_accuracy"] is None) == row["discard"]  # only the pruned one skipped the test split
        assert 0 < row["end_s"] < row["train_s"]
    out = capsys.readouterr().out
    for config in ("default", "larger"):
        line = next(x for x in out.splitlines() if x.startswith(f"{config}:"))
        pruned, whole = (statistics.median(r["end_s"] for r in rows if r["config"] == config and r["discard"] == d)
                         for d in (True, False))
        shown = [float(x) for x in re.findall(r"(\d+\.\d+) s", line)[:2]]
        assert shown == [round(pruned, 2), round(whole, 2)], line
        assert f"ratio {pruned / whole:.2f}" in line
