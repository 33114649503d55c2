"""The REST API as an attacker and a careless user would try it (issue 13): bodies that are not JSON or too big,
RunPod endpoints named by the caller (the key must reach none of them), planted secrets, out-of-range seeds, run
folders another process holds, and progress counts after a crash.

Runs execute on the instant fake backend of test_api.py unless a test needs the real one (nothing here trains).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hpo.api import LOOPBACK_NAMES, _serve_options, create_app, serve
from hpo.api_limits import DEFAULT_MAX_BODY_BYTES
from hpo.backends import Backend
from hpo.cli import main
from hpo.exceptions import ConfigError
from hpo.protocol import TrialResult
from hpo.runlock import RunLock, RunLocked

from .conftest import hpo_env
from .test_api import FINAL, FakeBackend, fake_app, free_port, wait_until

FAST = dict(dataset="synthetic_images", trials=2, plot_generation="none", quiet=True)
PLANTED_KEY = "rpa_PLANTED_KEY_4f1d9c"
TOKEN = "tok-7e3a1b"


@pytest.fixture(autouse=True)
def _no_endpoint_from_the_environment(monkeypatch):
    for var in ("RUNPOD_ENDPOINT_URL", "RUNPOD_ENDPOINT_ID", "HPO_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: contents and modification time (to show nothing was touched)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


class GatedBackend(FakeBackend):
    """Trials block until ``gate`` is set (or the trial is cancelled); ``entered`` is set when one is running."""

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        self.entered.set()
        while not self.gate.wait(0.05):
            if cancel is not None and cancel.cancelled:
                return TrialResult(trial_id=job.trial_id, status="stopped", executed_on="fake")
        return super().run(job)


# -- 1. content type and size ------------------------------------------------------------------------------------------

def test_post_bodies_must_be_json_else_415_before_anything_happens(tmp_path):
    out = tmp_path / "runs"
    body = json.dumps(dict(FAST, run_name="r")).encode()
    with TestClient(fake_app(out)) as client:
        for content_type in (None, "text/plain", "text/plain;charset=utf-8", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=x", "application/json-patch+json", "application/jsonx",
                             "application/json; charset=latin-1", "application/json; foo=bar", "text/json", ""):
            headers = {} if content_type is None else {"content-type": content_type}
            r = client.post("/runs", content=body, headers=headers)
            assert r.status_code == 415, (content_type, r.text)
            assert "application/json" in r.json()["detail"] and r.headers["accept"] == "application/json"
        r = client.post("/runs", data={"dataset": "synthetic_images"})  # an HTML form
        assert r.status_code == 415
        r = client.post("/runs/r/cancel", headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and "origin" in r.json()["detail"].lower()
        r = client.post("/runs", content=body, headers={"content-type": "application/json",
                                                        "origin": "http://evil.example"})
        assert r.status_code == 403
        assert not out.exists() or not any(out.iterdir())  # nothing was created for any of them
        for i, content_type in enumerate(("application/json", "Application/JSON; charset=UTF-8",
                                          'application/json;charset="utf-8"')):
            r = client.post("/runs", content=json.dumps(dict(FAST, run_name=f"ok{i}")).encode(),
                            headers={"content-type": content_type, "origin": "http://testserver"})  # same origin
            assert r.status_code == 201, (content_type, r.text)
        for i in range(3):
            wait_until(client.get, f"ok{i}", lambda s: s["state"] in FINAL, 60, "finished")


def call_asgi(app: Any, headers: dict[str, str], chunk: bytes, cap: int) -> tuple[int, bytes, int]:
    """POST /runs straight into the ASGI app with a body that never ends: ``chunk`` after ``chunk``. Returns the
    status, the answer and how many chunks the app pulled (after ``cap`` pulls the body fails the test)."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        if pulled > cap:
            raise AssertionError(f"the server kept reading the body: {pulled} chunks of {len(chunk)} bytes")
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/runs", "raw_path": b"/runs", "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
             + [(b"host", b"testserver")], "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), pulled


