"""The benchmark as a protocol (issue 16): hpo against default-only training, random search, Optuna TPE (plain,
successive halving, Hyperband) and KerasTuner Hyperband, at equal wall-clock time, over datasets and seeds.

    python bench/protocol.py --quick                     # development: < 10 minutes on 2 cores
    python bench/protocol.py                             # the full protocol (its expected time is printed first)
    python bench/protocol.py --datasets mnist1d --seeds 0,1,2 --budget-s 120 --methods default,tpe,hpo-1
    python bench/protocol.py --gain-3t                   # also default-only and hpo at 3T: the search gain there

Protocol (settings frozen in bench/protocol_lib/settings.py, chosen from timing only, never from test figures):

- Datasets: Fashion-MNIST (Debian's files, found by hpo.datafiles) 5,000 train / 1,000 validation images drawn
  stratified from the official training split; MNIST-1D (generated offline) 3,200 / 800 from its 4,000 training
  sequences. The official test split (10,000 / 1,000) is used whole, after the runs, on saved models only.
- Seeds (default 0, 1, 2): each fixes the train/validation split and every sampler; shared by all methods.
- Budget: the same wall-clock T (default 120 s) for every method-run, measured from just before its process is
  spawned: process start, imports, data loading, model building all count. Each method-run is a fresh subprocess
  (no warm caches), runs alone (one after another on the same cores), and is killed at T + max(30 s, T/2). Trials that
  end after T never count at T.
- Methods (bench/protocol_lib/settings.py METHODS): controlled = hpo's space, model builder and trainer for every
  method, so only the search differs (default, random, tpe, tpe-sh, tpe-hb, kt-hb); native = each tool's own
  idiomatic setup with a hand-written model (native-tpe, native-tpe-sh, native-tpe-hb, native-kt-hb); hpo-1 and
  hpo-2 (hpo.optimize, concurrent_workers 1 / 2, its time budget option -- or timeout_minutes while hpo has none,
  the overrun shown) appear in both tables.
- Recorded per method-run: every trial's end time, validation accuracy and saved model (trials.jsonl).
- Reported: best-so-far validation accuracy against wall time (a plot per dataset, median over seeds and min-max
  band); test accuracy of the best-so-far model at T/4, T/2 and T (median [min-max] over seeds); mean rank at T;
  a paired bootstrap interval (seeds x test examples, 2,000 resamples, fixed seed) of hpo minus each method; the
  search gain hpo minus default-only at T (and 3T with --gain-3t); the issue's targets, met or missed.
- Output: report.md (printed), results.json (every raw number), correct.npz (per-example test correctness),
  plots, and each run's folder (spec, log, trials, models) under --out (default bench/results/protocol-<date>/).

Needs keras-tuner (pip install -e ".[bench]") for kt-hb / native-kt-hb; mnist1d for MNIST-1D (--quick falls back
to synthetic_sequence when it cannot be imported). Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol_lib import settings  # noqa: E402
from protocol_lib.runner import grace_s, run_method  # noqa: E402

FULL_DATASETS = ("fashion_mnist", "mnist1d")
QUICK_BUDGET_S = 35.0


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _mnist1d_available() -> bool:
    from hpo.catalog import DATASET_NAMES

    return "mnist1d" in DATASET_NAMES and importlib.util.find_spec("mnist1d") is not None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"1 dataset (mnist1d), seeds 0,1, T={QUICK_BUDGET_S:.0f}s, "
                   f"methods {','.join(settings.QUICK_METHODS)}: under 10 minutes on 2 cores")
    p.add_argument("--datasets", help=f"comma-separated, of {', '.join(settings.DATASETS)} (default "
                   f"{','.join(FULL_DATASETS)})")
    p.add_argument("--seeds", help="comma-separated integers (default 0,1,2; --quick 0,1)")
    p.add_argument("--budget-s", type=float, help="T, seconds per method-run (default 120; --quick 35)")
    p.add_argument("--methods", help=f"comma-separated, of {', '.join(settings.METHODS)} (default all)")
    p.add_argument("--gain-3t", action="store_true", help="also run default and hpo-1/hpo-2 for 3T (search gain)")
    p.add_argument("--hpo-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra hpo option for hpo-1/hpo-2 (experiments; stated in the report)")
    p.add_argument("--out", help="output folder (default bench/results/protocol-<date>)")
    p.add_argument("--reuse", metavar="OUT_DIR",
                   help="take the method-runs an earlier run recorded in OUT_DIR (runs/.../record.json: same "
                        "dataset, seed, method and T) instead of running them again; delete a run's folder there to "
                        "run it again (e.g. hpo's, after a change to hpo)")
    args = p.parse_args(argv)
    args.datasets = _csv(args.datasets) if args.datasets else (
        ["mnist1d" if _mnist1d_available() else settings.FALLBACKS[0]] if args.quick else list(FULL_DATASETS))
    for d in args.datasets:
        settings.plan_for(d)
    try:
        args.seeds = [int(s) for s in _csv(args.seeds)] if args.seeds else ([0, 1] if args.quick else [0, 1, 2])
    except ValueError:
        p.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds: distinct integers >= 0")
    args.budget_s = args.budget_s or (QUICK_BUDGET_S if args.quick else 120.0)
    if args.budget_s < 10:
        p.error("--budget-s: at least 10 seconds")
    args.methods = _csv(args.methods) if args.methods else list(settings.QUICK_METHODS if args.quick
                                                                 else settings.METHODS)
    unknown = [m for m in args.methods if m not in settings.METHODS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; allowed: {', '.join(settings.METHODS)}")
    from hpo.config import parse_kv

    args.hpo_options = parse_kv(args.hpo_option)
    return args


def plan_runs(args: argparse.Namespace) -> list[tuple[str, int, str, float]]:
    """(dataset, seed, method, budget) in the order they run: methods interleaved within each seed, so that a drift
    in the machine's speed touches every method alike."""
    runs = [(d, s, m, args.budget_s) for d in args.datasets for s in args.seeds for m in args.methods]
    if args.gain_3t:
        runs += [(d, s, m, 3 * args.budget_s) for d in args.datasets for s in args.seeds for m in args.methods
                 if m in ("default",) + settings.HPO_METHODS]
    return runs


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    date = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"protocol-{date}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs_planned = plan_runs(args)
    plans = {d: settings.plan_for(d).to_dict() for d in args.datasets}
    full = len(FULL_DATASETS) * 3 * len(settings.METHODS) * 120.0
    planned = sum(b for *_, b in runs_planned)
    print(f"full protocol: {len(FULL_DATASETS)} datasets x 3 seeds x {len(settings.METHODS)} methods x 120 s = "
          f"{full / 3600:.1f} h of budgets (+ evaluation; --gain-3t adds 2 x 3 x 3 x 360 s = 1.8 h)")
    print(f"this run: {len(runs_planned)} method-runs, {planned / 60:.1f} min of budgets (each may overstay by at "
          f"most {grace_s(args.budget_s):.0f}s before it is killed); datasets {','.join(args.datasets)}, seeds "
          f"{args.seeds}, T={args.budget_s:.0f}s, methods {','.join(args.methods)}; output {out}", flush=True)
    started, load_before = time.time(), _load()
    results = []
    for i, (dataset, seed, method, budget) in enumerate(runs_planned, 1):
        where = Path("runs") / dataset / f"T{budget:.0f}" / method / f"seed{seed}"
        record = Path(args.reuse) / where / "record.json" if args.reuse else None
        if record is not None and record.exists():
            results.append(dict(json.loads(record.read_text()), reused_from=args.reuse))
            print(f"[{i}/{len(runs_planned)}] {dataset} seed {seed} {method} T={budget:.0f}s: reused", flush=True)
            continue
        run_dir = out / where
        r = run_method(method=method, plan=plans[dataset], seed=seed, budget_s=budget, run_dir=run_dir,
                       hpo_options=args.hpo_options if method in settings.HPO_METHODS else None)
        results.append(r)
        best = max((t["val"] for t in r["trials"] if t.get("candidate") and t["end_s"] <= budget), default=None)
        err = r["notes"].get("error")
        print(f"[{i}/{len(runs_planned)}] {dataset} seed {seed} {method} T={budget:.0f}s: wall {r['wall_s']:.0f}s, "
              f"{len(r['trials'])} trials, best val by T {'-' if best is None else f'{100 * best:.2f}%'}"
              f"{' KILLED' if r['killed'] else ''}{' ERROR ' + err.splitlines()[0][:200] if err else ''}", flush=True)
    print("evaluating the saved models on the test splits ...", flush=True)
    from protocol_lib.evaluate import evaluate_runs
    from protocol_lib.report import build_report, plot_dataset

    with _stderr_to(out / "evaluate.log"):  # TensorFlow's start-up chatter
        correct = evaluate_runs(results, plans)
    plots = {}
    for d in args.datasets:
        path = plot_dataset(results, d, args.budget_s, out / f"best_so_far-{d}.png")
        if path is not None:
            plots[d] = path.name
    meta = {"date": date, "mode": "quick" if args.quick else "full" if argv_is_full(args) else "custom",
            "budget_s": args.budget_s, "seeds": args.seeds, "cores": os.cpu_count(), "load_before": load_before,
            "load_after": _load(), "total_s": time.time() - started, "plots": plots,
            "hpo_options": args.hpo_options, "reused_from": args.reuse,
            "reused_runs": sum(1 for r in results if r.get("reused_from"))}
    text, summary = build_report(results, correct, plans, meta)
    (out / "report.md").write_text(text)
    import numpy as np

    np.savez_compressed(out / "correct.npz", **{"|".join(map(str, k)): v for k, v in correct.items()})
    (out / "results.json").write_text(json.dumps({"meta": meta, "plans": plans, "runs": results,
                                                  "summary": summary}, indent=1, default=str) + "\n")
    print(text)
    print(f"written: {out / 'report.md'}, {out / 'results.json'}, {out / 'correct.npz'}"
          + "".join(f", {out / p}" for p in plots.values()))
    return 0


def argv_is_full(args: argparse.Namespace) -> bool:
    return (not args.quick and args.datasets == list(FULL_DATASETS) and args.seeds == [0, 1, 2]
            and args.budget_s == 120.0 and args.methods == list(settings.METHODS))


if __name__ == "__main__":
    sys.exit(main())
