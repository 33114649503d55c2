"""``hpo dashboard RUN_DIR``: the run's Optuna study in optuna-dashboard (the ``dashboard`` extra).

    hpo dashboard optimization_results/cifar10-20250101-120000              # http://127.0.0.1:8080/dashboard/...
    hpo dashboard RUN_DIR port=0                                             # any free port (the URL is printed)
    hpo dashboard RUN_DIR storage=postgresql://user:pw@db/hpo                # a study whose password is not stored

The study is opened through :func:`hpo.rundir.open_run_study`, the one place that knows where a run's study lives
(a moved or copied folder keeps working). optuna-dashboard has no authentication and can edit the study (notes,
deletions): like ``hpo serve``, a host other than loopback is refused unless ``allow_remote=true``.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .exceptions import ConfigError
from .option_types import is_loopback
from .redact import mask_url

__all__ = ["DASHBOARD_DEFAULTS", "dashboard_options", "check_dashboard_bind", "serve_dashboard"]

DASHBOARD_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 8080, "allow_remote": False, "storage": ""}
INSTALL_HINT = 'pip install "hpo[dashboard]"'


def dashboard_options(options: dict[str, str]) -> dict[str, Any]:
    """Typed options of ``hpo dashboard`` (host, port, allow_remote, storage); ConfigError naming a bad one."""
    import difflib

    values = dict(DASHBOARD_DEFAULTS)
    for key, raw in options.items():
        if key not in DASHBOARD_DEFAULTS:
            close = difflib.get_close_matches(key, list(DASHBOARD_DEFAULTS), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown dashboard option {key!r}{hint}; allowed: {', '.join(DASHBOARD_DEFAULTS)}",
                              field=key)
        text = raw.strip()
        if key == "allow_remote":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"allow_remote={text!r} is not a boolean; allowed: true, false, 1, 0, yes, no",
                                  field=key)
            values[key] = text.lower() in ("true", "1", "yes")
        elif key == "port":
            if not (text.isascii() and text.isdigit()) or int(text) > 65535:
                raise ConfigError(f"port={text!r} is not a port number; allowed: 0 to 65535 (0: any free port)",
                                  field=key)
            values[key] = int(text)
        elif key == "host":
            if not text or any(c.isspace() or c in "/?#@" for c in text):
                raise ConfigError(f"host={text!r} is not a host name or address; allowed: e.g. 127.0.0.1, ::1, "
                                  "localhost", field=key)
            values[key] = text
        else:
            values[key] = text
    return values


def check_dashboard_bind(host: str, allow_remote: bool) -> None:
    """optuna-dashboard has no login and can change the study: beyond loopback only when explicitly allowed."""
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"host={host} is reachable from other machines, and optuna-dashboard has no login: anyone "
                          "could read and edit the study. Serve on 127.0.0.1 (the default), or pass "
                          "allow_remote=true", field="host")


def _load_dashboard() -> Any:
    try:
        import optuna_dashboard
    except ImportError as exc:
        missing = f" ({exc.name} is missing)" if exc.name and exc.name != "optuna_dashboard" else ""
        raise ConfigError(f"hpo dashboard needs optuna-dashboard, which is not installed{missing}: "
                          f"{INSTALL_HINT}") from None
    return optuna_dashboard


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - one line per request is noise
        pass


def _default_accept_encoding(app: Any) -> Any:
    """optuna-dashboard answers 500 for its static files to clients that send no Accept-Encoding (curl, scripts)."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        environ.setdefault("HTTP_ACCEPT_ENCODING", "identity")
        return app(environ, start_response)

    return wrapped


def _make_server(host: str, port: int, app: Any) -> WSGIServer:
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    server_class = type("_Server", (_ThreadedServer,), {"address_family": family})
    try:
        server = server_class((bare, port), _QuietHandler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another port "
                          "(port=0: any free one)", field="port") from None
    server.set_app(app)
    return server


def serve_dashboard(run_dir: str | Path, options: dict[str, str], *,
                    out: Callable[[str], None] | None = None) -> int:
    """Serve the run's study until Ctrl-C or SIGTERM (then 0). ConfigError for bad options, a folder that is no run,
    a missing study, or optuna-dashboard not installed (the CLI exits 2)."""
    from .rundir import open_run_study

    say = out or (lambda line: print(line, flush=True))
    opts = dashboard_options(options)
    check_dashboard_bind(opts["host"], opts["allow_remote"])
    optuna_dashboard = _load_dashboard()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} {'is a file' if run_dir.exists() else 'does not exist'}; give a run folder "
                          "(e.g. optimization_results/<run_name>)")
    storages: dict[str, Any] = {}
    study, _doc = open_run_study(run_dir, storage=opts["storage"] or None, storage_cache=storages)
    (url, storage), = storages.items()
    study_id = storage.get_study_id_from_name(study.study_name)
    app = _default_accept_encoding(optuna_dashboard.wsgi(storage))
    server = _make_server(opts["host"], opts["port"], app)
    port = server.server_address[1]
    shown = f"[{opts['host'].strip('[]')}]" if ":" in opts["host"] else opts["host"]
    say(f"study {study.study_name!r} ({len(study.trials)} trials) from {mask_url(url)}")
    say(f"optuna-dashboard: http://{shown}:{port}/dashboard/studies/{study_id}")
    say("Ctrl-C stops it")

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread (embedded use): Ctrl-C only
        previous = None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    say("dashboard stopped")
    return 0

