"""Re-read recorded hpo-2 protocol runs: did the last final find the other one kept, average it, and what did that
change in the run's result (test accuracy, pp)?

Per run (runs/DATASET/TBUDGET/hpo-2/seedN/hpo/bench/study.db): the finals (trials with ``final_of``), what the last
one's record says it waited for and found (``finals``), whether its ensemble has the other final among its members,
and the run's result -- the completed trial with the highest validation accuracy (the earlier on ties) -- against the
same choice with the last final's own model ("alone") in place of its ensemble when that ensemble averages the other
final. (The ensemble it would have formed from the search models alone is not known: this is the counterfactual.)

Usage: python bench/finals_reread.py OUT_DIR [OUT_DIR ...] (protocol outputs). Prints a line per run and the mean.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any


def reread(study_db: Path) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{study_db}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    done = {t.number: t.user_attrs["result"] for t in study.trials
            if t.state.name == "COMPLETE" and (t.user_attrs.get("result") or {}).get("val_metrics")}
    finals = sorted(t.number for t in study.trials if "final_of" in t.user_attrs)
    last = finals[-1] if finals else None
    details = (done.get(last) or {}).get("details") or {}
    ensemble = details.get("ensemble")
    averaged = isinstance(ensemble, dict) and any(m in finals and m != last for m in ensemble["members"])
    table = {n: (r["val_metrics"]["accuracy"], r["test_metrics"]["accuracy"]) for n, r in done.items()}

    def best() -> tuple[int, float]:
        number = max(sorted(table), key=lambda n: table[n][0])
        return number, table[number][1]

    result, with_test = best()
    if averaged:
        table[last] = (ensemble["alone"]["val_accuracy"], ensemble["alone"]["test_accuracy"])
    _, without_test = best()
    return {"finals": finals, "found": (details.get("finals") or {}).get("found"), "averaged": averaged,
            "result": result, "change_pp": round(100 * (with_test - without_test), 2)}


def main(argv: list[str]) -> int:
    changes = []
    for out in argv:
        for run in sorted(Path(out).glob("runs/*/T*/hpo-2/seed*")):
            row = reread(run / "hpo" / "bench" / "study.db")
            changes.append(row["change_pp"])
            print(f"{run.parts[-4]} {run.name}: {row}")
    if changes:
        print(f"{len(changes)} runs: mean change {statistics.mean(changes):+.2f} pp, never below 0: "
              f"{min(changes) >= 0}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
