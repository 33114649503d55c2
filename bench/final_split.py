"""With one worker, should hpo's final be one long training, or two of half the time averaged?

hpo.finale trains one final per worker. With one worker, an alternative is to split the final's time in two: the best
configuration trained twice (different seeds) for half the time each, the two averaged. This measures it on the
protocol's datasets, subsets, splits and seeds (bench/protocol_lib/settings.py), on validation only (a design
decision: no test figure is computed). The space's default configuration, hpo's trainer (cosine schedule that follows
the job's time limit, as a final's; no early stopping, best-epoch weights), one training at a time on the machine:

- long:   one training of L seconds (seed s + 1), as the final of one worker;
- halves: two trainings of L/2 seconds (seeds s + 1, s + 2), their validation class probabilities averaged.

L defaults to 100 s: what hpo-1's final has at T = 120 s (the final begins after the first trial's few epochs). TF is
warmed up once before the first measured training (else the first would pay for tracing). Prints per dataset and seed
the validation accuracy of each arm and the difference halves minus long; then the median and range over seeds.

Usage: python bench/final_split.py [--datasets fashion_mnist,mnist1d] [--seeds 0,1,2] [--seconds 100] [--out DIR]
Time: datasets x seeds x 2 x L (20 min at the defaults).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol_lib.settings import plan_for  # noqa: E402


def _train(dataset: str, plan: dict, params: dict, seed: int, split_seed: int, seconds: float, path: Path,
           max_epochs: int = 100_000) -> tuple[float, int, np.ndarray]:
    """(validation accuracy, epochs, validation class probabilities) of one training limited to ``seconds``."""
    from hpo.protocol import TrialJob
    from hpo.training import run_trial

    job = TrialJob(trial_id=f"split-{dataset}-{split_seed}-{seed}", dataset=dataset, params=params,
                   max_epochs=max_epochs, patience=max_epochs, seed=seed, split_seed=split_seed,
                   validation_split=plan["validation_split"], data_fraction=plan["data_fraction"], min_epochs=1,
                   compute_health=False, lr_schedule="cosine", use_multi_gpu=False, time_limit_s=round(seconds, 1),
                   keep_predictions=True)
    result = run_trial(job, save_model_to=str(path))
    if result.status != "completed":
        raise SystemExit(f"{job.trial_id}: {result.status}: {result.error}")
    with np.load(path.with_suffix(".npz")) as arrays:
        return float(result.val_metrics["accuracy"]), int(result.epochs_run or 0), arrays["val"].astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="fashion_mnist,mnist1d")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--seconds", type=float, default=100.0, help="L: the long final's seconds")
    parser.add_argument("--out", default=None, help="folder for rows.json (default: a temporary folder)")
    args = parser.parse_args(argv)
    from hpo import datasets
    from hpo.search_space import default_params
    from hpo.training import configure_tensorflow

    configure_tensorflow()
    out = Path(args.out or tempfile.mkdtemp(prefix="final-split-"))
    out.mkdir(parents=True, exist_ok=True)
    rows, warm = [], False
    for name in args.datasets.split(","):
        plan = plan_for(name).to_dict()
        for seed in (int(s) for s in args.seeds.split(",")):
            data = datasets.load(name, validation_split=plan["validation_split"], seed=seed,
                                 data_fraction=plan["data_fraction"])
            params = default_params(data.info.modality, input_shape=data.info.input_shape)
            y = np.asarray(data.y_val).ravel()
            if not warm:  # tracing and caches paid once, outside the measured trainings
                _train(name, plan, params, 10_000 + seed, seed, 30.0, out / "warm.keras", max_epochs=1)
                warm = True
            long_val, long_epochs, _ = _train(name, plan, params, seed + 1, seed, args.seconds,
                                              out / f"{name}-{seed}-long.keras")
            halves = [_train(name, plan, params, seed + 1 + k, seed, args.seconds / 2,
                             out / f"{name}-{seed}-half{k}.keras") for k in range(2)]
            averaged = float(np.mean(np.argmax(sum(p for _, _, p in halves) / 2, axis=-1) == y))
            row = {"dataset": name, "seed": seed, "seconds": args.seconds, "long_val": long_val,
                   "long_epochs": long_epochs, "half_vals": [v for v, _, _ in halves],
                   "half_epochs": [e for _, e, _ in halves], "halves_averaged_val": averaged,
                   "difference_pp": round(100 * (averaged - long_val), 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    print(f"\nvalidation accuracy %, L = {args.seconds:g} s; halves: two trainings of L/2 averaged")
    print("| dataset | seed | long (epochs) | half 1, half 2 (epochs) | halves averaged | halves - long (pp) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['seed']} | {100 * r['long_val']:.2f} ({r['long_epochs']}) | "
              f"{100 * r['half_vals'][0]:.2f}, {100 * r['half_vals'][1]:.2f} ({r['half_epochs'][0]}, "
              f"{r['half_epochs'][1]}) | {100 * r['halves_averaged_val']:.2f} | {r['difference_pp']:+.2f} |")
    for name in dict.fromkeys(r["dataset"] for r in rows):
        diffs = [r["difference_pp"] for r in rows if r["dataset"] == name]
        print(f"{name}: halves - long, median {statistics.median(diffs):+.2f} pp, range [{min(diffs):+.2f}, "
              f"{max(diffs):+.2f}] over {len(diffs)} seeds")
    print(f"rows: {out / 'rows.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
