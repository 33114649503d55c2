"""Re-read recorded hpo-2 protocol runs: where the finals' configurations came from, on validation only.

Per run (runs/DATASET/TBUDGET/hpo-2/seedN/hpo/bench/study.db):
- each final (a trial with ``final_of``) and whether its configuration is from the start queue (the default, an
  initial configuration, a portfolio member: ``hpo.search_space.START_ATTRS``) or the search's own;
- its own validation accuracy, before its ensemble (``details.ensemble.alone`` when it averaged others): when one
  final of each origin trained side by side, the start queue's minus the search's (pp);
- which configurations ``hpo.finale.Finale.choose`` picks from the trials that had ended when the finals were chosen
  (those numbered below the first final, less the ones cut for or ended after the choice), and whether that differs
  from what the run trained (a run of an older hpo: the counterfactual; of this one: a check).
No test figure is read.

Usage: python bench/finals_origin.py OUT_DIR [OUT_DIR ...] (protocol outputs). Prints a line per run and a summary.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any


def _own_val(result: dict[str, Any]) -> float:
    ensemble = (result.get("details") or {}).get("ensemble")
    return float(ensemble["alone"]["val_accuracy"] if isinstance(ensemble, dict) else result["val_metrics"]["accuracy"])


def reread(study_db: Path) -> dict[str, Any]:
    import optuna

    from hpo.budget import TimeBudget
    from hpo.config import OptimizationConfig
    from hpo.finale import FINAL_CUT, FINAL_LATE, Finale
    from hpo.search_space import start_params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{study_db}"
    trials = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage).trials
    finals = [t for t in trials if "final_of" in t.user_attrs]
    start = start_params(trials)
    origin = {t.number: ("start" if trials[t.user_attrs["final_of"]].params in start else "search") for t in finals}
    own = {t.number: _own_val(t.user_attrs["result"]) for t in finals
           if t.state.name == "COMPLETE" and (t.user_attrs.get("result") or {}).get("val_metrics")}
    first = min((t.number for t in finals), default=len(trials))
    ended = [t for t in trials[:first]
             if not str(t.user_attrs.get("reason") or "").startswith((FINAL_CUT, FINAL_LATE))]
    config = OptimizationConfig(dataset="synthetic_images", time_budget_minutes=1, concurrent_workers=len(finals) or 1)
    trained = [t.user_attrs["final_of"] for t in finals]
    # no room for a search: the first trial, cut, trained on every worker (Finale.choose not asked)
    no_room = len(set(trained)) == 1 and str(trials[trained[0]].user_attrs.get("reason") or "").startswith(FINAL_CUT)
    chosen = trained if no_room else [n for n, _ in Finale(config, TimeBudget(config)).choose(ended)]
    by = {o: [own[n] for n in own if origin[n] == o] for o in ("start", "search")}
    pair = round(100 * (by["start"][0] - by["search"][0]), 2) if by["start"] and by["search"] else None
    return {"finals": [t.number for t in finals], "of": trained, "origin": [origin[t.number] for t in finals],
            "own_val": [own.get(t.number) for t in finals], "start_minus_search_pp": pair,
            "no_room": no_room, "choose": chosen, "differs": sorted(chosen) != sorted(trained)}


def main(argv: list[str]) -> int:
    pairs, differs, runs = [], 0, 0
    for out in argv:
        for run in sorted(Path(out).glob("runs/*/T*/hpo-2/seed*")):
            row = reread(run / "hpo" / "bench" / "study.db")
            runs += 1
            differs += row["differs"]
            if row["start_minus_search_pp"] is not None:
                pairs.append(row["start_minus_search_pp"])
            print(f"{run.parts[-4]} {run.parts[-3]} {run.name}: {row}")
    print(f"{runs} runs; Finale.choose differs from the finals trained in {differs}")
    if pairs:
        print(f"{len(pairs)} runs with one final of each origin: start queue above the search's own in "
              f"{sum(p > 0 for p in pairs)}, equal {sum(p == 0 for p in pairs)}; "
              f"mean {statistics.mean(pairs):+.2f} pp, median {statistics.median(pairs):+.2f} pp "
              "(own validation accuracy)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
