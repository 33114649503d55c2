"""hpo.objectstore against a real S3-compatible server (moto's server, a process of its own on 127.0.0.1).

Configuration by RunPod's variable names, upload/download, content-addressed uploads sent once, the worker's cached
and hash-checked fetch, and clear errors (naming the endpoint, never the secret) for an unreachable endpoint, a
missing object or a corrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys

import pytest

from hpo import objectstore
from hpo.exceptions import ConfigError, DatasetError
from hpo.objectstore import BucketConfig, ObjectStore, fetch, upload_data
from hpo.redact import mask_text
from hpo.testing.s3 import SECRET_ACCESS_KEY, free_port, s3_server

from .conftest import hpo_env


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture
def env(s3, monkeypatch, tmp_path):
    """BUCKET_* pointing at the server, a fresh cache folder; the bucket exists."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    ObjectStore(BucketConfig.from_env()).check()
    return s3


def raw_client(s3):
    """A plain boto3 client: the test's own hands on the server (to corrupt or inspect objects)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key_id,
                        aws_secret_access_key=s3.secret_access_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def data_file(tmp_path, content: bytes, name: str = "data.npz"):
    path = tmp_path / name
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def unreachable_env(s3) -> dict[str, str]:
    return s3.env(BUCKET_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")


# -- configuration ------------------------------------------------------------------------------------------------

def test_the_configuration_uses_runpods_variable_names_and_hides_the_secret():
    secret = "cfg-SECRET-value-88aa"
    config = BucketConfig.from_env({"BUCKET_ENDPOINT_URL": "https://s3api-eu-ro-1.runpod.io/",
                                    "BUCKET_ACCESS_KEY_ID": "user_2x", "BUCKET_SECRET_ACCESS_KEY": secret,
                                    "BUCKET_NAME": "vol123abc"})
    assert (config.endpoint_url, config.access_key_id, config.bucket) == ("https://s3api-eu-ro-1.runpod.io",
                                                                          "user_2x", "vol123abc")
    assert config.region == "EU-RO-1"  # a RunPod network volume's datacenter
    assert secret not in repr(config) and secret not in repr(ObjectStore(config))
    assert mask_text(f"oops {secret}") == "oops ***"  # registered: masked wherever it appears from now on
    assert BucketConfig.from_env({"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9", "BUCKET_ACCESS_KEY_ID": "k",
                                  "BUCKET_SECRET_ACCESS_KEY": secret}).bucket == "hpo"
    assert BucketConfig.from_env({}) is None
    assert BucketConfig.from_env({"BUCKET_ACCESS_KEY_ID": "k"}) is None


@pytest.mark.parametrize("env, field, words", [
    ({"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9", "BUCKET_ACCESS_KEY_ID": "k"}, "BUCKET_SECRET_ACCESS_KEY",
     "BUCKET_SECRET_ACCESS_KEY is not"),
    ({"BUCKET_ENDPOINT_URL": "ftp://x", "BUCKET_ACCESS_KEY_ID": "k", "BUCKET_SECRET_ACCESS_KEY": "s"},
     "BUCKET_ENDPOINT_URL", "http:// or https://"),
    ({"BUCKET_ENDPOINT_URL": "http://h", "BUCKET_ACCESS_KEY_ID": "k", "BUCKET_SECRET_ACCESS_KEY": "s",
      "BUCKET_NAME": "Bad_Name"}, "BUCKET_NAME", "S3 bucket name"),
])
def test_a_partial_or_malformed_configuration_is_a_config_error_naming_the_variable(env, field, words):
    with pytest.raises(ConfigError) as info:
        BucketConfig.from_env(env)
    assert info.value.field == field and words in str(info.value)


# -- transfers ----------------------------------------------------------------------------------------------------

def test_upload_and_download_round_trip(env, tmp_path):
    store = objectstore.default_store()
    path, _ = data_file(tmp_path, b"\x00model bytes\xff" * 1000, "x.bin")
    uri = store.upload_file(path, "some/where/x.bin")
    assert uri == f"s3://{env.bucket}/some/where/x.bin"
    assert store.size_of("some/where/x.bin") == path.stat().st_size and store.size_of("nothing/here") is None
    out = store.download(uri, tmp_path / "back.bin")
    assert out.read_bytes() == path.read_bytes()


def test_a_missing_bucket_is_created_by_check(env):
    store = ObjectStore(BucketConfig.from_env(env.env(BUCKET_NAME="fresh-bucket-1")))

    def names():
        return [b["Name"] for b in raw_client(env).list_buckets()["Buckets"]]

    assert "fresh-bucket-1" not in names()
    store.check()
    assert "fresh-bucket-1" in names()
    store.check()  # an existing bucket is fine


def test_content_addressed_data_is_uploaded_once(env, tmp_path):
    store = objectstore.default_store()
    path, sha = data_file(tmp_path, b"prepared arrays v1" * 500)
    uri = upload_data(path, sha, store)
    assert uri == f"s3://{env.bucket}/hpo-data/{sha}.npz"
    # The test marks the stored object (same size, other bytes): a second upload that sent the file would undo it.
    marker = b"M" * path.stat().st_size
    raw_client(env).put_object(Bucket=env.bucket, Key=f"hpo-data/{sha}.npz", Body=marker)
    assert upload_data(path, sha, store) == uri
    body = raw_client(env).get_object(Bucket=env.bucket, Key=f"hpo-data/{sha}.npz")["Body"].read()
    assert body == marker


def test_data_whose_hash_is_not_the_given_one_is_not_uploaded(env, tmp_path):
    store = objectstore.default_store()
    path, _ = data_file(tmp_path, b"these bytes")
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(DatasetError, match="hash mismatch"):
        upload_data(path, wrong, store)
    assert store.size_of(f"hpo-data/{wrong}.npz") is None


# -- the worker's fetch -------------------------------------------------------------------------------------------

def test_fetch_downloads_once_and_then_serves_the_cache_without_a_request(env, tmp_path, monkeypatch):
    content = b"cached data " * 4096
    path, sha = data_file(tmp_path, content)
    uri = upload_data(path, sha, objectstore.default_store())
    cache = tmp_path / "cache"
    got = fetch(uri, sha)
    assert got == cache / f"{sha}.npz" and got.read_bytes() == content
    assert sorted(p.name for p in cache.iterdir()) == [f"{sha}.npz"]  # no temporary file left behind
    # With the endpoint gone, a second fetch can only succeed without a request.
    for name, value in unreachable_env(env).items():
        monkeypatch.setenv(name, value)
    assert fetch(uri, sha) == got
    # Another process (an explicit cache_dir this time) verifies the cached file by its hash, then uses it.
    script = ("import sys\nfrom hpo.objectstore import fetch\n"
              "print(fetch(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3]))\n")
    out = subprocess.run([sys.executable, "-c", script, uri, sha, str(cache)], capture_output=True, text=True,
                         env=hpo_env(**unreachable_env(env)), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(got)


def test_a_corrupted_cached_file_is_downloaded_again_in_a_new_process(env, tmp_path):
    content = b"good data " * 1000
    path, sha = data_file(tmp_path, content)
    uri = upload_data(path, sha, objectstore.default_store())
    cache = tmp_path / "other-cache"
    cached = cache / f"{sha}.npz"
    cache.mkdir()
    cached.write_bytes(b"X" * len(content))  # same size, wrong bytes (a torn write, a bad disk)
    script = "import sys\nfrom hpo.objectstore import fetch\nfetch(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3])\n"
    out = subprocess.run([sys.executable, "-c", script, uri, sha, str(cache)], capture_output=True, text=True,
                         env=hpo_env(**env.env()), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert cached.read_bytes() == content


def test_a_corrupted_object_is_a_hash_mismatch_and_leaves_nothing_in_the_cache(env, tmp_path):
    _, sha = data_file(tmp_path, b"the data as prepared")
    raw_client(env).put_object(Bucket=env.bucket, Key=f"hpo-data/{sha}.npz", Body=b"the data, tampered with")
    uri = f"s3://{env.bucket}/hpo-data/{sha}.npz"
    got = hashlib.sha256(b"the data, tampered with").hexdigest()
    with pytest.raises(DatasetError) as info:
        fetch(uri, sha)
    assert f"hash mismatch: expected {sha[:12]}..., got {got[:12]}..." in str(info.value)
    assert uri in str(info.value)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_missing_object_is_a_clear_error(env, tmp_path):
    sha = hashlib.sha256(b"never uploaded").hexdigest()
    uri = f"s3://{env.bucket}/hpo-data/{sha}.npz"
    with pytest.raises(DatasetError, match=f"no object at {uri} on {env.endpoint_url}"):
        fetch(uri, sha)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_without_storage_configured_names_the_variables(monkeypatch, tmp_path):
    for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    sha = "ab" * 32
    with pytest.raises(DatasetError, match="none is configured here: set BUCKET_ENDPOINT_URL"):
        fetch(f"s3://hpo/hpo-data/{sha}.npz", sha, cache_dir=tmp_path)


def test_a_local_file_uri_is_hash_checked_and_never_deleted(tmp_path):
    path, sha = data_file(tmp_path, b"local prepared data")
    assert fetch(path.as_uri(), sha) == path
    wrong = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(DatasetError, match="hash mismatch"):
        fetch(path.as_uri(), wrong)
    assert path.read_bytes() == b"local prepared data"
    with pytest.raises(DatasetError, match="data_sha256="):
        fetch(path.as_uri(), "ABC")
    with pytest.raises(DatasetError, match="no data file"):
        fetch((tmp_path / "gone.npz").as_uri(), sha)


def test_the_cache_folder_follows_the_argument_the_environment_and_the_network_volume(monkeypatch, tmp_path):
    monkeypatch.delenv("HPO_CACHE_DIR", raising=False)
    volume = tmp_path / "runpod-volume"
    monkeypatch.setattr(objectstore, "RUNPOD_VOLUME", volume)
    assert objectstore.cache_folder() == objectstore.Path.home() / ".cache" / "hpo"
    volume.mkdir()
    assert objectstore.cache_folder() == volume / "hpo-cache"
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "c"))
    assert objectstore.cache_folder() == tmp_path / "c"
    assert objectstore.cache_folder(tmp_path / "d") == tmp_path / "d"


# -- an unreachable endpoint ----------------------------------------------------------------------------------------

def test_an_unreachable_endpoint_is_a_clear_error_naming_it_without_the_secret(env, tmp_path, monkeypatch, caplog):
    bad = unreachable_env(env)
    endpoint = bad["BUCKET_ENDPOINT_URL"]
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    store = objectstore.default_store()
    with pytest.raises(ConfigError) as checked:
        store.check()
    assert checked.value.field == "BUCKET_ENDPOINT_URL"
    path, sha = data_file(tmp_path, b"data for nowhere")
    with pytest.raises(DatasetError) as uploaded:
        upload_data(path, sha, store)
    with pytest.raises(DatasetError) as fetched:
        fetch(f"s3://{env.bucket}/hpo-data/{sha}.npz", sha)
    for exc in (checked.value, uploaded.value, fetched.value):
        text = str(exc)
        assert endpoint in text and "cannot connect" in text, text
        assert SECRET_ACCESS_KEY not in text
    assert list((tmp_path / "cache").iterdir()) == []
    assert caplog.records  # botocore's debug log ran: none of it holds the secret
    for record in caplog.records:
        assert SECRET_ACCESS_KEY not in record.getMessage() and SECRET_ACCESS_KEY not in (record.exc_text or "")


def test_refused_credentials_are_named_without_the_secret(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with s3_server(refuse_credentials=True) as strict:
        store = ObjectStore(BucketConfig.from_env(strict.env()))
        with pytest.raises(ConfigError) as checked:
            store.check()
        path, sha = data_file(tmp_path, b"data for a locked bucket")
        with pytest.raises(DatasetError) as uploaded:
            upload_data(path, sha, store)
    for exc in (checked.value, uploaded.value):
        text = str(exc)
        assert "403" in text and "check BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY" in text, text
        assert strict.endpoint_url in text and SECRET_ACCESS_KEY not in text
    assert all(SECRET_ACCESS_KEY not in r.getMessage() for r in caplog.records)
