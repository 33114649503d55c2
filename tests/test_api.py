"""The REST API: real runs through FastAPI's TestClient and through `hpo serve` (uvicorn on 127.0.0.1), auth,
traversal, validation, queueing, restarts, a TensorFlow-free API process, and a schemathesis fuzz of every route.

Real training uses synthetic_images with tiny settings. Fast checks (auth, 422s, the fuzz, resume) use an app whose
runs execute on an instant fake backend (``create_app(backend_factory=...)``), so fuzzed POST /runs bodies that
validate start a real orchestrator run but never train, download or import TensorFlow.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings

from hpo.api import check_bind, create_app, is_loopback
from hpo.backends import Backend
from hpo.cli import main
from hpo.protocol import TrialResult

from .conftest import hpo_env

FAST = dict(dataset="synthetic_images", trials=2, max_epochs_per_trial=1, data_fraction=0.3, quiet=True,
            pruner="none")
LONG = dict(FAST, trials=1, max_epochs_per_trial=10000, early_stopping_patience=10000, plot_generation="none")
TRAVERSALS = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
              "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/etc/passwd", "%2Fetc%2Fpasswd", "plots/../../../etc/passwd",
              "plots/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "%2e%2e", "run_state.json%00", "C:%5Cwindows%5Cwin.ini"]
FINAL = {"completed", "failed", "cancelled", "interrupted"}


class FakeBackend(Backend):
    """Instant trials: validation accuracy from the params, no data, no TensorFlow."""

    name = "fake"

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        acc = 0.5 + (sum(map(ord, json.dumps(job.params, sort_keys=True))) % 40) / 100
        return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=1, best_epoch=1,
                           val_metrics={"accuracy": acc, "loss": 1 - acc}, test_metrics={"accuracy": acc},
                           executed_on="fake")


def fake_app(output_dir: Path, **kw: Any):
    kw.setdefault("token", "")
    return create_app(output_dir, backend_factory=lambda config, run_dir: FakeBackend(), **kw)


def wait_until(get: Callable[[str], Any], run_id: str, check: Callable[[dict], bool], timeout: float,
               what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = get(f"/runs/{run_id}").json()
        if check(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} not {what} after {timeout} s: {json.dumps(status)[:3000]}")
        time.sleep(0.2)


def trial_started(status: dict) -> bool:
    assert status["state"] in ("queued", "running"), status
    return status["state"] == "running" and bool(status["progress"]["running"])


def check_finished_run(get: Callable[[str], Any], run_id: str) -> list[str]:
    """Trials, best and files of a finished FAST run; returns the file names."""
    trials = get(f"/runs/{run_id}/trials").json()["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    assert all(0.0 <= t["val_accuracy"] <= 1.0 and t["params"] for t in trials)
    best = get(f"/runs/{run_id}/best").json()["best"]
    assert best["value"] == max(t["value"] for t in trials)
    assert best["params"] == next(t["params"] for t in trials if t["number"] == best["number"])
    names = [f["name"] for f in get(f"/runs/{run_id}/files").json()["files"]]
    assert {"config.json", "trials.csv", "best.json", "best_model.keras", "run_state.json"} <= set(names)
    csv_text = get(f"/runs/{run_id}/files/trials.csv").text
    assert csv_text.startswith("number,state,value") and len(csv_text.strip().splitlines()) == 3
    plots = [n for n in names if n.startswith("plots/") and n.endswith(".png")]
    for name in plots[:1] + [n for n in names if n == "report.html"]:  # plots come from plot_generation
        response = get(f"/runs/{run_id}/files/{name}")
        assert response.status_code == 200 and len(response.content) > 100
        assert response.headers["content-type"].startswith("image/png" if name.endswith(".png") else "text/html")
    for path in TRAVERSALS:
        assert get(f"/runs/{run_id}/files/{path}").status_code == 404, path
    return names


# -- TestClient: queue, cancel, a restart's view, a full run -----------------------------------------------------------

def test_testclient_queues_cancels_and_completes_real_runs(tmp_path):
    out = tmp_path / "runs"
    with TestClient(create_app(out, max_active_runs=1, token="")) as client:
        r = client.post("/runs", json=dict(LONG, run_name="long"))
        assert r.status_code == 201 and r.headers["location"] == "/runs/long", r.text
        assert r.json() == {"id": "long", "state": "running", "resuming": False, "location": "/runs/long"}
        r = client.post("/runs", json=dict(FAST, run_name="short"))
        assert r.status_code == 201 and r.json()["state"] == "queued"  # max_active_runs=1: queued, not rejected
        short = client.get("/runs/short").json()
        assert short["state"] == "queued" and short["queue_position"] == 0 and short["trials"] == 2
        assert client.post("/runs", json=dict(FAST, run_name="short")).status_code == 409  # already queued

        wait_until(client.get, "long", trial_started, 120, "training")
        assert [r["id"] for r in client.get("/runs").json()["runs"]] == ["short", "long"]  # newest first

        # what a restarted server sees on disk meanwhile: the run in progress and the queued one are interrupted
        restarted = TestClient(create_app(out, token="")).get("/runs").json()["runs"]
        assert {r["id"]: (r["state"], r["resumable"]) for r in restarted} == {
            "short": ("interrupted", True), "long": ("interrupted", True)}

        r = client.post("/runs/long/cancel")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        long = wait_until(client.get, "long", lambda s: s["state"] in FINAL, 60, "cancelled")
        assert long["state"] == "cancelled" and long["resumable"] is True
        (trial,) = client.get("/runs/long/trials").json()["trials"]
        assert trial["state"] == "interrupted" and trial["params"]  # retried when the run resumes
        assert client.post("/runs/long/cancel").status_code == 409

        done = wait_until(client.get, "short", lambda s: s["state"] in FINAL, 180, "finished")
        assert done["state"] == "completed", done
        assert done["progress"]["done"] == 2 and done["best"]["trial"] is not None and done["eta_s"] == 0
        check_finished_run(client.get, "short")
        with client.stream("GET", "/runs/short/events") as events:
            lines = list(events.iter_lines())
        assert lines[0] == "event: end" and json.loads(lines[1][len("data: "):])["state"] == "completed"
        assert client.get("/runs/nope").status_code == 404
        assert client.get("/runs/nope/files/trials.csv").status_code == 404


# -- a real server: `hpo serve` (uvicorn) with a token, killed mid-run, then restarted ---------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_get(port: int, path: str, token: str) -> int:
    """A request line sent exactly as written (HTTP clients normalize ``..`` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_uvicorn_server_runs_cancels_and_survives_a_restart(tmp_path):
    out, port, token = tmp_path / "runs", free_port(), "s3cret-token"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo", "serve", "host=127.0.0.1", f"port={port}", f"output_dir={out}",
         "max_active_runs=2"], cwd=tmp_path, env=hpo_env(HPO_API_TOKEN=token), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    worker_pids: list[int] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:  # no token needed
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        assert httpx.get(f"{base}/runs").status_code == 401
        assert httpx.get(f"{base}/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{base}/runs", json=FAST).status_code == 401
        assert httpx.get(f"{base}/openapi.json").json()["paths"]["/runs/{run_id}/files/{name}"]

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            assert any(d["name"] == "synthetic_images" for d in client.get("/datasets").json())
            r = client.post("/runs", json=dict(FAST, run_name="short", plot_generation="none"))
            assert r.status_code == 201, r.text
            bad = client.post("/runs", json=dict(FAST, trials=0, max_epochs_per_trial="many"))
            assert bad.status_code == 422
            assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("body", "trials"),
                                                                       ("body", "max_epochs_per_trial")}
            with client.stream("GET", "/runs/short/events", timeout=180) as events:  # watch it to the end
                kinds = [line for line in events.iter_lines() if line.startswith("event: ")]
            assert kinds[-1] == "event: end" and "event: status" in kinds
            done = client.get("/runs/short").json()
            assert done["state"] == "completed", done
            check_finished_run(client.get, "short")
            for path in ("/runs/short/files/../../etc/passwd", "/runs/short/files/..%2F..%2Fetc%2Fpasswd",
                         "/runs/short/files/%2e%2e/%2e%2e/etc/passwd", "/runs/short/files//etc/passwd",
                         "/runs/..%2F..%2Fetc/files/passwd", "/runs/short/files/plots/../../../../etc/passwd",
                         "/runs/short/files/..", "/runs/short/files/../short/../../runs/short/trials.csv",
                         "/runs/short/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/runs/../../etc/passwd"):
                assert raw_get(port, path, token) == 404, path

            for name in ("cancelme", "killed"):
                assert client.post("/runs", json=dict(LONG, run_name=name)).status_code == 201
            for name in ("cancelme", "killed"):
                status = wait_until(client.get, name, trial_started, 120, "training")
                worker_pids += [int(p) for t in status["progress"]["running"]
                                for p in re.findall(r"pid (\d+)", t["where"])]
            assert client.post("/runs/cancelme/cancel").status_code == 202
            cancelled = wait_until(client.get, "cancelme", lambda s: s["state"] in FINAL, 60, "cancelled")
            assert cancelled["state"] == "cancelled" and cancelled["resumable"]
        os.killpg(server.pid, signal.SIGKILL)  # the server dies with "killed" in progress
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        for pid in worker_pids:  # workers live in their own session; they stop when their stdin closes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()

    with TestClient(fake_app(out)) as client:  # a new server on the same folder
        runs = {r["id"]: r for r in client.get("/runs").json()["runs"]}
        assert {k: (v["state"], v["resumable"]) for k, v in runs.items()} == {
            "short": ("completed", False), "cancelme": ("cancelled", True), "killed": ("interrupted", True)}
        assert runs["short"]["best"]["params"] and runs["short"]["progress"]["done"] == 2
        check_finished_run(client.get, "short")
        assert [t["state"] for t in client.get("/runs/killed/trials").json()["trials"]] == ["running"]
        # resumable: the same run_name continues the study; the killed trial's parameters are retried
        r = client.post("/runs", json=dict(LONG, run_name="killed", max_epochs_per_trial=1, early_stopping_patience=1))
        assert r.status_code == 201 and r.json()["resuming"] is True
        resumed = wait_until(client.get, "killed", lambda s: s["state"] in FINAL, 60, "finished")
        assert resumed["state"] == "completed", resumed
        old, new = client.get("/runs/killed/trials").json()["trials"]
        assert old["state"] == "interrupted" and new["state"] == "complete" and new["retry_of"] == 0
        assert new["params"] == old["params"]


