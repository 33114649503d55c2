"""Shared fixtures: a seeded RNG for every test, a clean environment, and helpers to run the CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)
    np.random.seed(1234)


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
