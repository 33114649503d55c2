"""Planted secrets (the RunPod key, the API token, a database password in the URL's userinfo and in its query)
appear in no file of the run folder, no line the CLI prints and no log line -- on success and on failure."""

from __future__ import annotations

import time

import pytest

from .conftest import BackgroundHpo, run_hpo, selected
from hpo.testing.postgres import postgres_cluster

KEY = "rpa_PLANTED_key_5f3e9a1c"
TOKEN = "tok_PLANTED_token_77d1"
FAST = ["dataset=synthetic_images", "trials=2", "max_epochs_per_trial=1", "data_fraction=0.2", "pruner=none",
        "plot_generation=all"]


@pytest.fixture(scope="module")
def pg():
    with postgres_cluster() as cluster:
        yield cluster


def _url(pg, where: str) -> str:
    if where == "userinfo":
        return pg["url"]
    return f"postgresql+psycopg://{pg['user']}@127.0.0.1:{pg['port']}/{pg['database']}?password={pg['password']}"


def _study_exists(pg, name: str) -> bool:
    """Read-only look into the database (opening it with Optuna would create the schema itself)."""
    import psycopg

    try:
        with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                             dbname=pg["database"], connect_timeout=10) as db:
            return db.execute("SELECT 1 FROM studies WHERE study_name = %s", (name,)).fetchone() is not None
    except psycopg.Error:  # no schema yet
        return False


@pytest.fixture(scope="module")
def runs(request, pg, tmp_path_factory):
    """The module's CLI runs, started together (each test asserts on its own): the unreachable one and the
    userinfo one at once, the query one as soon as the first has created the schema and its study (two processes
    creating the schema at the same instant is test_shared_study's subject, not this one's)."""
    wanted = selected(request, "test_a_run_on_a_password_protected_database_writes_and_prints_no_secret",
                      "test_an_unreachable_database_is_a_clear_error_without_its_password")
    started: dict[str, tuple[BackgroundHpo, object]] = {}
    try:
        if "test_an_unreachable_database_is_a_clear_error_without_its_password" in wanted:
            folder = tmp_path_factory.mktemp("unreachable")
            bad = pg["url"].replace(f":{pg['port']}/", f":{pg['port']}/nosuchdb_")
            started["unreachable"] = (BackgroundHpo("optimize", *FAST, f"storage={bad}", "run_name=unreachable",
                                                    f"output_dir={folder}", cwd=folder, timeout=300,
                                                    RUNPOD_API_KEY=KEY), folder)
        if "test_a_run_on_a_password_protected_database_writes_and_prints_no_secret" in wanted:
            for i, where in enumerate(("userinfo", "query")):
                if i:  # the first run's study is there: the schema exists
                    first = started["userinfo"][0]
                    deadline = time.monotonic() + 300
                    while not _study_exists(pg, "secret-userinfo") and first.proc.poll() is None:
                        assert time.monotonic() < deadline, "the first run did not create its study in 300 s"
                        time.sleep(0.2)
                folder = tmp_path_factory.mktemp(where)
                started[where] = (BackgroundHpo("optimize", *FAST, f"storage={_url(pg, where)}",
                                                f"run_name=secret-{where}", f"output_dir={folder}", cwd=folder,
                                                timeout=600, RUNPOD_API_KEY=KEY, HPO_API_TOKEN=TOKEN), folder)
        yield started
    finally:
        for run, _ in started.values():
            run.stop()


def everything_written(folder) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file())


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}... leaked:\n" + text[max(0, text.find(secret) - 300):
                                                                               text.find(secret) + 100]


@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_a_run_on_a_password_protected_database_writes_and_prints_no_secret(runs, pg, where):
    pw = pg["password"]
    run, tmp_path = runs[where]  # hpo optimize FAST storage=<url> run_name=secret-<where> (the runs fixture)
    proc = run.result()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trials: 2 completed" in proc.stdout
    run_dir = tmp_path / f"secret-{where}"
    assert (run_dir / "report.html").is_file()
    assert_no_secret(proc.stdout + proc.stderr + everything_written(run_dir), pw, KEY, TOKEN)
    assert "***" in (run_dir / "config.json").read_text()  # the URL is there, masked

    # hpo show needs the password again (config.json does not keep it) and says so without printing it
    shown = run_hpo("show", str(run_dir), cwd=tmp_path, timeout=120)
    assert shown.returncode == 2 and "give the full URL again" in shown.stderr
    assert_no_secret(shown.stdout + shown.stderr, pw)


def test_an_unreachable_database_is_a_clear_error_without_its_password(runs, pg):
    run, tmp_path = runs["unreachable"]  # hpo optimize FAST storage=<a database that does not exist> (the fixture)
    proc = run.result()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot be opened" in proc.stderr and "Traceback" not in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, pg["password"], KEY)
    assert_no_secret(everything_written(tmp_path), pg["password"], KEY)


def test_config_json_masks_every_secret_it_would_hold(tmp_path):
    """An endpoint URL with credentials is masked in config.json (and so in report.html, which shows config.json),
    like storage: before, only storage was."""
    from hpo.config import config_from_options
    from hpo.rundir import write_config

    config = config_from_options({"dataset": "synthetic_images", "use_runpod_service": "true",
                                  "runpod_endpoint_url": "http://u:pw-SECRET-789@127.0.0.1:9/v2/sim",
                                  "storage": "sqlite:///study.db?password=db-SECRET-456"})
    text = write_config(tmp_path, config).read_text()
    assert_no_secret(text, "pw-SECRET-789", "db-SECRET-456")
    assert "http://u:***@127.0.0.1:9/v2/sim" in text and "synthetic_images" in text


def test_first_line_of_an_error_is_masked_and_never_empty():
    """What a driver or parser error says, for a user's message: its first line only, secrets hidden; an error with
    no message gives its type's name."""
    from hpo.redact import MASK, first_line

    exc = RuntimeError("could not connect to postgresql://u:SECRETz1@127.0.0.1:5/db\n  DETAIL: password=SECRETz1")
    line = first_line(exc)
    assert line.startswith("could not connect to postgresql://u:") and MASK in line
    assert "SECRETz1" not in line and "DETAIL" not in line
    assert first_line(ValueError("  \n ")) == "ValueError" and first_line(KeyError()) == "KeyError"


@pytest.mark.parametrize("url_timeout", [False, True])
def test_a_database_server_that_never_answers_is_a_clear_error_in_bounded_time(monkeypatch, url_timeout):
    """A server that accepts the connection and never answers (a stuck proxy; here a loopback socket nobody serves):
    opening the storage ends after libpq's connect_timeout (hpo's default, or the URL's own, which wins), as a clear
    error without the password, where it waited forever."""
    import socket
    import threading

    import hpo.study
    from hpo.exceptions import ConfigError

    monkeypatch.setattr(hpo.study, "CONNECT_TIMEOUT_S", 600 if url_timeout else 2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
        url = f"postgresql+psycopg://u:SECRETw9@127.0.0.1:{server.getsockname()[1]}/db"
        if url_timeout:
            url += "?connect_timeout=2"
        outcome: list[BaseException | None] = []

        def attempt() -> None:
            try:
                hpo.study.open_storage(url)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - the test reads it
                outcome.append(exc)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(60)  # ended by the 2 s timeout; without one it would wait forever
        assert not thread.is_alive(), "opening the storage still waits after 60 s"
    error = outcome[0]
    assert isinstance(error, ConfigError) and "cannot be opened" in str(error), error
    assert "SECRETw9" not in str(error) and error.field == "storage"
