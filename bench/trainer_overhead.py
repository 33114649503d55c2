"""Trainer overhead: time per epoch of hpo's local backend versus a plain ``model.fit`` of the same model on the
same data, measured in the same run. Target: ratio <= 1.10.

    python bench/trainer_overhead.py            # Fashion-MNIST from the Debian files, 20% of the training split
    python bench/trainer_overhead.py --rounds 3 --epochs 5 --fraction 0.3

Both sides train the same params (same model, batch size, seed, split) in a fresh process each: the local backend
through its persistent worker process (JSON job, epoch reports, per-epoch continue/stop handshake, best-weights
tracking), the baseline as a bare ``keras`` script. Epoch times are taken from a Keras callback inside each process
(wall clock between epoch ends), skipping the first epoch (graph tracing). The rounds alternate A, B, A, B so drift
in machine speed hits both sides alike; the median ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PARAMS = {"conv_blocks": 2, "filters": 32, "kernel_size": 3, "activation": "relu", "batch_norm": True,
          "global_pooling": False, "dense_layers": 1, "dense_units": 128, "dropout": 0.2, "learning_rate": 0.001,
          "optimizer": "adam", "batch_size": 128, "weight_decay": 1e-5, "augmentation": "none"}

BASELINE = textwrap.dedent("""
    import json, os, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from hpo import datasets, models
    cfg = json.loads(sys.argv[1])
    keras.utils.set_random_seed(cfg["seed"])
    data = datasets.load(cfg["dataset"], validation_split=0.2, seed=cfg["seed"], data_fraction=cfg["fraction"])
    info = data.info
    model = models.build_model(cfg["params"], modality=info.modality, input_shape=info.input_shape,
                               num_classes=info.num_classes, vocab_size=info.vocab_size)
    ends = []
    class Clock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train, batch_size=cfg["params"]["batch_size"], epochs=cfg["epochs"],
              validation_data=(data.x_val, data.y_val), callbacks=[Clock()], shuffle=True, verbose=0)
    print(json.dumps({"epoch_ends": ends, "start": start}))
""")


def epoch_seconds(ends: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends, ends[1:])]  # skips the first epoch (tracing, warm-up)


def run_baseline(cfg: dict) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", BASELINE, json.dumps(cfg)], env=env, capture_output=True,
                          text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return epoch_seconds(out["epoch_ends"])


def run_hpo(cfg: dict, log_dir: str) -> list[float]:
    from hpo.backends.local import LocalBackend
    from hpo.protocol import TrialJob

    job = TrialJob(trial_id="bench#0", dataset=cfg["dataset"], params=cfg["params"], max_epochs=cfg["epochs"],
                   patience=cfg["epochs"], seed=cfg["seed"], validation_split=0.2, data_fraction=cfg["fraction"],
                   compute_health=False)
    ends: list[float] = []
    backend = LocalBackend(workers=1, log_dir=log_dir)
    backend.start()  # worker start-up (TensorFlow import) is not part of an epoch, as in the baseline
    try:
        result = backend.run(job, on_epoch=lambda report: ends.append(time.perf_counter()))
    finally:
        backend.close()
    if result.status != "completed":
        raise SystemExit(f"hpo trial failed: {result.error}")
    return epoch_seconds(ends)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--fraction", type=float, default=0.2, help="data_fraction of the training part")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg = {"dataset": args.dataset, "fraction": args.fraction, "epochs": args.epochs, "seed": 42, "params": PARAMS}
    ratios, hpo_all, base_all = [], [], []
    with tempfile.TemporaryDirectory() as logs:
        for r in range(args.rounds):
            hpo_times = run_hpo(cfg, logs)
            base_times = run_baseline(cfg)
            hpo_med, base_med = statistics.median(hpo_times), statistics.median(base_times)
            hpo_all += hpo_times
            base_all += base_times
            ratios.append(hpo_med / base_med)
            print(f"round {r + 1}: hpo local backend {hpo_med:.3f} s/epoch, plain model.fit {base_med:.3f} s/epoch, "
                  f"ratio {hpo_med / base_med:.3f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"\n{args.dataset}, data_fraction={args.fraction}, {args.epochs} epochs (first skipped), "
          f"{args.rounds} rounds")
    print(f"median s/epoch: hpo {statistics.median(hpo_all):.3f}, plain model.fit {statistics.median(base_all):.3f}")
    print(f"overhead ratio (hpo / plain), median of rounds: {ratio:.3f}  (target <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
