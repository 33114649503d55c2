"""The worker image's build pieces: dataset prefetch, the Dockerfile, deploy.sh (dry run; shellcheck when installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpo import prefetch

from .conftest import hpo_env

ROOT = Path(__file__).resolve().parents[1]


def test_prefetch_generated_datasets_need_nothing(capsys):
    assert prefetch.main(["synthetic_images", "synthetic_text", "--verify"]) == 0
    assert "synthetic_images: generated" in capsys.readouterr().out


def test_prefetch_unknown_dataset_is_a_usage_error(capsys):
    assert prefetch.main(["imagenet"]) == 2
    assert "unknown dataset(s) imagenet" in capsys.readouterr().err


def test_prefetch_reports_a_dataset_it_cannot_get(monkeypatch, capsys):
    from hpo import datasets
    from hpo.exceptions import DatasetError

    def unavailable(name: str) -> None:
        raise DatasetError(f"Dataset '{name}' is not available locally; put mnist.npz in $HPO_DATA_DIR")

    monkeypatch.setattr(datasets, "ensure_available", unavailable)
    assert prefetch.main(["mnist"]) == 1
    assert "put mnist.npz in $HPO_DATA_DIR" in capsys.readouterr().err


def test_dockerfile_bakes_datasets_and_starts_the_handler():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM ${CUDA_IMAGE}" in text and "nvidia/cuda:" in text
    assert "tensorflow[and-cuda]" in text
    assert "python -m hpo.prefetch --verify" in text
    assert 'CMD ["python", "-u", "runpod_worker/handler.py"]' in text
    # the worker extra (the runpod SDK is not in the plain install), pinned as CI tests it
    assert 'pip install -c constraints.txt ".[worker]"' in text and "constraints.txt" in text.split("COPY", 2)[1]


def _deploy(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in hpo_env().items() if not k.startswith(("RUNPOD_", "HPO_"))}
    full.update(env)
    return subprocess.run(["bash", str(ROOT / "deploy.sh"), *args], capture_output=True, text=True, env=full,
                          cwd=tmp_path, timeout=60)


def test_deploy_dry_run_builds_for_amd64_tagged_with_the_revision_and_hides_the_key(tmp_path):
    revision = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
    assert revision, "the tests run from a git checkout"
    key = "rpa_DEPLOY_SECRET_1234"
    proc = _deploy(tmp_path, "--dry-run", HPO_REGISTRY="registry.example/team", RUNPOD_API_KEY=key,
                   RUNPOD_ENDPOINT_ID="ep123")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "docker buildx build --platform linux/amd64" in out
    assert f"registry.example/team/hpo-worker:{revision}" in out and "--push" in out
    assert "/endpoints/ep123" in out and "/templates/" in out and "imageName" in out
    assert key not in out + proc.stderr and "Bearer ***" in out


def test_deploy_bakes_the_users_model_code_into_the_image(tmp_path):
    code = tmp_path / "src"
    (code / "mypkg").mkdir(parents=True)
    (code / "mypkg" / "nets.py").write_text("def build(params, input_shape, num_classes): ...\n")
    proc = _deploy(tmp_path, "--dry-run", HPO_REGISTRY="registry.example/team", HPO_USER_CODE=str(code))
    assert proc.returncode == 0, proc.stderr
    assert f"--build-context usercode={code}" in proc.stdout
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM scratch AS usercode" in text  # the empty default when no code is given
    assert "COPY --from=usercode / /app/user_code/" in text and "PYTHONPATH=/app/user_code" in text
    missing = _deploy(tmp_path, "--dry-run", HPO_REGISTRY="registry.example/team", HPO_USER_CODE=str(tmp_path / "no"))
    assert missing.returncode == 2 and "HPO_USER_CODE" in missing.stderr


def test_deploy_without_a_registry_says_what_to_set(tmp_path):
    proc = _deploy(tmp_path, "--dry-run")
    assert proc.returncode == 2 and "HPO_REGISTRY" in proc.stderr


def test_deploy_rejects_unknown_arguments(tmp_path):
    proc = _deploy(tmp_path, "--frobnicate")
    assert proc.returncode == 2 and "unknown argument" in proc.stderr


def test_deploy_script_is_shellcheck_clean():
    # shellcheck comes with the README's test command (apt-get install shellcheck)
    assert shutil.which("shellcheck"), "install shellcheck: apt-get install -y shellcheck"
    proc = subprocess.run(["shellcheck", str(ROOT / "deploy.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_handler_runs_test_input_locally_without_runpod(tmp_path):
    """``python runpod_worker/handler.py`` with no RunPod environment trains test_input.json once and exits 0."""
    env = {k: v for k, v in hpo_env(TF_CPP_MIN_LOG_LEVEL="2").items() if not k.startswith("RUNPOD_")}
    proc = subprocess.run([sys.executable, str(ROOT / "runpod_worker" / "handler.py")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "(local-test#0) completed after 2 epoch(s)" in proc.stdout
    assert os.path.exists(ROOT / "runpod_worker" / "test_input.json")
