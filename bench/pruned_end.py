"""The end of a pruned trial: what it costs after its last epoch, evaluated on validation only (a prune, as hpo does
now) against validation and test (a stop that keeps the trial whole: what every pruned trial cost before), measured
in the same run through hpo's local backend.

    python bench/pruned_end.py                 # Fashion-MNIST as the protocol uses it (5,000 / 1,000 images)
    python bench/pruned_end.py --rounds 8 --out /tmp/pruned_end     # + rows.json: every trial's figures

Each trial is a search trial of a time-budgeted run (its validation and test predictions would be kept for the
final's ensemble: ``keep_predictions``), stopped after epoch 1 by a CancelToken, the way the dispatcher stops a
pruned trial (``discard=True``) or cuts one (``discard=False``). The end is the trial's ``train_seconds`` minus the
seconds at its last epoch's end (both measured in the worker): restoring the best weights, the evaluations, the
predictions and the model file. Configurations: the default CNN and a larger one (a 256-unit dense layer), since the
test evaluation grows with the model. Rounds alternate the two stops (A, B, B, A, ...) on one persistent worker, so
drift hits both alike. Printed: the median end of each, their ratio, and the seconds a pruned trial saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT = {"conv_blocks": 2, "filters": 32, "kernel_size": 3, "activation": "relu", "batch_norm": True,
           "global_pooling": False, "dense_layers": 0, "dropout": 0.25, "learning_rate": 0.001, "optimizer": "adam",
           "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}  # hpo.catalog.DEFAULTS["image"], active keys
LARGER = dict(DEFAULT, filters=64, kernel_size=5, dense_layers=1, dense_units=256)


def one(backend, job, discard: bool) -> dict:
    """``job`` stopped after epoch 1: its seconds after the last epoch's end, its train_seconds, what it evaluated."""
    from hpo.backends import CancelToken

    token, at = CancelToken(), []

    def on_epoch(report) -> None:
        at.append(float(report.metrics["elapsed_s"]))
        token.cancel("pruned at epoch 1" if discard else "cut for the final training", discard=discard)

    with tempfile.TemporaryDirectory() as tmp:
        result = backend.run(job, on_epoch=on_epoch, cancel=token, save_model_to=str(Path(tmp) / "m.keras"))
    if result.status != "stopped" or result.epochs_run != 1:
        raise SystemExit(f"expected a trial stopped after epoch 1, got {result.status}: {result.error}")
    return {"trial_id": job.trial_id, "discard": discard, "end_s": float(result.train_seconds) - at[-1],
            "train_s": float(result.train_seconds), "val_accuracy": result.val_metrics.get("accuracy"),
            "test_accuracy": result.test_metrics.get("accuracy")}


def main(argv: list[str] | None = None) -> int:
    from hpo.backends.local import LocalBackend
    from hpo.protocol import TrialJob
    from protocol_lib.settings import DATASETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    parser.add_argument("--rounds", type=int, default=6, help="pairs of trials per configuration (default 6)")
    parser.add_argument("--out", help="folder for rows.json (every trial's figures)")
    args = parser.parse_args(argv)
    plan = DATASETS[args.dataset]
    print(f"{args.dataset}: {plan.n_train} training, {plan.n_val} validation examples; test split whole; "
          f"{args.rounds} rounds per configuration", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as logs:
        backend = LocalBackend(workers=1, log_dir=logs)
        backend.start()
        try:
            for name, params in (("default", DEFAULT), ("larger", LARGER)):
                for r in range(args.rounds):
                    for discard in ((True, False) if r % 2 == 0 else (False, True)):
                        job = TrialJob(trial_id=f"bench#{name}-{r}-{int(discard)}", dataset=args.dataset,
                                       params=params, max_epochs=5, seed=r, split_seed=0, patience=5,
                                       validation_split=plan.validation_split, data_fraction=plan.data_fraction,
                                       compute_health=False, lr_schedule="cosine", keep_predictions=True)
                        rows.append(dict(one(backend, job, discard), config=name, round=r))

                def median(key: str, discard: bool, name: str = name) -> float:
                    return statistics.median(r[key] for r in rows if r["config"] == name and r["discard"] == discard)

                pruned, whole, trial = median("end_s", True), median("end_s", False), median("train_s", False)
                print(f"{name}: end of a trial stopped after epoch 1 (median of {args.rounds}): validation only "
                      f"{pruned:.2f} s, validation and test {whole:.2f} s, ratio {pruned / whole:.2f}; "
                      f"saved {whole - pruned:.2f} s of a {trial:.2f} s trial ({(whole - pruned) / trial:.0%})",
                      flush=True)
        finally:
            backend.close()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
