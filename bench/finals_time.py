"""How much of T recorded hpo runs' finals used: their epochs, when the last one ended, and what their ends took.

Per run (runs/DATASET/TBUDGET/hpo-N/seedS of a protocol output): each final's epochs trained and seconds, the end of
the last final (seconds after the run began, ``trials.jsonl``) and the time from there to T (``unused_s``), and, where
the run's hpo records it (``details.end_phase``), what each final's end took against what its trainer kept for it.
Given two outputs (``A B``: the same datasets and seeds, e.g. two versions of hpo run interleaved), also the paired
ratio of the finals' epochs B / A and the difference in unused seconds, with their median over the pairs. Timing
only: no test figure is read.

Usage: python bench/finals_time.py OUT_A[,OUT_A...] [OUT_B[,OUT_B...]] (a side may gather several outputs)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def reread(run: Path) -> dict[str, Any]:
    """One run's finals (see the module's docstring)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record = json.loads((run / "record.json").read_text())
    ended = {t["n"]: t["end_s"] for t in map(json.loads, (run / "trials.jsonl").read_text().splitlines())}
    storage = f"sqlite:///{run / 'hpo' / 'bench' / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    finals = []
    for t in study.trials:
        if "final_of" not in t.user_attrs:
            continue
        result = t.user_attrs.get("result") or {}
        end = (result.get("details") or {}).get("end_phase") or {}
        finals.append({"number": t.number, "epochs": result.get("epochs_run") or 0,
                       "seconds": round(float(result.get("train_seconds") or 0.0), 1), "ended_s": ended.get(t.number),
                       "end_took_s": end.get("took_s"), "end_reserved_s": end.get("reserved_s")})
    last = max((f["ended_s"] for f in finals if f["ended_s"] is not None), default=None)
    budget = float(record["budget_s"])
    return {"key": (record["dataset"], record["method"], int(budget), record["seed"]), "budget_s": budget,
            "wall_s": round(float(record["wall_s"]), 1), "finals": finals,
            "epochs": sum(f["epochs"] for f in finals),
            "unused_s": None if last is None else round(budget - last, 1)}


def runs(outs: str) -> dict[tuple, dict[str, Any]]:
    """The runs of one side: comma-separated protocol outputs."""
    found = [run for out in outs.split(",") for run in sorted(Path(out).glob("runs/*/T*/hpo-*/seed*"))]
    return {row["key"]: row for row in map(reread, found)}


def compare(a: dict[tuple, dict[str, Any]], b: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    """Paired figures over the runs both outputs hold (with finals in both)."""
    keys = [k for k in sorted(a) if k in b and a[k]["epochs"] and b[k]["epochs"]]
    ratios = [b[k]["epochs"] / a[k]["epochs"] for k in keys]
    unused = [b[k]["unused_s"] - a[k]["unused_s"] for k in keys
              if a[k]["unused_s"] is not None and b[k]["unused_s"] is not None]
    return {"pairs": len(keys), "epochs_ratio": [round(r, 3) for r in ratios],
            "median_epochs_ratio": round(statistics.median(ratios), 3) if ratios else None,
            "unused_s_difference": [round(d, 1) for d in unused],
            "median_unused_s_difference": round(statistics.median(unused), 1) if unused else None}


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    outputs = [runs(side) for side in argv]
    for out, rows in zip(argv, outputs):
        for key, row in rows.items():
            finals = "; ".join(f"#{f['number']} {f['epochs']} epochs in {f['seconds']} s, ended at {f['ended_s']:.1f} s"
                               + (f", end took {f['end_took_s']} s of {f['end_reserved_s']} kept"
                                  if f["end_took_s"] is not None else "")
                               for f in row["finals"] if f["ended_s"] is not None)
            print(f"{out} {' '.join(map(str, key))}: wall {row['wall_s']} s, unused after the last final "
                  f"{row['unused_s']} s; {finals or 'no finals'}")
    if len(outputs) == 2:
        print(f"B / A: {compare(*outputs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
