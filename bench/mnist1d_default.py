"""MNIST-1D with hpo's default settings: the test accuracy of the best trial next to the published figures.

    python bench/mnist1d_default.py                  # 12 trials x at most 20 epochs (under 10 minutes on 2 cores)
    python bench/mnist1d_default.py --trials 30 --epochs 40

Not run in CI. MNIST-1D (Greydanus 2020, "Scaling down deep learning") is generated offline by the ``mnist1d``
package's ``make_dataset`` with its default arguments: 4,000 training and 1,000 test sequences of 40 steps, 10
classes. hpo runs with its defaults (sequence search space: GRU / LSTM / 1-D convolution; warm start with the space's
default; TPE sampler; Hyperband pruner; cosine learning rate; early stopping; mode=simple; 20 % of the training split
for validation) and only a smaller budget: ``trials`` and ``max_epochs_per_trial``. Selection uses validation
accuracy only; the official 1,000 test sequences are only reported, for the best trial.

The published figures (test accuracy, Greydanus 2020) come from longer training of hand-designed models:
logistic regression ~32 %, MLP ~68 %, GRU ~91 %, CNN ~94 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PUBLISHED = (("logistic regression", 0.32), ("MLP", 0.68), ("GRU", 0.91), ("CNN", 0.94))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials (default 12)")
    parser.add_argument("--epochs", type=int, default=20, help="max_epochs_per_trial (default 20)")
    parser.add_argument("--seed", type=int, default=42, help="run seed (default 42, hpo's default)")
    parser.add_argument("--json", action="store_true", help="also print the numbers as one JSON line")
    args = parser.parse_args(argv)

    import hpo

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpo-mnist1d-") as out:
        result = hpo.optimize(dataset="mnist1d", trials=args.trials, max_epochs_per_trial=args.epochs,
                              seed=args.seed, quiet=True, output_dir=out, run_name="mnist1d-default")
    minutes = (time.perf_counter() - started) / 60
    if result.best_test_accuracy is None:
        print(f"no completed trial ({result.failed} failed): {result.stop_reason}", file=sys.stderr)
        return 1
    print(f"MNIST-1D, hpo defaults, {args.trials} trials x <= {args.epochs} epochs, seed {args.seed}: "
          f"{result.completed} completed, {result.pruned} pruned, {result.failed} failed, {minutes:.1f} min")
    print(f"best trial #{result.best_trial_number}: {json.dumps(result.best_params, sort_keys=True)}")
    print(f"  {'method':<38}{'test accuracy':>14}")
    print(f"  {'hpo (best trial)':<38}{result.best_test_accuracy:>14.4f}   "
          f"(validation {result.best_val_accuracy:.4f})")
    for name, acc in PUBLISHED:
        print(f"  {name + ' (Greydanus 2020)':<38}{'~' + format(acc, '.2f'):>14}")
    if args.json:
        print(json.dumps(dict(trials=args.trials, epochs=args.epochs, seed=args.seed,
                              test_accuracy=result.best_test_accuracy, val_accuracy=result.best_val_accuracy,
                              best_params=result.best_params, completed=result.completed, pruned=result.pruned,
                              failed=result.failed, minutes=round(minutes, 2))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
