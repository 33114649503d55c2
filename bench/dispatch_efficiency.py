"""Dispatch efficiency of the RunPod path: how much of N workers' time goes to trials, not to dispatch.

For each N: the RunPod simulator (hpo.testing.runpod_sim, in a process of its own, as RunPod's control plane is),
N real worker processes running bench/sleep_handler.py (the real handler and the SDK worker loop as hpo's worker
runs it, sleeping S seconds per job instead of training; --worker-loop sdk: the SDK's loop unmodified), and trials = 3N sent through the real RunPod client by one of two
drivers:

    plain          N threads, each submitting its next job the moment the last one is noticed: the dispatch path
                   alone (client polling, control plane, SDK loop, handler, concurrency modifier)
    orchestrator   hpo.optimize(concurrent_workers=N, backend=RunPodBackend(...)): the same plus Optuna ask/tell,
                   the study (SQLite on /dev/shm when there is one, or PostgreSQL) and the run folder; with
                   --shared K, K such processes of N/K workers each on one PostgreSQL study (aggregate figures)

It prints, per N:

    efficiency        ideal time / measured time; ideal = trials * S / N, measured = first job submitted -> last
                      result noticed by the client
    queued->picked    median time a job waits in the endpoint's queue until a worker takes it
    done->noticed     median time from the worker posting its result to the client seeing it
    noticed->next     median time from noticing a result to submitting that thread's next job
    run overhead      median (picked up -> result posted) - S: SDK queue, handler start, result post
    worker idle       median time a worker has nothing to run between two jobs (the SDK loop takes the next job
                      after the current one is answered)

    python bench/dispatch_efficiency.py                       # S = 10 s, N = 1, 2, 4, 6, 16, 32, both drivers
    python bench/dispatch_efficiency.py --sleep 3 --workers 2,6 --driver plain
    python bench/dispatch_efficiency.py --driver both --workers 32,64 --storage sqlite      # + summary: ratio
    python bench/dispatch_efficiency.py --driver both --workers 32,64 --storage postgres
    python bench/dispatch_efficiency.py --driver both --workers 48 --storage postgres --shared 3   # 3 x 16

With --driver both a summary follows: each N's efficiency through the plain client and through hpo.optimize,
measured minutes apart on the same machine, their ratio, and noticed->next of the orchestrator path. The plain client
is the ceiling. The unmodified SDK loop takes a worker's next job up to a second after it answered the last (it
looks once a second while busy), so with it even a plain client loses about 1 s per job (0.92 at S = 10 s, N = 32);
hpo's worker asks the moment a job ends (runpod_worker/handler.py: prompt_job_scaler). `--worker-loop sdk` measures
the unmodified loop.

Never a timed assert in a test: numbers depend on the machine. Reference points (unmodified SDK loop, one job per
worker, a plain client, S = 10 s): polling every 2 s 0.83 at N = 6; every 0.1 s 0.934 at N = 6, 0.923 at N = 32.
Issue 17's targets for the orchestrator path: >= 0.96 at N = 32, >= 0.93 at N = 64 (SQLite and PostgreSQL) and at
3 x 16 sharing PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from hpo.backends.runpod import RunPodBackend, default_queue_ahead  # noqa: E402
from hpo.protocol import TrialJob  # noqa: E402
from hpo.testing.runpod_sim import SimulatorProcess, start_workers, stop_workers  # noqa: E402

HANDLER = ROOT / "bench" / "sleep_handler.py"
BENCH_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None
PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _drive_orchestrator(backend: RunPodBackend, n: int, trials: int, epochs: int, out: Path,
                        storage: str | None = None, run_name: str | None = None) -> None:
    import hpo

    result = hpo.optimize(dataset="synthetic_images", trials=trials, concurrent_workers=n,
                          max_epochs_per_trial=epochs, pruner="none", sampler="random", quiet=True,
                          plot_generation="none", output_dir=str(out), use_runpod_service=True,
                          runpod_endpoint_url=backend.base_url, runpod_fallback_local=False, backend=backend,
                          storage=storage, run_name=run_name)
    if storage is None and result.completed != trials:
        raise RuntimeError(f"only {result.completed} of {trials} trials completed: {result.stop_reason}")


def _child(spec: dict[str, Any]) -> int:
    """One of several orchestrator processes sharing a study (--shared): waits for the start signal, runs, dumps its
    client timeline."""
    go = Path(spec["go"])
    backend = RunPodBackend(spec["endpoint"], record_timeline=True, queue_ahead=default_queue_ahead(spec["n"]))
    while not go.exists():
        time.sleep(0.005)
    with tempfile.TemporaryDirectory(prefix="hpo-bench-", dir=BENCH_TMP) as tmp:
        _drive_orchestrator(backend, spec["n"], spec["trials"], spec["epochs"], Path(tmp), storage=spec["storage"],
                            run_name=spec["run_name"])
    Path(spec["timeline"]).write_text(json.dumps(backend.timeline))
    return 0


def _drive_shared(endpoint: str, n: int, processes: int, trials: int, epochs: int, storage: str,
                  run_name: str) -> list[dict[str, Any]]:
    """``processes`` orchestrator processes with n / processes workers each, sharing one study; their merged
    client timelines (thread ids made unique per process)."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="hpo-bench-shared-") as tmp:
        go = Path(tmp) / "go"
        procs, files = [], []
        for i in range(processes):
            spec = {"go": str(go), "endpoint": endpoint, "n": n // processes, "trials": trials, "epochs": epochs,
                    "storage": storage, "run_name": run_name, "timeline": str(Path(tmp) / f"t{i}.json")}
            files.append(Path(spec["timeline"]))
            procs.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)]))
        time.sleep(3.0)  # every child imported and waiting
        go.touch()
        for proc in procs:
            if proc.wait() != 0:
                raise RuntimeError(f"an orchestrator process exited {proc.returncode}")
        timeline = []
        for i, f in enumerate(files):
            for row in json.loads(f.read_text()):
                row["thread"] = f"{i}-{row['thread']}"
                timeline.append(row)
        return timeline


