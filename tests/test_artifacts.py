"""A remote trial's model back to the run folder, and own data to the worker (hpo.artifacts, runpod_worker/handler.py).

Real components: moto's S3 server (a process of its own on 127.0.0.1), a tiny Keras model, the handler in-process
(with a stand-in trainer) and, end to end, a real ``python runpod_worker/handler.py`` (the SDK's worker loop, real
TensorFlow) against the loopback RunPod simulator with BUCKET_* pointing at the S3 server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

from hpo import objectstore
from hpo.artifacts import MAX_INLINE_MODEL_BYTES, NOTE_KEY, attach_model, model_key, store_model
from hpo.backends.runpod import RunPodBackend
from hpo.objectstore import BucketConfig, ObjectStore
from hpo.protocol import MAX_JOB_BYTES, TrialJob, TrialResult
from hpo.testing.runpod_sim import RunPodSimulator, start_workers, stop_workers
from hpo.testing.s3 import SECRET_ACCESS_KEY, free_port, s3_server

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "rpa_FAKE_artifacts_SECRET_71c2"
PARAMS = {"conv_blocks": 1, "filters": 16, "kernel_size": 3, "activation": "relu", "batch_norm": False,
          "global_pooling": True, "dense_layers": 0, "dropout": 0.0, "learning_rate": 0.005, "optimizer": "adam",
          "batch_size": 64, "weight_decay": 1e-5, "augmentation": "none"}


def _load_handler():
    spec = importlib.util.spec_from_file_location("hpo_artifacts_handler", ROOT / "runpod_worker" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hpo_artifacts_handler"] = module
    spec.loader.exec_module(module)
    return module


handler_mod = _load_handler()


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        ObjectStore(BucketConfig.from_env(server.env())).check()
        yield server


@pytest.fixture
def bucket_env(s3, monkeypatch, tmp_path):
    for name, value in s3.env(HPO_CACHE_DIR=str(tmp_path / "cache")).items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def no_bucket(monkeypatch, tmp_path):
    for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved tiny Keras model, an input and the model's predictions for it."""
    from hpo.training import configure_tensorflow

    configure_tensorflow()
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    return path, x, model.predict(x, verbose=0)


def completed(trial_id: str = "run#3") -> TrialResult:
    return TrialResult(trial_id=trial_id, status="completed", val_metrics={"accuracy": 0.5})


def assert_same_model(path: Path, tiny_model) -> None:
    import keras

    original, x, expected = tiny_model
    assert path.read_bytes() == original.read_bytes()
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), expected, rtol=1e-6)


# -- attach_model / store_model -------------------------------------------------------------------------------------

def test_model_keys_are_deterministic_and_safe():
    assert model_key("cifar run#12") == "hpo-models/cifar_run/trial-12.keras"
    assert model_key("../../etc#1") == "hpo-models/etc/trial-1.keras"
    assert model_key("odd id") == "hpo-models/odd_id.keras"


def test_an_uploaded_model_comes_back_byte_for_byte_and_loads(bucket_env, tiny_model, tmp_path):
    store = objectstore.default_store()
    attached = attach_model(completed(), tiny_model[0], "run#3", store)
    assert attached.model_uri == f"s3://{bucket_env.bucket}/hpo-models/run/trial-3.keras"
    assert attached.model_inline is None and NOTE_KEY not in attached.details
    assert store.size_of("hpo-models/run/trial-3.keras") == tiny_model[0].stat().st_size
    wire = TrialResult.from_json(attached.to_json())  # as it crosses the network
    dest = tmp_path / "models" / "trial_3.keras"
    stored = store_model(wire, dest)  # the store the environment configures
    assert_same_model(dest, tiny_model)
    assert stored.model_uri == attached.model_uri and stored.model_inline is None
    assert sorted(p.name for p in dest.parent.iterdir()) == ["trial_3.keras"]  # no temporary file left


def test_without_a_bucket_a_small_model_travels_inline(no_bucket, tiny_model, tmp_path):
    attached = attach_model(completed(), tiny_model[0], "run#3", None)
    assert attached.model_uri is None and base64.b64decode(attached.model_inline) == tiny_model[0].read_bytes()
    stored = store_model(TrialResult.from_json(attached.to_json()), tmp_path / "m.keras")
    assert stored.model_inline is None and NOTE_KEY not in stored.details
    assert_same_model(tmp_path / "m.keras", tiny_model)


