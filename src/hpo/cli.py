"""The command line: ``main(argv) -> exit code``, testable in-process.

    hpo optimize key=value ...     run (or resume) an optimization
    hpo datasets                   the datasets, their shapes, and whether their files are here
    hpo show RUN_DIR               summary of a finished or running run
    hpo serve key=value ...        the REST API (host, port, max_active_runs, allow_remote, output_dir, ...)
    hpo dashboard RUN_DIR ...      the run's study in optuna-dashboard (host, port, allow_remote, storage)

Exit codes: 0 done, 1 the run failed, 2 usage or configuration error (nothing written), 130 interrupted.
One place (:func:`main`) maps exceptions to exit codes; user mistakes never print a traceback.
"""

from __future__ import annotations

import argparse
import os
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .version import __version__
from .exceptions import BackendUnavailable, ConfigError, DatasetError, HPOError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # no SystemExit from deep inside; main() maps it to exit code 2
        raise _UsageError(f"{message}\n{self.format_usage().strip()}")


def _build_parser() -> _Parser:
    from .config_docs import options_help

    parser = _Parser(prog="hpo", description="Hyperparameter optimization for Keras models, locally or on RunPod.")
    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    opt = sub.add_parser("optimize", help="run or resume an optimization (key=value options)",
                         description="Run an optimization. Example: hpo optimize dataset=fashion_mnist trials=8",
                         epilog=options_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    opt.add_argument("options", nargs="*", metavar="key=value")
    ds = sub.add_parser("datasets", help="list datasets and whether their files are available offline")
    ds.add_argument("--json", action="store_true", help="machine-readable output")
    runs = sub.add_parser("runs", help="list the runs of an output folder (name, dataset, state, best, trials)")
    runs.add_argument("output_dir", nargs="?", default="optimization_results")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    show = sub.add_parser("show", help="summarize a run (its folder, or a shared study: storage=URL run_name=NAME)",
                          description="Summarize a run: hpo show RUN_DIR [storage=URL], or hpo show storage=URL "
                                      "run_name=NAME for a study shared by several processes (every process's "
                                      "trials are shown; storage= gives the password config.json does not keep)")
    show.add_argument("target", nargs="+", metavar="RUN_DIR | storage=URL run_name=NAME")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--open", action="store_true", help="print the path of the run's report.html")
    serve = sub.add_parser("serve", help="serve the REST API (key=value options)",
                           description="Serve the REST API with uvicorn. Example: hpo serve port=8000",
                           epilog="keys: host (default 127.0.0.1), port (8000), max_active_runs (1; more runs are "
                                  "queued), allow_remote (false: a non-loopback host needs HPO_API_TOKEN), "
                                  "output_dir (optimization_results), max_body_bytes (65536: larger POST bodies "
                                  "get 413), runpod_endpoints (comma-separated RunPod endpoint URLs or ids runs may "
                                  "use besides RUNPOD_ENDPOINT_URL / RUNPOD_ENDPOINT_ID; callers cannot name "
                                  "others). With HPO_API_TOKEN set (environment or .env) every route but /health "
                                  "needs Authorization: Bearer <token>.")
    serve.add_argument("options", nargs="*", metavar="key=value")
    dash = sub.add_parser("dashboard", help="serve a run's study in optuna-dashboard (extra: hpo[dashboard])",
                          description="Open a run's Optuna study in optuna-dashboard. Example: hpo dashboard "
                                      "optimization_results/RUN port=8080",
                          epilog="keys: host (default 127.0.0.1), port (8080; 0: any free port), allow_remote "
                                 "(false: a non-loopback host is refused; the dashboard has no login), storage (the "
                                 "study's URL when config.json keeps it masked)")
    dash.add_argument("run_dir", metavar="RUN_DIR")
    dash.add_argument("options", nargs="*", metavar="key=value")
    return parser


def _print(*args: Any) -> None:
    print(*args, flush=True)


def _cmd_optimize(args: argparse.Namespace) -> int:
    from .config import config_from_options, parse_kv
    from .redact import mask_text
    from .session import optimize

    from .cli_options import merge_options_file

    config = config_from_options(merge_options_file(parse_kv(args.options)))
    result = optimize(config)
    _print("")
    _print(f"run folder: {result.run_dir}")
    _print(f"trials: {result.completed} completed, {result.pruned} pruned, {result.failed} failed")
    for note in result.notes:
        _print(f"note: {note}")
    if result.best_trial_number is not None:
        _print(f"best trial: #{result.best_trial_number} value={_fmt(result.best_value)} "
               f"val_accuracy={_fmt(result.best_val_accuracy)} test_accuracy={_fmt(result.best_test_accuracy)}")
        _print(f"best params: {json.dumps(result.best_params, sort_keys=True)}")
    if result.interrupted:  # the same options as given (a study started with others is refused), this folder
        import shlex

        given = [o for o in args.options if o.split("=", 1)[0] not in ("run_name", "output_dir", "resume")]
        words = [f"run_name={Path(result.run_dir).name}", f"output_dir={Path(result.run_dir).parent}", *given]
        _print(mask_text("interrupted. Resume with: hpo optimize " + " ".join(shlex.quote(w) for w in words)))
        return EXIT_INTERRUPTED
    if result.stop_reason:
        _print(f"stopped: {mask_text(result.stop_reason)}")
    if result.completed == 0:
        budget = config.time_budget_minutes
        hint = "" if not budget or "time_budget_minutes" not in (result.stop_reason or "") else (
            f" within time_budget_minutes={budget:g} ({budget * 60:.0f} s, the workers' start-up included): give the "
            "run more time")
        print(f"error: no trial completed{hint}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if result.aborted else EXIT_OK


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _cmd_datasets(args: argparse.Namespace) -> int:
    from . import catalog, datafiles

    rows = []
    for name in catalog.DATASET_NAMES:
        info = catalog.info(name)
        found = catalog.is_generated(name) or datafiles.locate(name) is not None
        rows.append({"name": name, "modality": info.modality, "input_shape": list(info.input_shape),
                     "classes": info.num_classes, "available_offline": found, "description": info.description})
    if args.json:
        _print(json.dumps(rows, indent=2))
        return EXIT_OK
    _print(f"{'dataset':<20}{'modality':<10}{'shape':<14}{'classes':>8}  offline")
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        _print(f"{r['name']:<20}{r['modality']:<10}{shape:<14}{r['classes']:>8}  "
               f"{'yes' if r['available_offline'] else 'no (downloaded on first use)'}")
    return EXIT_OK


def _show_target(items: list[str]) -> tuple[Path | None, dict[str, str]]:
    from .config import parse_kv

    folders = [i for i in items if "=" not in i]
    options = parse_kv([i for i in items if "=" in i])
    unknown = sorted(set(options) - {"storage", "run_name"})
    if unknown:
        raise ConfigError(f"hpo show takes storage= and run_name= options, not {', '.join(unknown)}")
    if len(folders) > 1:
        raise ConfigError(f"hpo show takes one run folder, got {len(folders)}: {', '.join(folders)}")
    if not folders and not ("storage" in options and "run_name" in options):
        raise ConfigError("hpo show needs a run folder, or storage=URL and run_name=NAME")
    return (Path(folders[0]) if folders else None), options


def _cmd_runs(args: argparse.Namespace) -> int:
    from .rundir import list_runs

    folder = args.output_dir.split("=", 1)[1] if args.output_dir.startswith("output_dir=") else args.output_dir
    if not Path(folder).is_dir():
        raise ConfigError(f"{folder} {'is a file, not a folder' if Path(folder).exists() else 'does not exist'}; give "
                          "the folder that holds the runs (hpo runs OUTPUT_DIR)")
    rows = list_runs(folder)
    if args.json:
        _print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        _print(f"no runs in {folder}")
        return EXIT_OK
    _print(f"{'run':<40} {'dataset':<18} {'state':<12} {'best':>8} {'trials':>7}")
    for r in rows:
        best = _fmt(r["best"]) if r["best"] is not None else "-"
        _print(f"{r['name']:<40} {r['dataset'] or '?':<18} {r['state']:<12} {best:>8} {r['trials']:>7}")
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from .rundir import load_results, load_study_results

    run_dir, options = _show_target(args.target)
    if run_dir is None:
        result = load_study_results(options["storage"], options["run_name"])
        run_dir = Path(".")
    else:
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir} {'is a file, not a run folder' if run_dir.exists() else 'does not exist'}")
        result = load_results(run_dir, storage=options.get("storage"))
    if args.open:
        report = run_dir / "report.html"
        if not report.is_file():
            raise ConfigError(f"{run_dir} has no report.html (plot_generation=none, or the run has not finished)")
        _print(str(report.resolve()))
        return EXIT_OK
    if args.json:
        _print(json.dumps(result.to_dict(), indent=2, default=str))
        return EXIT_OK
    _print(f"run: {result.run_dir}")
    _print(f"trials: {result.completed} completed, {result.pruned} pruned, {result.failed} failed, "
           f"{sum(t['state'] == 'running' for t in result.trials)} running")
    processes: dict[str, int] = {}
    for t in result.trials:
        if t.get("process"):
            processes[t["process"]] = processes.get(t["process"], 0) + 1
    if len(processes) > 1:
        _print("processes: " + ", ".join(f"{p} ran {n}" for p, n in sorted(processes.items())))
    _print(f"epochs trained: {sum(t['epochs_trained'] or 0 for t in result.trials)}")
    if result.best_trial_number is not None:
        _print(f"best trial: #{result.best_trial_number} value={_fmt(result.best_value)} "
               f"val_accuracy={_fmt(result.best_val_accuracy)} test_accuracy={_fmt(result.best_test_accuracy)}")
        _print(f"best params: {json.dumps(result.best_params, sort_keys=True)}")
    if result.pareto_front:
        _print("pareto front (val_accuracy, overall_health):")
        for entry in result.pareto_front:
            _print(f"  #{entry['number']}: {_fmt(entry['val_accuracy'])}, {_fmt(entry['overall_health'])}")
    _print(f"{'#':>4} {'state':<11} {'value':>8} {'val_acc':>8} {'test_acc':>8} {'epochs':>6}  where")
    for t in result.trials:
        _print(f"{t['number']:>4} {t['state']:<11} {_fmt(t['value']) if t['value'] is not None else '-':>8} "
               f"{_fmt(t['val_accuracy']) if t['val_accuracy'] is not None else '-':>8} "
               f"{_fmt(t['test_accuracy']) if t['test_accuracy'] is not None else '-':>8} "
               f"{t['epochs'] if t['epochs'] is not None else '-':>6}  {t['executed_on'] or ''}")
    return EXIT_OK


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .redact import install_log_masking, mask_text

    install_log_masking()
    try:
        parser = _build_parser()
        if argv[:1] == ["optimize"]:  # --key value / --key=value are written as key=value
            from .cli_options import normalize_key_values

            argv = ["optimize", *normalize_key_values(argv[1:])]
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "optimize":
            previous = signal.getsignal(signal.SIGTERM)
            try:
                signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
            except ValueError:  # not the main thread (embedded use)
                previous = None
            try:
                return _cmd_optimize(args)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
        if args.command == "runs":
            return _cmd_runs(args)
        if args.command == "serve":
            try:
                from .api import serve
            except ImportError as exc:  # the api extra (fastapi, uvicorn) is not installed
                raise ConfigError(f'hpo serve needs the REST API extra ({exc.name} is missing): '
                                  'pip install "hpo[api]"') from None
            from .config import parse_kv

            return serve(parse_kv(args.options))
        if args.command == "dashboard":
            from .config import parse_kv
            from .dashboard import serve_dashboard

            return serve_dashboard(args.run_dir, parse_kv(args.options))
        if args.command == "datasets":
            return _cmd_datasets(args)
        return _cmd_show(args)
    except _UsageError as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, DatasetError) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (hpo runs | head): nothing to say, and nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no complaint when Python flushes at exit
        return 0
    except BackendUnavailable as exc:
        print(f"error: the execution backend is unavailable: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except HPOError as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
