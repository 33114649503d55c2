"""`hpo dashboard RUN_DIR` serves the run's study with optuna-dashboard (a real server on a loopback port, started
as a user would: `python -m hpo dashboard`); the study read back through the dashboard's HTTP API is the run's."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import hpo
from hpo.cli import main

from .conftest import hpo_env, interruptible
from .test_rundir import FAST, Instant

START_TIMEOUT_S = 120  # generous cap on a loaded machine; the wait ends as soon as the URL is printed
URL_LINE = re.compile(r"optuna-dashboard: (http://127\.0\.0\.1:(\d+))(/dashboard/studies/(\d+))")


class Dashboard:
    def __init__(self, proc: subprocess.Popen[str], base: str, page: str, study_id: int, lines: list[str]) -> None:
        self.proc, self.base, self.page, self.study_id, self.lines = proc, base, page, study_id, lines

    def get(self, path: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
        request = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def json(self, path: str) -> dict:
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


@contextlib.contextmanager
def running_dashboard(run_dir: Path, *options: str) -> Iterator[Dashboard]:
    """`python -m hpo dashboard RUN_DIR port=0 ...` in a subprocess; yields once it printed its URL; stopped with
    SIGTERM at the end (it must then exit 0 and say so)."""
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "dashboard", str(run_dir), "port=0", *options],
                            env=hpo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=interruptible)
    lines: list[str] = []
    found: queue.Queue[re.Match[str] | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = URL_LINE.search(line)
            if match:
                found.put(match)
        found.put(None)  # the process closed its output: it ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        try:
            match = found.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            match = None
        assert match is not None, f"the dashboard printed no URL:\n{''.join(lines)}"
        yield Dashboard(proc, match.group(1), match.group(1) + match.group(3), int(match.group(4)), lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        reader.join(timeout=60)
        assert "dashboard stopped" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def make_run(root: Path, name: str = "r", trials: int = 3) -> hpo.OptimizationResult:
    return hpo.optimize(dataset="synthetic_images", trials=trials, output_dir=str(root), run_name=name,
                        backend=Instant(), **FAST)


def test_the_dashboard_serves_the_runs_study_read_back_through_its_api(tmp_path):
    result = make_run(tmp_path / "made", trials=3)
    # served from where the folder is now: a moved run folder keeps its study (hpo.rundir opens it)
    run_dir = tmp_path / "moved" / "r"
    shutil.move(tmp_path / "made" / "r", run_dir)
    with running_dashboard(run_dir) as dash:
        studies = dash.json("/api/studies")["study_summaries"]
        assert [(s["study_id"], s["study_name"]) for s in studies] == [(dash.study_id, "r")]
        assert studies[0]["directions"] == ["maximize"]

        detail = dash.json(f"/api/studies/{dash.study_id}")
        assert detail["name"] == "r"
        assert len(detail["trials"]) == len(result.trials) == 3
        assert sorted(t["number"] for t in detail["trials"]) == [0, 1, 2]
        assert all(t["state"] == "Complete" for t in detail["trials"])
        (best,) = detail["best_trials"]
        assert best["number"] == result.best_trial_number
        assert best["values"] == [result.best_value]
        served = {p["name"]: p["param_external_value"] for p in best["params"]}
        assert served == {k: str(v) for k, v in result.best_params.items()}

        # the page and its bundled JavaScript come from the installed package (offline), also to clients that
        # send no Accept-Encoding (optuna-dashboard alone answers those with 500)
        status, page, headers = dash.get(f"/dashboard/studies/{dash.study_id}")
        assert status == 200 and b"<title>Optuna Dashboard</title>" in page and b"/static/bundle.js" in page
        assert "default-src 'self'" in headers.get("Content-Security-Policy", "")
        status, bundle, _ = dash.get("/static/bundle.js")
        assert status == 200 and len(bundle) > 100_000
        status, gz, headers = dash.get("/static/bundle.js", **{"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("Content-Encoding") == "gzip" and gz[:2] == b"\x1f\x8b"
    assert "3 trials" in "".join(dash.lines)


def test_without_the_extra_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    make_run(tmp_path, trials=1)
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # `import optuna_dashboard` raises ImportError
    assert main(["dashboard", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "hpo[dashboard]"' in err and "optuna-dashboard" in err and "Traceback" not in err


def test_a_non_loopback_host_is_refused_unless_allowed(tmp_path, capsys):
    make_run(tmp_path, trials=1)
    for host in ("0.0.0.0", "192.168.1.10", "example.org"):
        assert main(["dashboard", str(tmp_path / "r"), f"host={host}"]) == 2
        err = capsys.readouterr().err
        assert f"host={host} is reachable from other machines" in err and "allow_remote=true" in err
    from hpo.dashboard import check_dashboard_bind

    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        check_dashboard_bind(host, allow_remote=False)  # loopback: served
    check_dashboard_bind("0.0.0.0", allow_remote=True)  # explicitly allowed


def test_bad_options_and_folders_are_clear_errors(tmp_path, capsys):
    make_run(tmp_path, trials=1)
    run_dir = str(tmp_path / "r")
    cases = [
        ([run_dir, "port=abc"], "port='abc' is not a port number; allowed: 0 to 65535"),
        ([run_dir, "port=70000"], "port='70000' is not a port number"),
        ([run_dir, "allow_remote=maybe"], "allow_remote='maybe' is not a boolean"),
        ([run_dir, "prot=1"], "unknown dashboard option 'prot' (did you mean port?)"),
        ([run_dir, "8080"], "malformed argument '8080'"),
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(tmp_path)], "is not an hpo run folder"),
    ]
    for argv, message in cases:
        assert main(["dashboard", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    (tmp_path / "r" / "study.db").unlink()
    assert main(["dashboard", run_dir]) == 2
    assert "has no study.db" in capsys.readouterr().err


def test_a_port_in_use_is_a_clear_error(tmp_path, capsys):
    import socket

    make_run(tmp_path, trials=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(tmp_path / "r"), f"port={port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "port=0" in err