def test_an_oversize_body_gets_413_without_being_read_whole(tmp_path):
    app = fake_app(tmp_path / "runs")
    chunk = b" " * 16384
    # Content-Length says 200 MB: refused from the header, not one chunk read
    status, answer, pulled = call_asgi(app, {"content-type": "application/json",
                                             "content-length": str(200 * 2**20)}, chunk, cap=2000)
    assert status == 413 and pulled == 0, (status, answer, pulled)
    assert str(DEFAULT_MAX_BODY_BYTES) in json.loads(answer)["detail"]
    # chunked (no Content-Length), endless: refused as soon as the limit is passed
    status, answer, pulled = call_asgi(app, {"content-type": "application/json"}, chunk, cap=2000)
    assert status == 413 and pulled == DEFAULT_MAX_BODY_BYTES // len(chunk) + 1, (status, answer, pulled)
    # not JSON: 415 before a byte is read
    status, _, pulled = call_asgi(app, {"content-type": "text/plain"}, chunk, cap=2000)
    assert status == 415 and pulled == 0
    assert not (tmp_path / "runs").exists()

    small = fake_app(tmp_path / "small", max_body_bytes=2048)  # the limit is the operator's
    with TestClient(small) as client:
        padded = json.dumps(dict(FAST, run_name="padded")) + " " * 2100
        assert client.post("/runs", content=padded, headers={"content-type": "application/json"}).status_code == 413

        def pieces():  # a chunked upload of the same body
            for i in range(0, len(padded), 500):
                yield padded[i:i + 500].encode()

        r = client.post("/runs", content=pieces(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        fits = json.dumps(dict(FAST, run_name="fits")) + " " * 1000
        assert client.post("/runs", content=fits, headers={"content-type": "application/json"}).status_code == 201
        wait_until(client.get, "fits", lambda s: s["state"] in FINAL, 60, "finished")


class UvicornThread:
    """The app served by uvicorn on 127.0.0.1 in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="info",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def test_a_real_server_answers_413_from_the_headers_of_a_200_mb_claim(tmp_path):
    with UvicornThread(fake_app(tmp_path / "runs")) as served:
        with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
            sock.sendall(b"POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 209715200\r\n\r\n{\"dataset\": ")  # 12 of the 200 MB announced
            answer = b""
            while b"\r\n\r\n" not in answer:  # the answer comes without the rest of the body being sent
                data = sock.recv(65536)
                assert data, answer
                answer += data
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# -- 2. the RunPod endpoint and key are the operator's -----------------------------------------------------------------

class Listener:
    """A loopback HTTP server that records every request (method, path, headers) and answers 404."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        record = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                record.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_no_request_body_or_content_type_sends_the_key_to_a_callers_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", PLANTED_KEY)
    out = tmp_path / "runs"
    with Listener() as listener:
        attack = {"dataset": "synthetic_images", "trials": 1, "use_runpod_service": True,
                  "runpod_endpoint_url": f"{listener.url}/v2/x", "runpod_fallback_local": False}
        bodies = [attack, dict(attack, runpod_endpoint_url=f"{listener.url}/v2/x/"),
                  dict(attack, runpod_endpoint_url=None, runpod_endpoint_id="x"),
                  dict(attack, runpod_endpoint_id="../../x", runpod_endpoint_url=listener.url),
                  dict(attack, runpod_endpoint_url=None, pins={"runpod_endpoint_url": listener.url}),
                  dict(attack, runpod_endpoint_url=None, RUNPOD_ENDPOINT_URL=listener.url),
                  dict(attack, use_runpod_service="true", run_name="named")]
        # the real backends (no backend_factory): a body that got through would call the listener with the key
        for token in (TOKEN, ""):
            with TestClient(create_app(out, token=token)) as client:
                for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}):
                    for body in bodies:
                        text = json.dumps(body).encode()
                        for content_type, content in (("application/json", text), ("text/plain", text),
                                                      (None, text), ("application/x-www-form-urlencoded",
                                                                     b"dataset=synthetic_images&runpod_endpoint_url="
                                                                     + listener.url.encode())):
                            sent = dict(headers, **({"content-type": content_type} if content_type else {}))
                            r = client.post("/runs", content=content, headers=sent)
                            if token and not headers:
                                expected = 401
                            elif content_type != "application/json":
                                expected = 415
                            else:
                                expected = 422
                            assert r.status_code == expected, (token, headers, body, content_type, r.text)
                            assert PLANTED_KEY not in r.text
                            if expected == 422:
                                locs = [tuple(e["loc"]) for e in r.json()["detail"]]
                                assert any(loc[:2] in (("body", "runpod_endpoint_url"), ("body", "runpod_endpoint_id"),
                                                       ("body", "pins"), ("body", "RUNPOD_ENDPOINT_URL"))
                                           for loc in locs), locs
                r = client.post("/runs", json=attack, headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 422
                (entry,) = r.json()["detail"]
                assert entry["loc"] == ["body", "runpod_endpoint_url"]
                assert "operator" in entry["msg"] and "none: this server has no RunPod endpoint" in entry["msg"]
                assert client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {"runs": []}
        assert listener.requests == []  # not one request, so certainly no Authorization header with the key
    assert not out.exists() or not any(out.iterdir())


def test_runs_use_the_operators_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", PLANTED_KEY)
    out = tmp_path / "runs"
    # no endpoint on the server: use_runpod_service=true is refused, naming the field
    with TestClient(fake_app(out)) as client:
        r = client.post("/runs", json=dict(FAST, use_runpod_service=True))
        assert r.status_code == 422 and [e["loc"] for e in r.json()["detail"]] == [["body", "use_runpod_service"]]
        assert "runpod_endpoints" in r.json()["detail"][0]["msg"]
    # RUNPOD_ENDPOINT_ID from the server's .env
    (tmp_path / ".env").write_text("RUNPOD_ENDPOINT_ID=fromdotenv\n")  # the tests run in tmp_path
    with TestClient(fake_app(out)) as client:
        r = client.post("/runs", json=dict(FAST, use_runpod_service=True, run_name="env"))
        assert r.status_code == 201, r.text
        status = wait_until(client.get, "env", lambda s: s["state"] in FINAL, 60, "finished")
        assert status["state"] == "completed" and status["options"]["runpod_endpoint_id"] == "fromdotenv"
        assert status["options"]["runpod_endpoint_url"] is None
        assert client.post("/runs", json=dict(FAST, runpod_endpoint_id="other")).status_code == 422
    # the operator's allow-list: the first entry is the default, the others may be chosen
    (tmp_path / ".env").unlink()
    allowed = ["http://127.0.0.1:9/v2/first", "http://127.0.0.1:9/v2/second", "third-id"]
    with TestClient(fake_app(out, runpod_endpoints=allowed)) as client:
        for name, extra, field, value in (
                ("dflt", {}, "runpod_endpoint_url", allowed[0]),
                ("second", {"runpod_endpoint_url": allowed[1] + "/"}, "runpod_endpoint_url", allowed[1]),
                ("third", {"runpod_endpoint_id": "third-id"}, "runpod_endpoint_id", "third-id")):
            r = client.post("/runs", json=dict(FAST, use_runpod_service=True, run_name=name, **extra))
            assert r.status_code == 201, (name, r.text)
            status = wait_until(client.get, name, lambda s: s["state"] in FINAL, 60, "finished")
            assert status["options"][field] == value, (name, status["options"])
        r = client.post("/runs", json=dict(FAST, runpod_endpoint_url="http://127.0.0.1:9/v2/fourth", trials=0))
        assert r.status_code == 422
        assert {e["loc"][-1] for e in r.json()["detail"]} == {"runpod_endpoint_url", "trials"}
        assert client.post("/runs", json=dict(FAST, runpod_endpoint_id="fromdotenv")).status_code == 422
        assert all(a in r.json()["detail"][0]["msg"] for a in allowed)


def test_serve_takes_the_endpoint_allow_list_and_the_body_limit(tmp_path, monkeypatch):
    values = _serve_options({"runpod_endpoints": " http://127.0.0.1:9/v2/a/ ,abc-1", "max_body_bytes": "4096"})
    assert values["runpod_endpoints"] == ["http://127.0.0.1:9/v2/a/", "abc-1"] and values["max_body_bytes"] == 4096
    assert _serve_options({})["max_body_bytes"] == DEFAULT_MAX_BODY_BYTES == 65536
    for bad in ({"runpod_endpoints": "ftp://x/y"}, {"runpod_endpoints": "a,,b"}, {"runpod_endpoints": "a b"},
                {"max_body_bytes": "10"}, {"max_body_bytes": "1e6"}, {"max_body_bytes": "²"}):
        with pytest.raises(ConfigError):
            _serve_options(bad)
        key, value = next(iter(bad.items()))
        assert main(["serve", f"{key}={value}"]) == 2

    import uvicorn

    served: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: served.append(self.config.app))
    assert serve({"output_dir": str(tmp_path / "runs"), "runpod_endpoints": "http://127.0.0.1:9/v2/a",
                  "max_body_bytes": "2048"}) == 0
    (app,) = served
    with TestClient(app, base_url="http://attacker.example") as client:  # a DNS name rebound to 127.0.0.1
        assert client.get("/health").status_code == 400
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/health").status_code == 200
        assert client.post("/runs", content=b"{" + b" " * 3000 + b"}",
                           headers={"content-type": "application/json"}).status_code == 413
        r = client.post("/runs", json={"dataset": "synthetic_images", "trials": 0, "use_runpod_service": True,
                                       "runpod_endpoint_url": "http://127.0.0.1:9/v2/b"})
        assert [e["loc"][-1] for e in r.json()["detail"]] == ["runpod_endpoint_url", "trials"]
    assert sorted(LOOPBACK_NAMES) == sorted(["127.0.0.1", "localhost", "::1", "[::1]"])


