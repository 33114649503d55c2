"""CPU throughput of concurrent trials: N worker processes with cores/N TensorFlow threads each (what
``concurrent_workers=N`` does on a CPU machine) against one process using every core, measured in the same run.

    python bench/cpu_workers.py                 # N = number of cores, Fashion-MNIST (Debian files), 20,000 images
    python bench/cpu_workers.py --workers 2 --epochs 3 --rounds 5

Each process trains hpo's default CNN (``search_space.DEFAULTS``) on the same data through ``training.run_trial``;
the first epoch (graph tracing) is left out. The two layouts alternate for ``--rounds`` rounds (shared machines are
noisy); prints each round's epochs per second for both layouts and their ratio (N-worker throughput / one-process
throughput), then the median ratio. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent("""
    import json, sys, time
    from hpo import search_space
    from hpo.protocol import TrialJob
    from hpo.training import run_trial

    epochs, fraction = int(sys.argv[1]), float(sys.argv[2])
    stamps = []
    job = TrialJob(trial_id="bench#0", dataset="fashion_mnist", params=search_space.default_params(
        "image", input_shape=(28, 28, 1)), max_epochs=epochs, seed=1, patience=epochs, data_fraction=fraction,
        validation_split=0.1, compute_health=False)
    result = run_trial(job, on_epoch=lambda e, m: stamps.append(time.perf_counter()))
    assert result.status == "completed", result.error
    print(json.dumps({"epochs": len(stamps) - 1, "seconds": stamps[-1] - stamps[0]}))
""")


def run_layout(processes: int, threads: int, epochs: int, fraction: float) -> float:
    """Training epochs per second of ``processes`` concurrent processes with ``threads`` TF threads each."""
    env = dict(os.environ, HPO_TF_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(epochs), str(fraction)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a benchmark process failed (exit {p.returncode})")
        r = json.loads(out.strip().splitlines()[-1])
        rates.append(r["epochs"] / r["seconds"])
    return sum(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--workers", type=int, default=cores, help=f"concurrent workers (default: cores = {cores})")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per process (the first is not timed)")
    parser.add_argument("--data-fraction", type=float, default=20_000 / 54_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args(argv)
    if args.workers < 2 or args.epochs < 2:
        parser.error("--workers and --epochs must be at least 2")
    threads = max(1, cores // args.workers)
    start = time.perf_counter()
    print(f"{cores} cores; default CNN, Fashion-MNIST, {args.epochs - 1} timed epochs per process", flush=True)
    ratios = []
    for r in range(1, args.rounds + 1):
        one = run_layout(1, cores, args.epochs, args.data_fraction)
        many = run_layout(args.workers, threads, args.epochs, args.data_fraction)
        ratios.append(many / one)
        print(f"round {r}: 1 process x {cores} threads {one:.3f} epochs/s, {args.workers} processes x {threads} "
              f"threads {many:.3f} epochs/s, ratio {many / one:.2f}x", flush=True)
    print(f"median ratio (concurrent_workers={args.workers} / one worker): {statistics.median(ratios):.2f}x "
          f"over {args.rounds} rounds ({time.perf_counter() - start:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