def test_a_failed_upload_falls_back_to_inline_with_a_note(s3, tiny_model):
    dead = ObjectStore(BucketConfig.from_env(s3.env(BUCKET_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")))
    attached = attach_model(completed(), tiny_model[0], "run#3", dead)
    assert base64.b64decode(attached.model_inline) == tiny_model[0].read_bytes()
    assert "upload to http://127.0.0.1" in attached.details[NOTE_KEY] and "inline instead" in attached.details[NOTE_KEY]
    assert SECRET_ACCESS_KEY not in attached.to_json()


def test_a_model_too_large_for_inline_without_a_bucket_is_a_note_and_the_trial_completes(no_bucket, tmp_path):
    big = tmp_path / "big.keras"
    big.write_bytes(b"PK\x03\x04" + b"\0" * MAX_INLINE_MODEL_BYTES)
    attached = attach_model(completed(), big, "run#3", None)
    assert attached.status == "completed" and attached.val_accuracy == 0.5
    assert attached.model_uri is None and attached.model_inline is None
    note = attached.details[NOTE_KEY]
    assert "model not returned" in note and "larger than" in note and "BUCKET_ENDPOINT_URL" in note
    assert len(attached.to_json()) < 10_000


def test_the_inline_cap_stays_under_runpods_payload_limit():
    # RunPod documents 10 MB for /run and 20 MB for /runsync; base64 grows the file by 4/3.
    assert (MAX_INLINE_MODEL_BYTES + 2) // 3 * 4 + 1_000_000 < 10_000_000


def test_a_trial_without_a_model_file_is_returned_as_it_is(tmp_path):
    failed = TrialResult(trial_id="run#1", status="failed", error="diverged")
    assert attach_model(failed, tmp_path / "none.keras", "run#1", None) == failed
    assert "saved no model" in attach_model(completed(), tmp_path / "none.keras", "run#3", None).details[NOTE_KEY]


@pytest.mark.parametrize("inline, words", [("%%% not base64", "not valid base64"),
                                           (base64.b64encode(b"hello").decode(), "not a .keras file")])
def test_a_broken_inline_model_is_a_note_and_nothing_is_written(inline, words, tmp_path):
    stored = store_model(completed().replace(model_inline=inline), tmp_path / "m.keras")
    assert stored.model_inline is None and words in stored.details[NOTE_KEY]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri", ["s3://hpo/hpo-data/" + "a" * 64 + ".npz", "s3://hpo/elsewhere/x.keras", "https://x/y"])
def test_a_model_uri_that_is_not_a_models_key_is_not_downloaded(bucket_env, uri, tmp_path):
    stored = store_model(completed().replace(model_uri=uri), tmp_path / "m.keras")
    assert "could not be stored" in stored.details[NOTE_KEY] and list(tmp_path.iterdir()) == []


def test_a_model_uri_without_storage_here_is_a_note(no_bucket, tmp_path):
    stored = store_model(completed().replace(model_uri="s3://hpo/hpo-models/run/trial-3.keras"), tmp_path / "m.keras")
    assert "no object storage is configured here" in stored.details[NOTE_KEY]
    assert not (tmp_path / "m.keras").exists()


def test_a_missing_model_object_is_a_note(bucket_env, tmp_path):
    stored = store_model(completed().replace(model_uri=f"s3://{bucket_env.bucket}/hpo-models/gone/trial-9.keras"),
                         tmp_path / "m.keras")
    assert "no object at" in stored.details[NOTE_KEY] and not (tmp_path / "m.keras").exists()


# -- the handler in-process (stand-in trainer) ---------------------------------------------------------------------

class ModelTrainer:
    """run_trial's contract; saves a small .keras-like zip where asked."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, job, on_epoch=None, should_stop=None, *, executed_on=None, save_model_to=None, **_):
        self.calls.append({"trial_id": job.trial_id, "save_model_to": save_model_to})
        on_epoch(1, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})
        if save_model_to:
            with zipfile.ZipFile(save_model_to, "w") as zf:
                zf.writestr("config.json", json.dumps({"trial": job.trial_id}))
        return TrialResult(trial_id=job.trial_id, status="completed", history={"val_accuracy": [0.5]},
                           epochs_run=1, best_epoch=1, val_metrics={"accuracy": 0.5}, executed_on=executed_on)


def handle(payload, trainer):
    worker = handler_mod.Worker(trainer=trainer, concurrency=1)
    return asyncio.run(worker.handler({"id": "job-1", "input": payload}))


def custom_job(uri: str, sha: str, **changes) -> dict:
    fields = dict(trial_id="own#0", dataset="custom", params=PARAMS, max_epochs=1, seed=0, compute_health=False,
                  data_uri=uri, data_sha256=sha, modality="image", input_shape=[16, 16, 1], num_classes=2)
    return TrialJob(**{**fields, **changes}).to_dict()


def synthetic_job(trial_id: str = "e2e#0", **changes) -> dict:
    return TrialJob(trial_id=trial_id, dataset="synthetic_images", params=PARAMS, max_epochs=1, seed=0,
                    data_fraction=0.2, compute_health=False, **changes).to_dict()


def test_the_handler_uploads_the_model_of_a_job_that_asks_for_it(bucket_env):
    trainer = ModelTrainer()
    answer = handle(synthetic_job(return_model=True), trainer)
    result = answer["trial_result"]
    assert result["model_uri"] == f"s3://{bucket_env.bucket}/hpo-models/e2e/trial-0.keras", answer
    saved = Path(trainer.calls[0]["save_model_to"])
    assert saved.suffix == ".keras" and not saved.parent.exists()  # the temporary folder is gone
    assert objectstore.default_store().size_of("hpo-models/e2e/trial-0.keras") > 0
    plain = handle(synthetic_job(), trainer)["trial_result"]
    assert trainer.calls[1]["save_model_to"] is None and plain["model_uri"] is None and plain["model_inline"] is None


def test_the_handler_returns_a_small_model_inline_without_a_bucket(no_bucket):
    answer = handle(synthetic_job(return_model=True), ModelTrainer())
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(answer["trial_result"]["model_inline"]))) as zf:
        assert json.loads(zf.read("config.json")) == {"trial": "e2e#0"}


def test_the_handler_refuses_data_whose_hash_does_not_match_before_training(bucket_env, tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"prepared data, as uploaded")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    uri = objectstore.upload_data(path, sha, objectstore.default_store())
    wrong = hashlib.sha256(b"what the job was told").hexdigest()
    trainer = ModelTrainer()
    answer = handle(custom_job(uri, wrong), trainer)
    assert answer["error_kind"] == "invalid_input" and trainer.calls == []
    assert f"hash mismatch: expected {wrong[:12]}..., got {sha[:12]}..." in answer["error"]
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_handler_names_an_unreachable_bucket_without_the_secret(s3, monkeypatch, tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    for name, value in s3.env(BUCKET_ENDPOINT_URL=endpoint, HPO_CACHE_DIR=str(tmp_path / "c")).items():
        monkeypatch.setenv(name, value)
    sha = hashlib.sha256(b"anything").hexdigest()
    trainer = ModelTrainer()
    answer = handle(custom_job(f"s3://{s3.bucket}/hpo-data/{sha}.npz", sha), trainer)
    assert answer["error_kind"] == "invalid_input" and trainer.calls == []
    assert endpoint in answer["error"] and "cannot connect" in answer["error"], answer
    assert SECRET_ACCESS_KEY not in json.dumps(answer)


# -- end to end: the SDK's worker loop, real TensorFlow, the simulator and the S3 server ----------------------------

@pytest.fixture(scope="module")
def remote(s3, tmp_path_factory):
    logs = tmp_path_factory.mktemp("worker-logs")
    cache = tmp_path_factory.mktemp("worker-cache")
    with RunPodSimulator(api_key=API_KEY, worker_timeout_s=20.0, take_hold_s=5.0) as sim:
        procs = start_workers(sim, 1, log_dir=logs, env=s3.env(HPO_CACHE_DIR=str(cache)), prefix="s3-worker")
        try:
            yield sim, procs[0], cache
        finally:
            stop_workers(procs)


def run_remote(sim, payload: dict, timeout: float = 300) -> dict:
    assert len(json.dumps(payload, separators=(",", ":"))) < MAX_JOB_BYTES  # the job names data, never carries it
    r = requests.post(f"{sim.endpoint_url}/run", json={"input": payload},
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    r.raise_for_status()
    job_id = r.json()["id"]
    sim.wait_for(lambda s: s.job(job_id)["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"), timeout,
                 what=f"job {job_id} finished")
    return sim.job(job_id)


def test_a_remote_trial_returns_its_model_through_the_bucket(remote, bucket_env, tmp_path):
    sim, worker, _ = remote
    job = TrialJob.from_dict(synthetic_job("remote#4"))
    with RunPodBackend(sim.endpoint_url, API_KEY) as backend:  # asks for the model, stores what comes back
        result = backend.run(job, save_model_to=str(tmp_path / "best_model.keras"), timeout_s=300)
    assert result.status == "completed" and result.model_inline is None, result.error
    assert result.model_uri == f"s3://{bucket_env.bucket}/hpo-models/remote/trial-4.keras"
    assert NOTE_KEY not in result.details
    sent = [j["input"] for j in sim.jobs() if j["input"].get("trial_id") == "remote#4"]
    assert [j["return_model"] for j in sent] == [True]
    assert len(json.dumps(sent[0], separators=(",", ":"))) < MAX_JOB_BYTES

    import keras

    from hpo import datasets

    data = datasets.load("synthetic_images", validation_split=0.2, seed=0, data_fraction=0.2)
    model = keras.models.load_model(tmp_path / "best_model.keras")
    test = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True, batch_size=256)
    assert test["accuracy"] == pytest.approx(result.test_metrics["accuracy"], abs=1e-6)
    assert SECRET_ACCESS_KEY not in worker.log_text()


def test_a_remote_trial_trains_on_own_data_from_the_bucket(remote, bucket_env, tmp_path):
    from hpo.datasets.custom import load_custom
    from hpo.userdata import prepare

    sim, worker, cache = remote
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    x = (rng.random((120, 16, 16, 1)) * 60).astype(np.uint8)
    x[y == 1, :8] += 150  # class 1 is bright on top: learnable in an epoch or two
    prepared = prepare((x, y), out_dir=tmp_path / "prepared", modality="image")
    uri = objectstore.upload_data(prepared.path, prepared.sha256, objectstore.default_store())
    job = run_remote(sim, custom_job(uri, prepared.sha256, return_model=True))
    assert job["status"] == "COMPLETED", job
    result = TrialResult.from_dict(job["output"]["trial_result"])
    assert result.status == "completed", result.error
    cached = cache / f"{prepared.sha256}.npz"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == prepared.sha256  # fetched once, verified, cached
    store_model(result, tmp_path / "best_model.keras")

    import keras

    data = load_custom(prepared.uri, prepared.sha256, validation_split=0.2, seed=0, data_fraction=1.0)
    model = keras.models.load_model(tmp_path / "best_model.keras")
    test = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True, batch_size=256)
    assert test["accuracy"] == pytest.approx(result.test_metrics["accuracy"], abs=1e-6)

    # The same object under a hash the job was not prepared with: refused before training, nothing cached.
    wrong = hashlib.sha256(b"another dataset").hexdigest()
    refused = run_remote(sim, custom_job(uri, wrong, trial_id="own#1"))
    assert refused["status"] == "FAILED" and "hash mismatch" in refused["error"], refused
    assert not (cache / f"{wrong}.npz").exists()
    assert SECRET_ACCESS_KEY not in worker.log_text() + json.dumps(refused)


def test_a_remote_run_on_own_data_has_the_files_of_a_local_one(remote, bucket_env, tmp_path, monkeypatch):
    """hpo.optimize on the user's arrays with use_runpod_service: the data goes up once, every job names it by URI and
    hash (< 1 KB), the models come back, and the run folder has best_model.keras (giving the reported test accuracy)
    and the plots that need the model."""
    import hpo
    from hpo.datasets.custom import load_custom

    sim, worker, cache = remote
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 50)
    x = (rng.random((150, 12, 12)) * 60).astype(np.uint8)
    for k in range(3):
        x[y == k, 4 * k:4 * k + 4] += 150
    before = {j["id"] for j in sim.jobs()}
    result = hpo.optimize(data=(x, y), use_runpod_service=True, runpod_endpoint_url=sim.endpoint_url,
                          runpod_fallback_local=False, trials=2, max_epochs_per_trial=2, quiet=True, pruner="none",
                          plot_generation="all", output_dir=str(tmp_path / "out"), run_name="remote-own")
    assert result.completed == 2, result.trials
    assert all(t["executed_on"].startswith("runpod:") for t in result.trials)
    run_dir = tmp_path / "out" / "remote-own"
    config = json.loads((run_dir / "config.json").read_text())["config"]
    sha = config["data_sha256"]
    sent = [j["input"] for j in sim.jobs() if j["id"] not in before]
    assert len(sent) == 2
    for job in sent:
        assert len(json.dumps(job, separators=(",", ":"))) < MAX_JOB_BYTES
        assert job["data_uri"] == f"s3://{bucket_env.bucket}/hpo-data/{sha}.npz" and job["data_sha256"] == sha
        assert job["return_model"] is True
    cached = cache / f"{sha}.npz"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha  # the worker verified and cached it

    import keras

    data = load_custom((run_dir / "data" / f"{sha}.npz").as_uri(), sha, validation_split=0.2, seed=42,
                       data_fraction=1.0)
    model = keras.models.load_model(run_dir / "best_model.keras")
    test = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True, batch_size=256)
    assert test["accuracy"] == pytest.approx(result.best_test_accuracy, abs=1e-6)
    for plot in ("confusion", "weights", "activations"):  # drawn from the model that came back
        assert (run_dir / "plots" / f"{plot}.png").is_file(), sorted(p.name for p in (run_dir / "plots").iterdir())
    assert (run_dir / "report.html").is_file()
    assert SECRET_ACCESS_KEY not in worker.log_text()
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".html", ".log", ".txt"):
            assert SECRET_ACCESS_KEY not in path.read_text(errors="replace"), path