# -- 3. secrets masked -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg():
    from hpo.testing.postgres import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


def test_planted_secrets_appear_in_no_answer_file_or_log_line(tmp_path, monkeypatch, caplog, pg):
    monkeypatch.setenv("RUNPOD_API_KEY", PLANTED_KEY)
    out, pw = tmp_path / "runs", pg["password"]  # a real database (a POST names one it can open), its password
    query_url = f"postgresql+psycopg://{pg['user']}@127.0.0.1:{pg['port']}/{pg['database']}?password={pw}"
    userinfo_url = pg["url"]
    unreachable = f"postgresql+psycopg://u:SECRETq77@127.0.0.1:{free_port()}/db"  # nothing listens there
    secrets = ("SECRETq77", f":{pw}@", f"password={pw}", pw, PLANTED_KEY)

    class Leaky(FakeBackend):  # a backend whose failure message quotes the storage URL and the key
        def __init__(self, config):
            raise RuntimeError(f"cannot reach {config.storage} with Bearer {PLANTED_KEY} "
                               f"(also {query_url} and {userinfo_url})")

    caplog.set_level(logging.INFO)
    answers: list[str] = []
    app = create_app(out, token="", backend_factory=lambda config, run_dir: Leaky(config))
    with TestClient(app, raise_server_exceptions=False) as client:
        for name, url in (("query", query_url), ("userinfo", userinfo_url)):
            r = client.post("/runs", json=dict(FAST, storage=url, run_name=name))
            answers.append(r.text)
            assert r.status_code == 201, r.text
            status = wait_until(client.get, name, lambda s: s["state"] in FINAL, 60, "finished")
            assert status["state"] == "failed" and "cannot reach" in status["error"], status
            assert "***" in status["options"]["storage"] and "***" in status["error"]
        for path in ("/runs", "/runs/query", "/runs/userinfo", "/runs/query/trials", "/runs/query/best",
                     "/runs/query/files", "/runs/userinfo/files/run_state.json"):
            answers.append(client.get(path).text)
        # a database that cannot be opened: refused at once (as the CLI's exit 2), nothing queued or written
        r = client.post("/runs", json=dict(FAST, storage=unreachable, run_name="unreachable"))
        answers.append(r.text)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "storage"], r.text
        assert "cannot be opened" in r.json()["detail"][0]["msg"] and "***" in r.json()["detail"][0]["msg"]
        assert not (out / "unreachable").exists() and client.get("/runs/unreachable").status_code == 404
        # 422 and 409 answers that quote the secret
        r = client.post("/runs", json=dict(FAST, seed=query_url, mode=userinfo_url, storage=f"sqlite:///{query_url}"))
        assert r.status_code == 422 and len(r.json()["detail"]) == 3
        answers.append(r.text)
        r = client.post("/runs", json=dict(FAST, storage=f"notaurl://:pw@h/db?password=SECRETq77"))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "storage"]
        answers.append(r.text)
        manager = app.state.manager
        with RunLock(out / "busy"):  # the holder's message must not carry a secret either
            monkeypatch.setattr(manager, "status", lambda run_id: (_ for _ in ()).throw(
                RuntimeError(f"boom {query_url}")))
            r = client.get("/runs/x")  # an unexpected error: 500 without details
            assert r.status_code == 500
            answers.append(r.text)
            r = client.post("/runs", json=dict(FAST, storage=query_url, run_name="busy"))
            assert r.status_code == 409
            answers.append(r.text)
    everything = "\n".join(answers)
    files = {p: p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()}
    assert any(p.name == "run_state.json" for p in files)
    log_text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "Leaky" in log_text or "cannot reach" in log_text  # the failure was logged (masked)
    for secret in secrets:
        assert secret not in everything, (secret, everything[:3000])
        for path, text in files.items():
            assert secret not in text, (secret, path, text[:2000])
        assert secret not in log_text, (secret, log_text[-3000:])


