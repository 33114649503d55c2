"""Planted secrets (the RunPod key, the API token, a database password in the URL's userinfo and in its query)
appear in no file of the run folder, no line the CLI prints and no log line -- on success and on failure."""

from __future__ import annotations

import pytest

from .conftest import run_hpo
from hpo.testing.postgres import postgres_cluster

KEY = "rpa_PLANTED_key_5f3e9a1c"
TOKEN = "tok_PLANTED_token_77d1"
FAST = ["dataset=synthetic_images", "trials=2", "max_epochs_per_trial=1", "data_fraction=0.2", "pruner=none",
        "plot_generation=all"]


@pytest.fixture(scope="module")
def pg():
    with postgres_cluster() as cluster:
        yield cluster


def everything_written(folder) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file())


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}... leaked:\n" + text[max(0, text.find(secret) - 300):
                                                                               text.find(secret) + 100]


@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_a_run_on_a_password_protected_database_writes_and_prints_no_secret(tmp_path, pg, where):
    pw = pg["password"]
    if where == "userinfo":
        url = pg["url"]
    else:
        url = f"postgresql+psycopg://{pg['user']}@127.0.0.1:{pg['port']}/{pg['database']}?password={pw}"
    proc = run_hpo("optimize", *FAST, f"storage={url}", f"run_name=secret-{where}", f"output_dir={tmp_path}",
                   cwd=tmp_path, RUNPOD_API_KEY=KEY, HPO_API_TOKEN=TOKEN, timeout=600)
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


def test_an_unreachable_database_is_a_clear_error_without_its_password(tmp_path, pg):
    bad = pg["url"].replace(f":{pg['port']}/", f":{pg['port']}/nosuchdb_")
    proc = run_hpo("optimize", *FAST, f"storage={bad}", "run_name=unreachable", f"output_dir={tmp_path}",
                   cwd=tmp_path, RUNPOD_API_KEY=KEY, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot be opened" in proc.stderr and "Traceback" not in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, pg["password"], KEY)
    assert_no_secret(everything_written(tmp_path), pg["password"], KEY)
