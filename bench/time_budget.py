"""Does ``time_budget_minutes`` end a run by T, everything included? Measured against ``timeout_minutes`` (which only
stops *starting* trials) on the same data, seeds and T, in the same run.

    python bench/time_budget.py                      # Fashion-MNIST (Debian files), T = 60 s and 120 s, seeds 0 and 1
    python bench/time_budget.py --quick              # T = 60 s, seed 0 (about 3 minutes)
    python bench/time_budget.py --dataset synthetic_images --budgets 30,60

Each method-run is one ``hpo.optimize`` call in this process (local worker processes, 2 at a time, plots and report
made), timed from the call to its return: worker start-up, every trial, the model files, plots and report included.
Printed per T: wall / T for each method (median and range over seeds), the trials each completed and the best
validation accuracy it found; the last line, the ratio of the two methods' median overruns. Nothing is tuned on these
figures; there is no test-set figure here at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

METHODS = {"time_budget_minutes": "ends by T", "timeout_minutes": "stops starting trials at T (baseline)"}


def run_once(dataset: str, option: str, budget_s: float, seed: int, out: Path) -> dict:
    import hpo

    started = time.monotonic()
    result = hpo.optimize(dataset=dataset, seed=seed, trials=1000, concurrent_workers=2, data_fraction=0.1,
                          max_epochs_per_trial=20, plot_generation="all", quiet=True, output_dir=str(out),
                          run_name=f"{option}-T{budget_s:.0f}-s{seed}", **{option: budget_s / 60.0})
    wall = time.monotonic() - started
    return {"option": option, "T": budget_s, "seed": seed, "wall_s": round(wall, 1), "ratio": round(wall / budget_s, 3),
            "completed": result.completed, "pruned": result.pruned, "failed": result.failed,
            "best_val": result.best_val_accuracy, "stop_reason": result.stop_reason}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--budgets", default="60,120", help="T values in seconds, comma-separated")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--quick", action="store_true", help="T = 60 s, seed 0")
    p.add_argument("--json", action="store_true", help="print every run as one JSON line too")
    args = p.parse_args(argv)
    budgets = [60.0] if args.quick else [float(x) for x in args.budgets.split(",")]
    seeds = [0] if args.quick else [int(x) for x in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-budget-") as tmp:
        for budget in budgets:
            for seed in seeds:
                for option in METHODS:  # interleaved: a drift in machine load hits both methods alike
                    row = run_once(args.dataset, option, budget, seed, Path(tmp))
                    rows.append(row)
                    if args.json:
                        print(json.dumps(row), flush=True)
    print(f"\n{args.dataset}, 2 local workers, data_fraction 0.1, seeds {seeds}: wall time of hpo.optimize / T")
    print(f"{'T':>6}  {'option':<20} {'median':>7} {'range':>13}  {'completed':>9}  best val")
    overrun: dict[str, list[float]] = {m: [] for m in METHODS}
    for budget in budgets:
        for option in METHODS:
            sel = [r for r in rows if r["T"] == budget and r["option"] == option]
            ratios = [r["ratio"] for r in sel]
            overrun[option] += [r - 1.0 for r in ratios]
            best = [r["best_val"] for r in sel if r["best_val"] is not None]
            print(f"{budget:>5.0f}s  {option:<20} {statistics.median(ratios):>7.3f} "
                  f"{min(ratios):>6.3f}-{max(ratios):<6.3f}  {statistics.median([r['completed'] for r in sel]):>9.1f}"
                  f"  {statistics.median(best) if best else float('nan'):.4f}")
    a, b = (statistics.median(overrun[m]) for m in METHODS)
    print(f"median overrun past T: time_budget_minutes {a:+.3f} T, timeout_minutes {b:+.3f} T"
          + (f" (ratio {a / b:.2f})" if b > 0 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
