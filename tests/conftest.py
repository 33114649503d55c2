"""Shared fixtures: a seeded RNG for every test, a clean environment, and helpers to run the CLI (now, or started
in the background and read later)."""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)
    np.random.seed(1234)
    if "tensorflow" in sys.modules:  # a trial run in this process turned op determinism on: random ops need a seed
        sys.modules["tensorflow"].random.set_seed(1234)


@pytest.fixture(autouse=True)
def _no_secrets_from_the_developer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the developer's RunPod settings, and run in a folder without a .env file."""
    for var in ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def hpo_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def interruptible() -> None:
    """``preexec_fn`` for a child the test will Ctrl-C: SIGINT back to its default. A shell starts background jobs
    with SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt -- so a suite run as
    ``bash .ci/run &`` would see the run ignore the test's SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_hpo(*args: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `hpo` CLI as a user would (a subprocess), capturing its output."""
    return subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, env=hpo_env(**env), text=True,
                          capture_output=True, timeout=timeout)


class BackgroundHpo:
    """``run_hpo`` started now and read later: the same command, environment and timeout, its output captured in
    files (a pipe nobody reads could fill and stall the run). A module starts the independent CLI runs its tests
    check, so that they share the machine's cores (a run is mostly one busy thread: imports, data, plots); each test
    then takes its own run's :meth:`result` and asserts on it exactly as after ``run_hpo``."""

    def __init__(self, *args: str, cwd: Path, timeout: float = 600, **env: str) -> None:
        self.args, self.cwd, self.timeout = args, Path(cwd), timeout
        self.cwd.mkdir(parents=True, exist_ok=True)
        self._out = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - closed in result()/stop()
        self._err = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        full_env = hpo_env()
        for var in ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID"):  # started before a test's autouse fixtures run
            full_env.pop(var, None)
        full_env.update(env)
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=self.cwd, env=full_env, text=True,
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err)
        self._result: subprocess.CompletedProcess[str] | None = None

    def result(self) -> subprocess.CompletedProcess[str]:
        """Wait for the run (at most ``timeout`` from its start, as ``run_hpo``), its CompletedProcess."""
        if self._result is None:
            try:
                self.proc.wait(timeout=max(0.0, self.started + self.timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stop()
                raise
            self._out.seek(0)
            self._err.seek(0)
            self._result = subprocess.CompletedProcess([sys.executable, "-m", "hpo", *self.args],
                                                       self.proc.returncode, self._out.read(), self._err.read())
            self._out.close()
            self._err.close()
        return self._result

    def stop(self) -> None:
        """Kill the run if it still runs (a module whose test did not read it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()
        self._err.close()


def bench_modules(request: pytest.FixtureRequest, *names: str) -> list[Any]:
    """Modules of bench/ (not installed: imported from its folder, which is on ``sys.path`` for the test only)."""
    sys.path.insert(0, str(ROOT / "bench"))
    request.addfinalizer(lambda: sys.path.remove(str(ROOT / "bench")))
    return [importlib.import_module(name) for name in names]


def selected(request: pytest.FixtureRequest, *names: str) -> set[str]:
    """Which of the module's test functions ``names`` this session runs (a module starts only their runs)."""
    here = request.module.__name__
    chosen = {item.originalname for item in request.session.items
              if getattr(item, "module", None) is not None and item.module.__name__ == here}
    return chosen & set(names)


#: the test files that take longest (minutes), longest first. ``pytest -n 2 --dist loadfile --no-loadscope-reorder``
#: (the README's test command) hands each worker one file at a time in this order, so the two workers end together
#: instead of one running a long file alone at the end (xdist's own order puts files with the most tests first)
SLOW_FIRST = ("test_own_data_e2e.py", "test_cli.py", "test_orchestrator.py", "test_runpod_e2e.py", "test_api.py",
              "test_runlock.py", "test_backend_contract.py", "test_training.py", "test_runpod_faults.py",
              "test_reproducible.py", "test_sequence_modality.py", "test_shared_study.py", "test_local_backend.py",
              "test_secrets.py", "test_pruning.py", "test_api_no_tensorflow.py", "test_tracking.py", "test_plots.py",
              "test_pareto.py", "test_dependencies.py", "test_artifacts.py", "test_browser.py", "test_handler_fuzz.py",
              "test_time_budget.py", "test_budget.py", "test_samplers.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