def _drive_plain(backend: RunPodBackend, n: int, trials: int, epochs: int, out: Path) -> None:
    """N threads, each submitting the next job as soon as its last one is noticed (no optimizer in between)."""
    counter = iter(range(trials))
    lock = threading.Lock()
    errors: list[str] = []
    backend.start()

    def loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            job = TrialJob(trial_id=f"bench#{i}", dataset="synthetic_images", params=PARAMS, max_epochs=epochs,
                           seed=i, compute_health=False)
            result = backend.run(job)
            if result.status != "completed":
                errors.append(f"{job.trial_id}: {result.status} {result.error}")

    threads = [threading.Thread(target=loop) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.close()
    if errors:
        raise RuntimeError("; ".join(errors[:3]))


def measure(n: int, *, sleep_s: float, trials_per_worker: int, epochs: int, driver: str,
            env: dict[str, str], log_dir: Path, dump: Path | None = None,
            queue_ahead: int | None = None, storage: str | None = None, shared: int = 1) -> dict[str, Any]:
    trials = trials_per_worker * n
    # The control plane runs in its own process, as RunPod's does: it must not share the client's interpreter.
    # Workers ping at the SDK's default interval (10 s).
    with SimulatorProcess(worker_timeout_s=60.0) as sim:
        procs = start_workers(sim, n, handler=HANDLER, prefix="bench-worker", log_dir=log_dir, timeout=300,
                              env={"HPO_BENCH_SLEEP_S": str(sleep_s), **env}, ping_interval_ms=10_000)
        try:
            time.sleep(1.0)  # let every worker settle into its long poll
            backend = RunPodBackend(sim.endpoint_url, record_timeline=True,
                                    queue_ahead=default_queue_ahead(n) if queue_ahead is None else queue_ahead)
            run_name = f"bench-{n}-{time.time_ns()}"
            if shared > 1 and driver == "orchestrator":
                backend.timeline = _drive_shared(sim.endpoint_url, n, shared, trials, epochs, storage or "",
                                                 run_name)
            else:
                with tempfile.TemporaryDirectory(prefix="hpo-bench-", dir=BENCH_TMP) as tmp:
                    if driver == "orchestrator":
                        _drive_orchestrator(backend, n, trials, epochs, Path(tmp), storage=storage,
                                            run_name=run_name if storage else None)
                    else:
                        _drive_plain(backend, n, trials, epochs, Path(tmp))
            jobs = {j["id"]: j for j in sim.jobs()}
            rate_limited = sum(v for (route, status), v in sim.responses().items() if status == 429)
        finally:
            stop_workers(procs)
    timeline = sorted(backend.timeline, key=lambda r: r["submitted_at"])
    start = min(r["submitted_at"] for r in timeline)
    end = max(r["noticed_at"] for r in timeline)
    measured = end - start
    ideal = trials * sleep_s / n
    picked, noticed, running = [], [], []
    for r in timeline:
        job = jobs[r["job_id"]]
        if job["taken_at"] is not None:
            picked.append(job["taken_at"] - job["created_at"])
        if job["finished_at"] is not None:
            noticed.append(r["noticed_at"] - job["finished_at"])
            if job["taken_at"] is not None:
                running.append(job["finished_at"] - job["taken_at"] - sleep_s)
    idle = []  # per worker, between consecutive jobs: result posted -> next job taken 
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for job in jobs.values():
        if job["worker_id"] and job["taken_at"] is not None and job["finished_at"] is not None:
            by_worker.setdefault(job["worker_id"], []).append(job)
    for rows in by_worker.values():
        rows.sort(key=lambda j: j["taken_at"])
        idle += [max(0.0, b["taken_at"] - a["finished_at"]) for a, b in zip(rows, rows[1:])]
    by_thread: dict[int, list[dict[str, Any]]] = {}
    for r in timeline:
        by_thread.setdefault(r["thread"], []).append(r)
    resubmit = [b["submitted_at"] - a["noticed_at"] for rows in by_thread.values() for a, b in zip(rows, rows[1:])]
    if dump is not None:
        dump.write_text(json.dumps({"timeline": timeline, "jobs": list(jobs.values()), "sleep_s": sleep_s}))
    return {"n": n, "trials": trials, "ideal_s": ideal, "measured_s": measured, "efficiency": ideal / measured,
            "picked_s": _median(picked), "noticed_s": _median(noticed), "resubmit_s": _median(resubmit),
            "run_overhead_s": _median(running), "idle_s": _median(idle), "polls": sum(r["polls"] for r in timeline),
            "retried_requests": sum(backend.retried_requests.values()), "rate_limited": rate_limited}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sleep", type=float, default=10.0, help="seconds each job sleeps (S); default 10")
    parser.add_argument("--workers", default="1,2,4,6,16,32", help="comma-separated N values")
    parser.add_argument("--trials-per-worker", type=int, default=3, help="trials = this * N; default 3")
    parser.add_argument("--epochs", type=int, default=5, help="progress updates per job; default 5")
    parser.add_argument("--driver", choices=("both", "plain", "orchestrator"), default="both",
                        help="plain (a bare loop of N client threads), orchestrator (hpo.optimize: Optuna ask/tell "
                             "between trials), or both (default)")
    parser.add_argument("--queue-ahead", type=int, default=None,
                        help="trials kept queued beyond N (default: hpo's default_queue_ahead(N) = 1 + N // 5)")
    parser.add_argument("--log-dir", default=None, help="keep the workers' logs here")
    parser.add_argument("--dump", default=None, help="write each N's raw timeline to DUMP-<N>.json")
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite",
                        help="the orchestrator's study: the run folder's SQLite (default) or a throw-away PostgreSQL "
                             "15 cluster on loopback (hpo.testing.postgres)")
    parser.add_argument("--shared", type=int, default=1,
                        help="K orchestrator processes with N/K workers each sharing one study (needs "
                             "--storage postgres); efficiency is the aggregate")
    parser.add_argument("--worker-loop", choices=("prompt", "sdk"), default="prompt",
                        help="prompt (default, hpo's worker): a worker asks for its next job the moment one ends; "
                             "sdk: the SDK's unmodified loop, which looks once a second while busy (the baseline)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))
    if args.shared > 1 and (args.storage != "postgres" or args.driver == "plain"):
        parser.error("--shared needs --storage postgres and the orchestrator driver (with --driver both, the plain "
                     "client is measured with N threads)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ns = [int(x) for x in args.workers.split(",") if x.strip()]
    env: dict[str, str] = {"HPO_WORKER_PROMPT_TAKE": "1" if args.worker_loop == "prompt" else "0"}
    print(f"worker loop: {args.worker_loop}")
    print(f"S = {args.sleep:g} s, trials = {args.trials_per_worker}N, {args.epochs} progress updates per job, "
          f"queue_ahead = "
          f"{'default (1 + N // 5)' if args.queue_ahead is None else args.queue_ahead} (orchestrator driver)")
    header = (f"{'N':>3} {'trials':>6} {'ideal':>7} {'measured':>9} {'efficiency':>10}   {'queued->picked':>14} "
              f"{'done->noticed':>13} {'noticed->next':>13} {'run overhead':>12} {'worker idle':>11} {'polls':>6} "
              f"{'429/retry':>9}")
    drivers = ("plain", "orchestrator") if args.driver == "both" else (args.driver,)
    print(f"study storage (orchestrator driver): {args.storage}"
          + (f", {args.shared} orchestrator processes sharing it" if args.shared > 1 else ""))
    with contextlib.ExitStack() as stack:
        storage = None
        if args.storage == "postgres":
            from hpo.testing.postgres import postgres_cluster

            storage = str(stack.enter_context(postgres_cluster())["url"])
        return _run_all(args, ns, env, header, drivers, storage)


def _run_all(args: argparse.Namespace, ns: list[int], env: dict[str, str], header: str, drivers: tuple[str, ...],
             storage: str | None) -> int:
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-logs-") as tmp:
        log_dir = Path(args.log_dir) if args.log_dir else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        for driver in drivers:
            print(f"\n{DRIVERS[driver]}", flush=True)
            print(header, flush=True)
            for n in ns:
                r = measure(n, sleep_s=args.sleep, trials_per_worker=args.trials_per_worker, epochs=args.epochs,
                            driver=driver, env=env, log_dir=log_dir, queue_ahead=args.queue_ahead,
                            storage=storage, shared=args.shared,
                            dump=Path(f"{args.dump}-{driver}-{n}.json") if args.dump else None)
                results[driver, n] = r
                print(f"{r['n']:>3} {r['trials']:>6} {r['ideal_s']:>6.1f}s {r['measured_s']:>8.2f}s "
                      f"{r['efficiency']:>10.3f}   {_ms(r['picked_s']):>14} {_ms(r['noticed_s']):>13} "
                      f"{_ms(r['resubmit_s']):>13} {_ms(r['run_overhead_s']):>12} {_ms(r['idle_s']):>11} "
                      f"{r['polls']:>6} {r['retried_requests'] + r['rate_limited']:>9}", flush=True)
    if len(drivers) == 2:  # the orchestrator path against the bare client measured the same minute
        shared = f", {args.shared} orchestrator processes x N/{args.shared} workers" if args.shared > 1 else ""
        print(f"\nsummary (study in {args.storage}{shared}; the plain client with N threads)")
        print(f"{'N':>3} {'plain client':>12} {'hpo.optimize':>12} {'ratio':>6} {'noticed->next':>13}")
        for n in ns:
            plain, orch = results["plain", n], results["orchestrator", n]
            print(f"{n:>3} {plain['efficiency']:>12.3f} {orch['efficiency']:>12.3f} "
                  f"{orch['efficiency'] / plain['efficiency']:>6.3f} {_ms(orch['resubmit_s']):>13}", flush=True)
    return 0


DRIVERS = {
    "plain": "driver = plain: N client threads, each submitting its next job as soon as the last one is noticed "
             "(the dispatch path alone: client, control plane, SDK worker loop, handler)",
    "orchestrator": "driver = orchestrator: hpo.optimize with concurrent_workers = N (+ queue_ahead), Optuna ask/tell "
                    "and the run folder written between trials",
}


if __name__ == "__main__":
    sys.exit(main())