# -- auth, validation, serve -------------------------------------------------------------------------------------------

def test_token_is_required_everywhere_but_health(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_API_TOKEN", "from-env")
    app = create_app(tmp_path, backend_factory=lambda c, d: FakeBackend())  # token=None: HPO_API_TOKEN
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        routes = [("get", "/datasets"), ("get", "/runs"), ("post", "/runs"), ("get", "/runs/x"),
                  ("get", "/runs/x/trials"), ("get", "/runs/x/best"), ("post", "/runs/x/cancel"),
                  ("get", "/runs/x/files"), ("get", "/runs/x/files/trials.csv"), ("get", "/runs/x/events")]
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic from-env"},
                        {"Authorization": "Bearer from-env-and-more"},
                        {"Authorization": "Bearer fröm-env".encode("latin-1")}):
            for method, path in routes:
                r = client.request(method, path, headers=headers, json=FAST if method == "post" else None)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": "Bearer from-env"}
        assert client.get("/runs", headers=ok).json() == {"runs": []}
        assert client.get("/runs/x", headers=ok).status_code == 404


def test_a_bad_body_gets_422_naming_each_field(tmp_path):
    with TestClient(fake_app(tmp_path)) as client:
        r = client.post("/runs", json={"dataset": "synthetic_images", "trials": 0, "trails": 3, "mode": "fast",
                                       "activation": "sigmoid", "data_fraction": 2})
        assert r.status_code == 422
        errors = {e["loc"][-1]: e["msg"] for e in r.json()["detail"]}
        assert set(errors) == {"trials", "trails", "mode", "activation", "data_fraction"}
        assert "did you mean trials" in errors["trails"] and "allowed" in errors["mode"]
        r = client.post("/runs", json={"trials": 2})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "dataset"]
        r = client.post("/runs", json={"dataset": "nope", "seed": -1})
        assert {e["loc"][-1] for e in r.json()["detail"]} == {"dataset", "seed"}
        for body in (b"", b"[]", b"not json", b'"synthetic_images"', b'{"dataset": "synthetic_images", "pins": 3}'):
            r = client.post("/runs", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, body
        r = client.post("/runs", json=dict(FAST, output_dir="/tmp/elsewhere"))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "output_dir"]
        r = client.post("/runs", json=dict(FAST, storage="sqlite:////tmp/anywhere.db"))  # a file on the server
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "storage"]
        assert client.post("/runs", json=dict(FAST, resume=True)).status_code == 422  # nothing to resume
        # own data is a path on the server and an own model runs code: command line and notebooks only
        (tmp_path.parent / "data.npz").write_bytes(b"x")
        r = client.post("/runs", json=dict(FAST, dataset=str(tmp_path.parent / "data.npz"), trials=0))
        assert r.status_code == 422
        errors = {e["loc"][-1]: e["msg"] for e in r.json()["detail"]}
        assert set(errors) == {"dataset", "trials"} and "not allowed over the API" in errors["dataset"]
        r = client.post("/runs", json=dict(FAST, model="os:system", space={"a": [1, 2]}, data_sha256="0" * 64))
        assert r.status_code == 422
        assert {e["loc"][-1] for e in r.json()["detail"]} == {"model", "space", "data_sha256"}
        assert not any(tmp_path.iterdir())  # nothing was written