class Collect(logging.Handler):
    """Formats every record it gets, as a server's log handler would."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_the_server_log_of_a_real_server_masks_secrets(tmp_path, monkeypatch, capsys):
    app = fake_app(tmp_path / "runs")
    secret_url = "postgresql://:pwLOG55@127.0.0.1:9/db?password=SECRETlog66"
    monkeypatch.setattr(app.state.manager, "list", lambda: (_ for _ in ()).throw(RuntimeError(secret_url)))
    server = UvicornThread(app)  # uvicorn configures its loggers here; ours are added after
    collect = Collect()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.access")]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        with server:
            answer = get_raw(server.port, "/runs?token=SECRETtok77")
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
    assert answer.startswith(b"HTTP/1.1 500"), answer[:300]
    text = "\n".join(collect.lines)
    assert "Exception in ASGI application" in text and "RuntimeError" in text, text[-2000:]  # the traceback ...
    assert '"GET /runs?token=***' in text and " 500" in text, text[-2000:]  # ... and the access line, whole
    everything = text + capsys.readouterr().err + answer.decode("latin-1")  # (logging's own errors go to stderr)
    at = everything.find("Logging error")
    assert at < 0, f"a log handler failed on a masked record: {everything[at:at + 600]}"
    for secret in ("pwLOG55", "SECRETlog66", "SECRETtok77"):
        at = everything.find(secret)
        assert at < 0, f"{secret} in the server log: {everything[max(0, at - 300):at + 100]}"


def get_raw(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


# -- 4. bad values at POST time ----------------------------------------------------------------------------------------

def test_a_huge_seed_gets_422_naming_it_and_nothing_is_written(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    with TestClient(fake_app(out)) as client:
        for body in (dict(FAST, seed=99999999999999999999), dict(FAST, seed="99999999999999999999", run_name="s"),
                     dict(FAST, seed=2**32, run_name="s", resume=True), dict(FAST, seed=-1)):
            r = client.post("/runs", json=body)
            assert r.status_code == 422, r.text
            assert [e["loc"] for e in r.json()["detail"]] == [["body", "seed"]], r.text
            assert "seed" in r.json()["detail"][0]["msg"]
        r = client.post("/runs", json=dict(FAST, run_name="s", resume=True))  # the lock's folder is removed again
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "resume"]
        assert list(out.iterdir()) == []

        import hpo.config

        real = hpo.config.config_from_options
        calls = []

        def field_named(options, **kw):  # a ConfigError that names its field (issue 14) beats the message's guess
            calls.append(dict(options))
            if len(calls) == 1:
                error = ConfigError("trials and seed disagree")
                error.field = "seed"
                raise error
            return real(options, **kw)

        monkeypatch.setattr(hpo.config, "config_from_options", field_named)
        r = client.post("/runs", json=dict(FAST, seed=3))
        assert r.status_code == 422 and r.json()["detail"] == [
            {"loc": ["body", "seed"], "msg": "trials and seed disagree", "type": "config_error"}]
        assert "seed" not in calls[1] and "trials" in calls[1]
        assert list(out.iterdir()) == []


# -- 5. one writer per run folder --------------------------------------------------------------------------------------

def test_a_run_folder_held_by_another_process_gets_409_naming_it(tmp_path):
    out = tmp_path / "runs"
    with TestClient(fake_app(out)) as client:
        assert client.post("/runs", json=dict(FAST, run_name="done")).status_code == 201
        wait_until(client.get, "done", lambda s: s["state"] in FINAL, 60, "finished")
        for name in ("x", "done"):
            before = tree(out / name)
            with RunLock(out / name):  # another RunLock object: flock is per open file, so it counts as another
                held = tree(out / name)
                r = client.post("/runs", json=dict(FAST, run_name=name))
                assert r.status_code == 409, r.text
                detail = r.json()["detail"]
                assert f"process {os.getpid()}" in detail and socket.gethostname() in detail, detail
                assert tree(out / name) == held  # nothing in the folder was modified
            assert {k: v for k, v in tree(out / name).items() if not k.startswith(".hpo.lock")} == {
                k: v for k, v in before.items() if not k.startswith(".hpo.lock")}
        assert client.get("/runs/done").json()["state"] == "completed"

        # a holder in another process: refused while it lives, taken over once it is killed
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from hpo.runlock import RunLock
            lock = RunLock({str(out / "y")!r}).acquire()
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=hpo_env())
        try:
            assert holder.stdout.readline().strip() == "locked"
            r = client.post("/runs", json=dict(FAST, run_name="y"))
            assert r.status_code == 409 and f"process {holder.pid}" in r.json()["detail"], r.text
        finally:
            holder.kill()
            holder.wait(timeout=60)
        r = client.post("/runs", json=dict(FAST, run_name="y"))
        assert r.status_code == 201, r.text
        assert wait_until(client.get, "y", lambda s: s["state"] in FINAL, 60, "finished")["state"] == "completed"


def test_the_server_holds_the_lock_of_its_runs_until_they_end(tmp_path):
    out = tmp_path / "runs"
    backend = GatedBackend()
    app = create_app(out, token="", max_active_runs=1, backend_factory=lambda c, d: backend)
    with TestClient(app) as client:
        assert client.post("/runs", json=dict(FAST, run_name="a", trials=1)).status_code == 201
        assert client.post("/runs", json=dict(FAST, run_name="b", trials=1)).status_code == 201  # queued
        assert client.post("/runs", json=dict(FAST, run_name="c", trials=1)).status_code == 201  # queued
        assert backend.entered.wait(60)
        for name in ("a", "b", "c"):  # `hpo optimize` (or another server) on these folders is refused
            with pytest.raises(RunLocked) as refused:
                RunLock(out / name).acquire()
            assert refused.value.holder["pid"] == os.getpid()
        assert client.post("/runs/c/cancel").json()["state"] == "cancelled"
        RunLock(out / "c").acquire().release()  # a cancelled queued run frees its folder at once
        backend.gate.set()
        for name in ("a", "b"):
            assert wait_until(client.get, name, lambda s: s["state"] in FINAL, 60, "finished")["state"] == "completed"
            RunLock(out / name).acquire().release()
        backend.gate.clear()
        backend.entered.clear()
        assert client.post("/runs", json=dict(FAST, run_name="d", trials=1)).status_code == 201
        assert client.post("/runs", json=dict(FAST, run_name="e", trials=1)).status_code == 201  # queued
        assert backend.entered.wait(60)
    # the server stopped: the interrupted run and the queued one are free again
    for name in ("d", "e"):
        RunLock(out / name).acquire().release()
    with TestClient(fake_app(out)) as client:
        assert {r["id"]: r["state"] for r in client.get("/runs").json()["runs"]} == {
            "a": "completed", "b": "completed", "c": "cancelled", "d": "interrupted", "e": "interrupted"}


# -- 6. progress after a crash -----------------------------------------------------------------------------------------

def test_a_trial_cut_by_a_crash_is_interrupted_not_failed_and_done_never_exceeds_total(tmp_path):
    out = tmp_path / "runs"
    crash = textwrap.dedent(f"""
        import os, signal, threading
        from fastapi.testclient import TestClient
        from hpo.api import create_app
        from hpo.backends import Backend

        running = threading.Event()

        class Stuck(Backend):
            def run(self, job, **kw):
                running.set()
                threading.Event().wait()

        with TestClient(create_app({str(out)!r}, token="", backend_factory=lambda c, d: Stuck())) as client:
            r = client.post("/runs", json={dict(FAST, run_name="crash", concurrent_workers=1)!r})
            assert r.status_code == 201, r.text
            assert running.wait(120)
            os.kill(os.getpid(), signal.SIGKILL)  # the server dies with a trial running
    """)
    proc = subprocess.run([sys.executable, "-c", crash], env=hpo_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    backend = GatedBackend()
    with TestClient(create_app(out, token="", backend_factory=lambda c, d: backend)) as client:
        before = client.get("/runs/crash").json()
        assert before["state"] == "interrupted" and before["resumable"] and before["progress"]["done"] == 0
        r = client.post("/runs", json=dict(FAST, run_name="crash", concurrent_workers=1))
        assert r.status_code == 201 and r.json()["resuming"] is True, r.text
        assert backend.entered.wait(60)
        live = client.get("/runs/crash").json()["progress"]
        assert live["done"] <= live["total"] == 2 and live["failed"] == 0, live
        backend.gate.set()
        status = wait_until(client.get, "crash", lambda s: s["state"] in FINAL, 60, "finished")
        assert status["state"] == "completed", status
        progress = status["progress"]
        assert (progress["done"], progress["total"], progress["failed"], progress["interrupted"]) == (2, 2, 0, 1)
        trials = client.get("/runs/crash/trials").json()["trials"]
        assert sorted(t["state"] for t in trials) == ["complete", "complete", "interrupted"], trials
        (cut,) = [t for t in trials if t["state"] == "interrupted"]
        assert any(t["retry_of"] == cut["number"] and t["params"] == cut["params"] for t in trials)
        listed = {r["id"]: r for r in client.get("/runs").json()["runs"]}["crash"]
        assert listed["progress"]["done"] == 2 <= listed["progress"]["total"] and listed["progress"]["failed"] == 0
    with TestClient(fake_app(out)) as client:  # what a restarted server reads from the folder
        progress = client.get("/runs/crash").json()["progress"]
        assert (progress["done"], progress["total"], progress["failed"], progress["interrupted"]) == (2, 2, 0, 1)
        # resumed with fewer trials than it has: done still never exceeds total
        r = client.post("/runs", json=dict(FAST, run_name="crash", trials=1))
        assert r.status_code == 201, r.text
        status = wait_until(client.get, "crash", lambda s: s["state"] in FINAL, 60, "finished")
        assert status["progress"]["done"] <= status["progress"]["total"], status["progress"]
