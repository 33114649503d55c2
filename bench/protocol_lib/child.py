"""One method-run in its own process: ``python -m protocol_lib.child SPEC.json`` (bench/ on PYTHONPATH).

The spec names the method, the dataset plan, the seed, the budget and the instant the parent launched this process
(its clock starts there). Writes trials.jsonl and notes.json into the spec's run_dir; exits 0 when the method ended
by itself.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str]) -> int:
    from .record import MethodRun

    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    run = MethodRun(spec)
    method = run.method
    try:
        if method == "default":
            from .controlled import run_default

            run_default(run)
        elif method in ("random", "tpe", "tpe-sh", "tpe-hb"):
            from .controlled import run_search

            sampler, _, pruner = method.partition("-")
            run_search(run, sampler, pruner or "none")
        elif method in ("native-tpe", "native-tpe-sh", "native-tpe-hb"):
            from .native import run_native_search

            pruner = method.split("-")[2] if method.count("-") == 2 else "none"
            run_native_search(run, "tpe", pruner)
        elif method in ("kt-hb", "native-kt-hb"):
            from .kerastuner_runs import run_kerastuner

            run_kerastuner(run, controlled=method == "kt-hb")
        elif method in ("hpo-1", "hpo-2"):
            from .hpo_method import run_hpo

            run_hpo(run, int(method[-1]), dict(spec.get("hpo_options") or {}))
        else:
            raise SystemExit(f"unknown method {method!r}")
    except Exception as exc:  # noqa: BLE001 - the parent reports it; what was recorded stays
        run.note(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
        return 1
    run.note(finished_s=run.elapsed())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