def test_serve_refuses_a_remote_host_without_a_token(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "token", False)
    check_bind("0.0.0.0", None, True)
    assert main(["serve", "host=0.0.0.0"]) == 2
    assert "HPO_API_TOKEN" in capsys.readouterr().err
    assert main(["serve", "port=http"]) == 2
    assert main(["serve", "max_active_runs=0"]) == 2


def test_the_api_process_does_not_import_tensorflow(tmp_path):
    code = textwrap.dedent(f"""
        import json, sys, time
        from fastapi.testclient import TestClient
        from hpo.api import create_app
        from hpo.backends import Backend
        from hpo.protocol import TrialResult

        class Fake(Backend):
            def run(self, job, **kw):
                return TrialResult(trial_id=job.trial_id, status="completed", val_metrics={{"accuracy": 0.5}})

        with TestClient(create_app({str(tmp_path)!r}, token="", backend_factory=lambda c, d: Fake())) as c:
            assert c.get("/health").status_code == 200
            assert c.get("/datasets").status_code == 200 and c.get("/runs").status_code == 200
            assert c.get("/openapi.json").status_code == 200
            assert c.post("/runs", json={{"dataset": "cifar10", "trials": 0}}).status_code == 422
            r = c.post("/runs", json={{"dataset": "synthetic_images", "trials": 2, "plot_generation": "none"}})
            run = r.json()["id"]
            while c.get("/runs/" + run).json()["state"] not in ("completed", "failed"):
                time.sleep(0.05)
            assert c.get("/runs/" + run).json()["state"] == "completed"
            assert len(c.get("/runs/" + run + "/trials").json()["trials"]) == 2
            assert c.get("/runs/" + run + "/best").json()["best"] is not None
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=hpo_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


# -- property-based fuzz of every route against the OpenAPI schema -----------------------------------------------------

@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    """The fuzzed app: runs execute on the instant fake backend (valid POST /runs bodies start real orchestrator
    runs that never train); one finished run is in the folder, so listing and reading runs has data to serve."""
    out = tmp_path_factory.mktemp("fuzz")
    app = fake_app(out, max_active_runs=1)
    with TestClient(app) as client:
        client.post("/runs", json={"dataset": "synthetic_images", "trials": 2, "run_name": "seed",
                                   "plot_generation": "none"})
        wait_until(client.get, "seed", lambda s: s["state"] in FINAL, 30, "finished")
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_fuzz_finds_no_server_error(case):
    params = case.path_parameters or {}
    if "run_id" in params and len(str(params["run_id"])) % 2:  # about half the cases read the finished run
        params["run_id"] = "seed"
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: " \
                                       f"{response.text[:500]}"
