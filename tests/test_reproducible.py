"""Acceptance (#16): with one worker, the same seed and options give the same sequence of configurations and the same
result, whatever the run is called (Hyperband's brackets come from the seed, not the timestamped run name), and a
different seed gives a different search."""

from __future__ import annotations

import hpo
from hpo import catalog, search_space

RUN = dict(dataset="synthetic_images", trials=5, concurrent_workers=1, max_epochs_per_trial=2, data_fraction=0.1,
           quiet=True, plot_generation="none", pruner="hyperband",
           prune_behind_in_time=1.0)  # off: it compares measured seconds, the one clock-dependent rule (README)


def _run(tmp_path, name: str, seed: int, **more) -> list[tuple]:
    result = hpo.optimize(output_dir=str(tmp_path / name), run_name=name, seed=seed, **{**RUN, **more})
    return [(t["number"], t["state"], t["params"], t["value"], t["epochs"]) for t in result.trials]


def test_same_seed_one_worker_gives_the_same_configurations_and_results(tmp_path):
    first = _run(tmp_path, "first-20261203-101010", seed=11)
    again = _run(tmp_path, "again-20261203-111111", seed=11)
    assert len(first) == 5
    assert [t[2] for t in first] == [t[2] for t in again]  # the same configurations, in the same order
    assert first == again  # and the same outcomes, to the last bit
    other = _run(tmp_path, "other", seed=12)
    # the queued first trials (the default and the portfolio's members) aside, another search
    queued = len(search_space.start_queue("image", None, catalog.info("synthetic_images").input_shape,
                                          portfolio_size=3))
    assert queued < 5
    assert [t[2] for t in other][:queued] == [t[2] for t in first][:queued]
    assert [t[2] for t in other][queued:] != [t[2] for t in first][queued:]
