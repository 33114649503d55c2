"""The install says what is used: every package the code imports is declared (a dependency or an extra), the tests
use only declared packages, and the plain install (no extras) runs the CLI, the notebook API and a real local
optimization, while `hpo serve` without the api extra says how to get it."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT, hpo_env

EXTRAS_ONLY = {  # import name -> the extra that brings it (blocked to play a plain install)
    "fastapi": "api", "starlette": "api", "uvicorn": "api", "runpod": "worker", "aiohttp": "worker",
    "psycopg": "postgres", "optuna_dashboard": "dashboard", "cmaes": "samplers", "scipy": "samplers",
    "mlflow": "mlflow", "tensorboardX": "tensorboard", "boto3": "s3", "botocore": "s3",
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs} - {"hpo"}


def _imports(folder) -> dict[str, str]:
    """third-party top-level import -> a file that imports it"""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("hpo", "tests", "runpod_worker", "handler"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _check(folder, allowed: set[str]) -> None:
    dists = packages_distributions()
    undeclared = []
    for top, where in _imports(folder).items():
        provided = {canonicalize_name(d) for d in dists.get(top, [])}
        assert provided, f"{where} imports {top}, which no installed distribution provides"
        if not provided & allowed:
            undeclared.append(f"{top} ({', '.join(sorted(provided))}) imported by {where}")
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(undeclared)


def test_every_import_of_the_package_and_the_worker_is_declared():
    project = _project()
    extras = project["optional-dependencies"]
    runtime = _names(project["dependencies"])
    everything = runtime | {n for k, v in extras.items() if k not in ("test", "bench") for n in _names(v)}
    _check(ROOT / "src" / "hpo", everything)
    _check(ROOT / "runpod_worker", runtime | _names(extras["worker"]))


def test_the_tests_use_only_declared_packages():
    project = _project()
    extras = project["optional-dependencies"]
    allowed = _names(project["dependencies"]) | {n for k, v in extras.items() if k != "bench" for n in _names(v)}
    _check(ROOT / "tests", allowed)


def test_extras_only_packages_are_really_only_in_extras():
    runtime = _names(_project()["dependencies"])
    dists = packages_distributions()
    for top in EXTRAS_ONLY:
        assert not {canonicalize_name(d) for d in dists.get(top, [])} & runtime, top


BLOCKER = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (a plain install)", name=name.split(".")[0])
        return None
sys.meta_path.insert(0, Blocker())
"""


def _plain_env(tmp_path, blocked: set[str]) -> dict[str, str]:
    site = tmp_path / "plain-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(blocked)))
    env = hpo_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"  # every process of the run, worker processes included
    return env


def test_a_plain_install_runs_a_real_local_optimization_and_serve_says_how_to_get_the_api(tmp_path):
    env = _plain_env(tmp_path, set(EXTRAS_ONLY))
    script = textwrap.dedent(f"""
        import sys, hpo
        r = hpo.optimize(dataset="synthetic_images", trials=1, max_epochs_per_trial=1, data_fraction=0.2,
                         quiet=True, pruner="none", plot_generation="all", output_dir={str(tmp_path / 'out')!r})
        assert r.completed == 1, r
        for name in {sorted(EXTRAS_ONLY)!r}:
            assert name not in sys.modules, name
        print("OK", r.best_test_accuracy)
    """)
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and "OK" in run.stdout, run.stdout + run.stderr
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").glob("*/report.html"))
    serve = subprocess.run([sys.executable, "-m", "hpo", "serve"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert serve.returncode == 2 and 'pip install "hpo[api]"' in serve.stderr, serve.stderr
    help_ = subprocess.run([sys.executable, "-m", "hpo", "--help"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert help_.returncode == 0 and "optimize" in help_.stdout


def test_with_the_api_extra_the_server_app_is_built(tmp_path):
    env = _plain_env(tmp_path, set(EXTRAS_ONLY) - {"fastapi", "starlette", "uvicorn"})
    script = ("from hpo.api import create_app; from fastapi.testclient import TestClient; "
              "c = TestClient(create_app(output_dir='o', token='')); r = c.get('/health'); "
              "assert r.status_code == 200 and r.json()['status'] == 'ok', r.text; print('OK')")
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "OK" in run.stdout, run.stdout + run.stderr
