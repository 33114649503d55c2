"""One method of two protocol outputs compared seed by seed: e.g. hpo with an option on (A) and off (B), run
interleaved on the same seeds, data and T.

For each (dataset, seed, T) present on both sides: the validation accuracy of the run's answer at T (the best-so-far
by validation: the figure a decision may use) and its test accuracy (reported, never used to choose), A, B and A - B;
then per dataset the median of each, how many seeds A is above, and a paired bootstrap interval of A - B on test
(:func:`protocol_lib.stats.paired_bootstrap`, from the outputs' ``correct.npz``). A side may gather several outputs
(comma-separated), as per-seed interleaved runs write one output each.

Usage: python bench/paired.py OUT_A[,OUT_A...] OUT_B[,OUT_B...] [--method hpo-2] [--method-b default]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_lib.stats import paired_bootstrap  # noqa: E402


def read(outs: str, method: str) -> dict[tuple[str, int, float], dict[str, Any]]:
    """(dataset, seed, T) -> {"val", "test", "correct"} of ``method`` at T, from the outputs ``outs``."""
    found: dict[tuple[str, int, float], dict[str, Any]] = {}
    for out in (Path(o) for o in outs.split(",") if o):
        doc = json.loads((out / "results.json").read_text())
        with np.load(out / "correct.npz") as arrays:
            correct = {k: arrays[k] for k in arrays.files}
        for run in doc["runs"]:
            if run["method"] != method:
                continue
            at = (run.get("at") or {}).get("1.0") or {}
            key = (run["dataset"], int(run["seed"]), float(run["budget_s"]))
            found[key] = {"val": at.get("val"), "test": at.get("test"),
                          "correct": correct.get(f"{run['dataset']}|{method}|{run['budget_s']}|{run['seed']}|1.0")}
    return found


def compare(a: dict[tuple, dict[str, Any]], b: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    """Per pair and per (dataset, T): A, B and A - B on validation and test (percentage points); see the docstring."""
    pairs = sorted(set(a) & set(b))
    rows = []
    for key in pairs:
        row: dict[str, Any] = {"dataset": key[0], "seed": key[1], "budget_s": key[2]}
        for split in ("val", "test"):
            x, y = a[key][split], b[key][split]
            row[split] = (x, y, None if x is None or y is None else round(100 * (x - y), 2))
        rows.append(row)
    groups: dict[str, Any] = {}
    for dataset, budget in sorted({(k[0], k[2]) for k in pairs}):
        keys = [k for k in pairs if k[0] == dataset and k[2] == budget]
        group: dict[str, Any] = {"seeds": [k[1] for k in keys]}
        for split in ("val", "test"):
            diffs = [r[split][2] for r in rows if (r["dataset"], r["budget_s"]) == (dataset, budget)
                     and r[split][2] is not None]
            xs = [a[k][split] for k in keys if a[k][split] is not None]
            ys = [b[k][split] for k in keys if b[k][split] is not None]
            group[split] = {"median_a": statistics.median(xs) if xs else None,
                            "median_b": statistics.median(ys) if ys else None,
                            "median_of_medians_pp": round(100 * (statistics.median(xs) - statistics.median(ys)), 2)
                            if xs and ys else None,
                            "median_diff_pp": statistics.median(diffs) if diffs else None,
                            "a_above": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "n": len(diffs)}
        ca = [a[k]["correct"] for k in keys]
        cb = [b[k]["correct"] for k in keys]
        if keys and all(c is not None for c in ca + cb):
            boot = paired_bootstrap(np.stack(ca), np.stack(cb))
            group["test_bootstrap_pp"] = {k: round(100 * boot[k], 2) for k in ("diff", "low", "high")}
        groups[f"{dataset} T={budget:g}"] = group
    return {"pairs": rows, "groups": groups}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="output folder(s) of side A, comma-separated")
    p.add_argument("b", help="output folder(s) of side B, comma-separated")
    p.add_argument("--method", default="hpo-2", help="the method compared (default hpo-2)")
    p.add_argument("--method-b", help="side B's method, when it differs (e.g. default)")
    args = p.parse_args(argv)
    result = compare(read(args.a, args.method), read(args.b, args.method_b or args.method))
    if not result["pairs"]:
        print("no (dataset, seed, T) recorded on both sides", file=sys.stderr)
        return 2
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    print(f"{'dataset':<14}{'seed':>5}{'T':>6}   {'val A':>7}{'val B':>7}{'A-B':>7}   "
          f"{'test A':>7}{'test B':>7}{'A-B':>7}")
    for r in result["pairs"]:
        (va, vb, vd), (ta, tb, td) = r["val"], r["test"]
        dv, dt = "-" if vd is None else vd, "-" if td is None else td
        print(f"{r['dataset']:<14}{r['seed']:>5}{r['budget_s']:>6g}   {pct(va):>7}{pct(vb):>7}{dv:>7}   "
              f"{pct(ta):>7}{pct(tb):>7}{dt:>7}")
    for name, g in result["groups"].items():
        for split in ("val", "test"):
            s = g[split]
            print(f"{name} {split}: median A {pct(s['median_a'])}, B {pct(s['median_b'])} "
                  f"(by medians {s['median_of_medians_pp']:+.2f} pp), median of A-B {s['median_diff_pp']:+.2f} pp, "
                  f"A above on {s['a_above']} of {s['n']} ({s['ties']} ties)")
        if "test_bootstrap_pp" in g:
            bt = g["test_bootstrap_pp"]
            print(f"{name} test, paired bootstrap A-B: {bt['diff']:+.2f} pp [{bt['low']:+.2f}, {bt['high']:+.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
