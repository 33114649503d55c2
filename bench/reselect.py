"""Re-read recorded protocol runs of hpo with hpo's current choice of the run's best (``hpo.selection``).

Runs recorded before hpo named its best in its progress events carry no ``"chosen"`` flags, so the protocol took
the highest validation accuracy. The choice needs nothing the run did not record: each trial's validation accuracy,
whether it was a final training (``final_of`` in the run's own study, ``hpo/bench/study.db``) and the number of
validation examples (the dataset plan's ``n_val``). This writes a copy of OUT_DIR's ``record.json`` files into
NEW_DIR (hpo's runs with the flags hpo would have set, in the order their trials ended; the other methods' as they
were) for ``bench/protocol.py --reuse NEW_DIR``, which then tests the models those flags name. The training, the
trials and their timing are the recorded ones: only the choice among the saved models is made again.

    python bench/reselect.py OUT_DIR NEW_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def flags(record: dict, finals: set[int], examples: int) -> list[bool]:
    """hpo's choice after each recorded trial (False for trials that were no candidate)."""
    from hpo.selection import Candidate, choose_best

    done, out = [], []
    for t in record["trials"]:  # recorded as they ended
        if not t.get("candidate") or t.get("val") is None:
            out.append(False)
            continue
        done.append(Candidate(int(t["n"]), float(t["val"]), int(t["n"]) in finals, examples))
        out.append(choose_best(done) == done[-1])
    return out


def finals_of(run_dir: Path) -> set[int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run_dir / 'hpo' / 'bench' / 'study.db'}")
    return {t.number for t in study.get_trials(deepcopy=False) if "final_of" in t.user_attrs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    for path in sorted(src.glob("runs/*/*/*/seed*/record.json")):
        record = json.loads(path.read_text())
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if record["method"].startswith("hpo-"):
            run_dir = Path(record["run_dir"])
            plan = json.loads((run_dir / "spec.json").read_text())["dataset"]
            chosen = flags(record, finals_of(run_dir), int(plan["n_val"]))
            for t, c in zip(record["trials"], chosen):
                t["chosen"] = c
            named = [t["n"] for t in record["trials"] if t["chosen"]]
            before = max((t for t in record["trials"] if t.get("candidate") and t.get("val") is not None),
                         key=lambda t: t["val"], default=None)
            print(f"{path.relative_to(src).parent}: hpo names {named}; the highest validation accuracy was trial "
                  f"{before['n'] if before else None}")
        target.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
