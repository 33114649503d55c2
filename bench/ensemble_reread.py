"""Re-read recorded protocol runs: would an ensemble of the run's own models, chosen on validation only, test better
than the run's best single model?

The rule, fixed before any figure was computed (greedy ensemble selection with replacement, Caruana et al. 2004):
- candidates: the run's candidates that had ended by T (completed, or cut by T with their best epoch; never pruned or
  failed), whose saved model exists -- the same set the protocol picks its best-so-far model from;
- start from the best single candidate (the protocol's choice: highest validation accuracy, the earlier on ties);
- add, with replacement, the candidate whose averaged class probabilities give the highest validation accuracy, ties
  broken by the lower validation log-loss; add it only when it strictly improves (accuracy, then log-loss);
- at most 5 picks. The validation split is the run's own (hpo's split seed = the run's seed).
Test accuracy of the ensemble and of the single best are then computed on the official test split.

Usage: python bench/ensemble_reread.py RESULTS_DIR [RESULTS_DIR ...] (folders holding runs/DATASET/TBUDGET/METHOD/seedN)
Prints one line per run and, per (dataset, T, method), the per-seed differences (ensemble minus single, test pp).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol_lib import stats  # noqa: E402

from hpo.ensemble import greedy  # noqa: E402 - the rule hpo applies (its cap on distinct models left open here)


def _predict(path: Path, x: np.ndarray) -> np.ndarray:
    import keras

    keras.backend.clear_session()
    model = keras.models.load_model(str(path), compile=False)
    return np.asarray(model.predict(x, batch_size=512, verbose=0), dtype=np.float64)


def reread(run_dir: Path, data_cache: dict[Any, Any]) -> dict[str, Any] | None:
    from hpo import datasets

    spec = json.loads((run_dir / "spec.json").read_text())
    trials = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines() if line.strip()]
    for t in trials:
        if t.get("model"):
            t["model"] = str(run_dir / "models" / Path(t["model"]).name)
    budget = float(spec["budget_s"])
    cands = [t for t in stats._candidates(trials)
             if float(t["end_s"]) <= budget and Path(t["model"]).exists()]
    best = stats.best_so_far(cands, budget)
    if best is None:
        return None
    ds = spec["dataset"]
    key = (ds["name"], spec["seed"])
    if key not in data_cache:
        data = datasets.load(ds["name"], validation_split=ds["validation_split"], seed=int(spec["seed"]),
                             data_fraction=ds["data_fraction"])
        data_cache[key] = data
    data = data_cache[key]
    y_val, y_test = np.asarray(data.y_val).ravel(), np.asarray(data.y_test).ravel()
    val_probs = [_predict(Path(t["model"]), data.x_val) for t in cands]
    first = cands.index(best)
    recorded_val = float(best["val"])
    own_val = float(np.mean(np.argmax(val_probs[first], -1) == y_val))
    picks = greedy(val_probs, y_val, members=len(val_probs), first=first)
    members = sorted(set(picks))
    test_probs = {i: _predict(Path(cands[i]["model"]), data.x_test) for i in members}
    single = float(np.mean(np.argmax(test_probs[first], -1) == y_test))
    ens = sum(test_probs[i] for i in picks) / len(picks)
    ens_test = float(np.mean(np.argmax(ens, -1) == y_test))
    ens_val = float(np.mean(np.argmax(sum(val_probs[i] for i in picks) / len(picks), -1) == y_val))
    return {"dataset": ds["name"], "method": spec["method"], "T": budget, "seed": spec["seed"],
            "candidates": len(cands), "picks": [cands[i]["n"] for i in picks], "val_single": own_val,
            "val_recorded": recorded_val, "val_ensemble": ens_val, "test_single": single, "test_ensemble": ens_test}


def main(argv: list[str]) -> int:
    rows = []
    cache: dict[Any, Any] = {}
    for root in argv:
        for spec in sorted(Path(root).glob("runs/*/T*/hpo-*/seed*/spec.json")):
            row = reread(spec.parent, cache)
            if row is None:
                continue
            rows.append(row)
            print(json.dumps(row), flush=True)
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["T"], r["method"]), []).append(r)
    print("\n| dataset | T s | method | seeds | single test % | ensemble test % | ensemble minus single, pp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, t, method), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        diffs = [100 * (r["test_ensemble"] - r["test_single"]) for r in rs]
        print(f"| {name} | {t:.0f} | {method} | {','.join(str(r['seed']) for r in rs)} | "
              f"{100 * np.median([r['test_single'] for r in rs]):.2f} | "
              f"{100 * np.median([r['test_ensemble'] for r in rs]):.2f} | "
              f"{', '.join(f'{d:+.2f}' for d in diffs)} (median {np.median(diffs):+.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
