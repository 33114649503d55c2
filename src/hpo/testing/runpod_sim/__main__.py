"""``python -m hpo.testing.runpod_sim``: serve the simulator (and optionally handler.py workers) until SIGTERM or
Ctrl-C; prints the endpoint URL and a worker environment (``--json``: one line for SimulatorProcess)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from .processes import start_workers, stop_workers
from .server import RunPodSimulator

DESCRIPTION = "A loopback emulation of RunPod's serverless control plane, both sides of it, for tests and benchmarks."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpo.testing.runpod_sim", description=DESCRIPTION)
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--endpoint-id", default="sim")
    parser.add_argument("--worker-timeout", type=float, default=5.0, help="seconds of silence before a worker is lost")
    parser.add_argument("--take-hold", type=float, default=10.0, help="seconds a job-take long poll is held")
    parser.add_argument("--lost-jobs", choices=("fail", "requeue"), default="fail")
    parser.add_argument("--no-rate-limits", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON line with the URLs and the worker key")
    parser.add_argument("--workers", type=int, default=0, help="also start this many handler.py workers")
    args = parser.parse_args(argv)
    sim = RunPodSimulator(endpoint_id=args.endpoint_id, api_key=os.environ.get("HPO_SIM_API_KEY") or None,
                          port=args.port, worker_timeout_s=args.worker_timeout, take_hold_s=args.take_hold,
                          lost_jobs=args.lost_jobs, rate_limits=not args.no_rate_limits).start()
    if args.json:
        print(json.dumps({"url": sim.url, "endpoint_url": sim.endpoint_url, "worker_key": sim.worker_key,
                          "pid": os.getpid()}), flush=True)
    else:
        print(f"endpoint: {sim.endpoint_url}", flush=True)
        print("worker environment:", flush=True)
        for key, value in sim.worker_env("sim-worker-1").items():
            print(f"  {key}={value}", flush=True)
    procs = start_workers(sim, args.workers, wait=False) if args.workers else []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(procs)
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
