"""Build hpo's built-in portfolio (src/hpo/portfolios.json): strong configurations per modality, tried first.

    python bench/build_portfolio.py                                    # the shipped portfolio (~15 min on 2 cores)
    python bench/build_portfolio.py --leave-out-dir docs/bench/portfolio   # also one per left-out dataset

Not run in CI. For each modality (image, sequence; text has a single generated dataset, so no portfolio):

1. Candidates: the space's default (candidate 0), then ``--candidates - 1`` seeded draws, half of them neighbours
   of the default (3 parameters redrawn), half from the whole space; each must fit the smallest input of the
   modality's datasets and hpo's ``max_params`` on all of them.
2. Tasks: (dataset, seed) pairs: generated datasets with seeds 0 and 1, real ones (Fashion-MNIST, MNIST-1D) with
   seed 0. Each candidate trains once per task through hpo's trainer, as a protocol trial does
   (bench/protocol_lib/settings.py: the dataset's train/validation subset and trial epochs; cosine schedule,
   early stopping patience 3), stopped after ``--limit-s`` seconds. Its score is the best validation accuracy;
   test data is never loaded.
3. Choice (:func:`hpo.portfolio.select`): the default first, then greedily the candidate that most lowers the mean
   regret over the tasks (best score of the task minus the best member's), at most 3 members.

With ``--leave-out-dir DIR``, for each real dataset also a portfolio chosen without its tasks, written as
``DIR/without-<dataset>.json`` (an ``initial_configs`` file: the members after the default): the benchmark
protocol runs hpo on a dataset with the portfolio that never saw it. Evaluations are cached in
bench/results/portfolio-evals.jsonl (delete it to train again).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol_lib import settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "results" / "portfolio-evals.jsonl"
REAL = ("fashion_mnist", "mnist1d")
MODALITY_DATASETS = {"image": ("fashion_mnist", "synthetic_images"), "sequence": ("mnist1d", "synthetic_sequence")}


def tasks_for(datasets: list[str]) -> list[tuple[str, int]]:
    return [(d, s) for d in datasets for s in ((0,) if d in REAL else (0, 1))]


def candidates(modality: str, datasets: list[str], count: int) -> list[dict]:
    """The default, then seeded draws (half neighbours, half whole space) that fit every dataset."""
    import optuna

    from hpo import catalog
    from hpo.config import OptimizationConfig
    from hpo.search_space import count_params, default_params, neighbour_params, suggest

    infos = [catalog.info(d) for d in datasets]
    limit = OptimizationConfig.__dataclass_fields__["max_params"].default
    shape = min((i.input_shape for i in infos), key=lambda s: s[0]) if modality == "image" else None
    out = [default_params(modality, input_shape=shape)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=20261204))
    i = 0
    while len(out) < count:
        i += 1
        if i % 2:
            params = neighbour_params(modality, random.Random(f"portfolio-{modality}-{i}"), input_shape=shape,
                                      redraw=3)
        else:
            params = suggest(draws.ask(), modality, input_shape=shape)
        fits = all(count_params(params, modality, info.input_shape, info.num_classes, info.vocab_size) <= limit
                   for info in infos)
        if fits and params not in out:
            out.append(params)
    return out


def _key(modality: str, params: dict, dataset: str, seed: int, limit_s: float) -> str:
    return json.dumps([modality, params, dataset, seed, limit_s], sort_keys=True)


def evaluate(params: dict, dataset: str, seed: int, limit_s: float, n: int) -> dict:
    """One candidate on one task: best validation accuracy within ``limit_s`` seconds (never test data)."""
    from hpo.protocol import TrialJob
    from hpo.training import run_trial

    plan = settings.plan_for(dataset).to_dict()
    job = TrialJob(trial_id=f"portfolio#{n}", dataset=dataset, params=params, max_epochs=int(plan["trial_epochs"]),
                   seed=seed, split_seed=seed, validation_split=plan["validation_split"],
                   data_fraction=plan["data_fraction"], patience=3, min_epochs=1, compute_health=False,
                   lr_schedule="cosine", use_multi_gpu=False)
    started = time.perf_counter()
    result = run_trial(job, should_stop=lambda: time.perf_counter() - started > limit_s)
    val = (result.val_metrics or {}).get("accuracy") if result.status != "failed" else None
    return {"val_accuracy": val, "epochs": result.epochs_run, "status": result.status,
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=10, help="candidates per modality, the default included")
    p.add_argument("--limit-s", type=float, default=25.0, help="seconds one evaluation may train")
    p.add_argument("--modalities", default="image,sequence")
    p.add_argument("--leave-out-dir", type=Path, help="also write without-<dataset>.json for each real dataset")
    p.add_argument("--out", type=Path, default=ROOT / "src" / "hpo" / "portfolios.json")
    args = p.parse_args(argv)

    from hpo.portfolio import MAX_PORTFOLIO, select
    from hpo.training import configure_tensorflow

    configure_tensorflow()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    cache = {}
    if CACHE.exists():
        for line in CACHE.read_text().splitlines():
            row = json.loads(line)
            cache[row["key"]] = row["result"]
    started = time.perf_counter()
    shipped: dict = {"text": {"members": [], "built": {"why": "one generated text dataset only: nothing to choose "
                                                       "across datasets"}}}
    for modality in [m.strip() for m in args.modalities.split(",") if m.strip()]:
        datasets = list(MODALITY_DATASETS[modality])
        tasks = tasks_for(datasets)
        cands = candidates(modality, datasets, args.candidates)
        scores = []
        for c, params in enumerate(cands):
            row = []
            for dataset, seed in tasks:
                key = _key(modality, params, dataset, seed, args.limit_s)
                if key not in cache:
                    cache[key] = evaluate(params, dataset, seed, args.limit_s, c)
                    with CACHE.open("a") as f:
                        f.write(json.dumps({"key": key, "result": cache[key]}) + "\n")
                row.append(cache[key]["val_accuracy"])
                print(f"{modality} candidate {c} {dataset} seed {seed}: val {cache[key]['val_accuracy']} "
                      f"({cache[key]['epochs']} epochs, {cache[key]['seconds']} s; "
                      f"{(time.perf_counter() - started) / 60:.1f} min in)", flush=True)
            scores.append(row)
        chosen = select(scores, MAX_PORTFOLIO)
        shipped[modality] = {
            "members": [cands[i] for i in chosen[1:]],
            "built": {"by": "bench/build_portfolio.py", "date": _dt.date.today().isoformat(),
                      "tasks": [f"{d} seed {s}" for d, s in tasks], "candidates": cands, "chosen": chosen,
                      "val_accuracy": scores, "limit_s": args.limit_s,
                      "how": "validation accuracy only; default first, then greedy mean regret"}}
        print(f"{modality}: chosen candidates {chosen}")
        if args.leave_out_dir is not None:
            args.leave_out_dir.mkdir(parents=True, exist_ok=True)
            for left in (d for d in datasets if d in REAL):
                keep = [t for t, (d, _) in enumerate(tasks) if d != left]
                lodo = select([[row[t] for t in keep] for row in scores], MAX_PORTFOLIO)
                path = args.leave_out_dir / f"without-{left}.json"
                path.write_text(json.dumps([cands[i] for i in lodo[1:]], indent=1) + "\n")
                print(f"{modality} without {left}: chosen {lodo} -> {path}")
    args.out.write_text(json.dumps(shipped, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
