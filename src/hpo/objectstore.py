"""S3-compatible object storage for own data and trained models, configured the way RunPod's own tools expect.

Configuration (environment; the names RunPod's ``rp_upload`` reads, plus hpo's bucket name):

    BUCKET_ENDPOINT_URL        e.g. https://s3api-eu-ro-1.runpod.io (a network volume's S3 API), MinIO, AWS, ...
    BUCKET_ACCESS_KEY_ID       the access key id
    BUCKET_SECRET_ACCESS_KEY   the secret (registered with :func:`hpo.redact.register_secret`; never in any text)
    BUCKET_NAME                the bucket (default "hpo"; for a RunPod network volume: the volume id)
    BUCKET_REGION              optional; else taken from the endpoint (``s3api-<datacenter>``, ``.s3.<region>.``)

Keys: own data ``hpo-data/<sha256>.npz`` (content-addressed: uploaded once), models ``hpo-models/...keras``.
:func:`fetch` is the worker side: it downloads a data URI once into a cache (``$HPO_CACHE_DIR``, else the RunPod
network volume's ``/runpod-volume/hpo-cache`` when one is mounted, else ``~/.cache/hpo``), checks its SHA-256 and
trusts the cached file for the rest of the process. Every wait is bounded (connect/read timeouts, two attempts), so an
unreachable endpoint fails in seconds with a ConfigError / DatasetError that names the endpoint and the cause.
boto3 is imported only when storage is used; this module imports core only.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .datafiles import sha256_file
from .exceptions import ConfigError, DatasetError
from .redact import mask_text, mask_url, register_secret

__all__ = ["BucketConfig", "ObjectStore", "default_store", "fetch", "upload_data", "data_key", "parse_uri",
           "sha256_file", "cache_folder", "ENV_VARS", "DATA_PREFIX", "MODEL_PREFIX"]

log = logging.getLogger("hpo.objectstore")

ENV_VARS = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
DATA_PREFIX = "hpo-data/"
MODEL_PREFIX = "hpo-models/"
RUNPOD_VOLUME = Path("/runpod-volume")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BucketConfig:
    """Where the bucket is and how to sign in; the secret is kept out of repr."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    bucket: str = "hpo"
    region: str = "us-east-1"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0  # per socket read of a transfer (not the whole transfer)
    quick_read_timeout_s: float = 10.0  # metadata requests (bucket and object checks)
    max_attempts: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BucketConfig | None:
        """The configuration in ``env`` (default: os.environ); None when BUCKET_ENDPOINT_URL is not set. A partial
        or malformed configuration is a ConfigError naming the variable."""
        env = os.environ if env is None else env
        endpoint = (env.get("BUCKET_ENDPOINT_URL") or "").strip()
        secret = (env.get("BUCKET_SECRET_ACCESS_KEY") or "").strip()
        register_secret(secret)  # before anything can mention it
        if not endpoint:
            return None
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"BUCKET_ENDPOINT_URL={mask_url(endpoint)!r} is not allowed; allowed: an http:// or "
                              "https:// URL of an S3-compatible server", field="BUCKET_ENDPOINT_URL")
        key_id = (env.get("BUCKET_ACCESS_KEY_ID") or "").strip()
        missing = [name for name, value in (("BUCKET_ACCESS_KEY_ID", key_id),
                                            ("BUCKET_SECRET_ACCESS_KEY", secret)) if not value]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise ConfigError(f"BUCKET_ENDPOINT_URL is set but {' and '.join(missing)} {verb} not; "
                              "object storage needs BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and "
                              "BUCKET_SECRET_ACCESS_KEY", field=missing[0])
        bucket = (env.get("BUCKET_NAME") or "hpo").strip()
        if not _BUCKET.match(bucket):
            raise ConfigError(f"BUCKET_NAME={bucket[:80]!r} is not allowed; allowed: 3 to 63 lower-case letters, "
                              "digits, dots and hyphens (an S3 bucket name)", field="BUCKET_NAME")
        region = (env.get("BUCKET_REGION") or "").strip() or _region_of(endpoint)
        return cls(endpoint_url=endpoint.rstrip("/"), access_key_id=key_id, secret_access_key=secret,
                   bucket=bucket, region=region)

    @property
    def where(self) -> str:
        """The endpoint as it may be shown (masked)."""
        return str(mask_url(self.endpoint_url))


def _region_of(endpoint: str) -> str:
    host = (urlsplit(endpoint).hostname or "").lower()
    match = re.match(r"^s3api-([a-z0-9-]+)\.runpod\.io$", host)  # RunPod network volumes: the datacenter id
    if match:
        return match.group(1).upper()
    match = re.search(r"(?:^|\.)s3[.-]([a-z0-9-]+)\.", host)  # AWS-style s3.<region>.amazonaws.com and lookalikes
    if match and match.group(1) not in ("amazonaws", "dualstack"):
        return match.group(1)
    return "us-east-1"


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); DatasetError for anything else."""
    parts = urlsplit(uri) if isinstance(uri, str) else None
    if parts is None or parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise DatasetError(f"{mask_text(str(uri))[:200]!r} is not an object URI; allowed: s3://bucket/key")
    return parts.netloc, parts.path.lstrip("/")


def _status(exc: BaseException) -> tuple[str, int | None]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", None
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def _not_found(exc: BaseException) -> bool:
    code, status = _status(exc)
    return status == 404 or code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


def _explain(exc: BaseException) -> str:
    """The cause of a storage failure in one masked line (never the secret)."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is a dependency
        bx = None
    code, status = _status(exc)
    if code or status:
        message = str((getattr(exc, "response", {}).get("Error") or {}).get("Message") or "")
        text = f"{code or status}" + (f" ({message})" if message and message != code else "")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") or status in (401, 403):
            text += "; the credentials were refused: check BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY"
        return str(mask_text(text))[:300]
    if bx is not None and isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return "cannot connect (connection refused or timed out): is the server running and the URL right?"
    if bx is not None and isinstance(exc, bx.ReadTimeoutError):
        return "the server stopped answering (read timeout)"
    first = (str(exc).strip().splitlines() or [""])[0]
    return str(mask_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__))[:300]


class ObjectStore:
    """One bucket on an S3-compatible server: check, upload, download. Thread-safe; the boto3 client is created on
    first use."""

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self.bucket = config.bucket
        self.where = config.where
        self._lock = threading.Lock()
        self._clients: dict[bool, Any] = {}

    def __repr__(self) -> str:
        return f"ObjectStore({self.where}, bucket={self.bucket!r})"

    def _client(self, quick: bool = False) -> Any:
        """The boto3 client for transfers, or (``quick``) for metadata requests with a short read timeout."""
        with self._lock:
            if quick not in self._clients:
                try:
                    import boto3
                    from botocore.config import Config

                    c = self.config
                    self._clients[quick] = boto3.session.Session().client(
                        "s3", endpoint_url=c.endpoint_url, aws_access_key_id=c.access_key_id,
                        aws_secret_access_key=c.secret_access_key, region_name=c.region,
                        config=Config(signature_version="s3v4", connect_timeout=c.connect_timeout_s,
                                      read_timeout=c.quick_read_timeout_s if quick else c.read_timeout_s,
                                      retries={"max_attempts": c.max_attempts, "mode": "standard"},
                                      s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))
                except Exception as exc:  # noqa: BLE001 - e.g. a broken AWS profile in the environment
                    raise ConfigError(f"cannot use object storage at {self.where}: {_explain(exc)}",
                                      field="BUCKET_ENDPOINT_URL") from None
            return self._clients[quick]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def check(self) -> None:
        """The endpoint answers and the bucket exists (it is created when missing); ConfigError otherwise."""
        s3 = self._client(quick=True)
        try:
            s3.head_bucket(Bucket=self.bucket)
            return
        except Exception as exc:  # noqa: BLE001 - every cause becomes one clear message
            if not _not_found(exc):
                raise ConfigError(f"object storage at {self.where} is not usable (bucket {self.bucket!r}): "
                                  f"{_explain(exc)}", field="BUCKET_ENDPOINT_URL") from None
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.config.region not in ("us-east-1", ""):
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
            s3.create_bucket(**kwargs)
            log.info("created bucket %s at %s", self.bucket, self.where)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"bucket {self.bucket!r} does not exist at {self.where} and could not be created: "
                              f"{_explain(exc)}; create it, or set BUCKET_NAME to an existing bucket",
                              field="BUCKET_NAME") from None

    def size_of(self, key: str) -> int | None:
        """The size of the object at ``key``, or None when there is none."""
        try:
            return int(self._client(quick=True).head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                return None
            raise DatasetError(f"cannot reach object storage at {self.where}: {_explain(exc)}") from None

    def upload_file(self, path: str | os.PathLike[str], key: str, *, skip_existing: bool = True) -> str:
        """Upload ``path`` to ``key``; its ``s3://bucket/key`` URI. With ``skip_existing`` (content-addressed keys),
        an object of the same key and size is kept and nothing is sent."""
        path = Path(path)
        size = path.stat().st_size
        uri = self.uri(key)
        if skip_existing and self.size_of(key) == size:
            log.info("%s is already in the bucket at %s; not uploaded again", uri, self.where)
            return uri
        try:
            self._client().upload_file(str(path), self.bucket, key)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"could not upload {path.name} to {uri} at {self.where}: {_explain(exc)}") from None
        log.info("uploaded %s (%d bytes) to %s at %s", path.name, size, uri, self.where)
        return uri

    def download(self, uri: str, dest: str | os.PathLike[str]) -> Path:
        """Download ``uri`` (its bucket on this store's endpoint) to ``dest``; DatasetError naming the URI, the
        endpoint and the cause when it cannot."""
        bucket, key = parse_uri(uri)
        dest = Path(dest)
        try:
            self._client().download_file(bucket, key, str(dest))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                raise DatasetError(f"no object at {uri} on {self.where}") from None
            raise DatasetError(f"could not download {uri} from {self.where}: {_explain(exc)}") from None
        return dest


_stores: dict[BucketConfig, ObjectStore] = {}
_stores_lock = threading.Lock()


def default_store(env: Mapping[str, str] | None = None) -> ObjectStore | None:
    """The store the environment configures (one per configuration and process), or None when none is."""
    config = BucketConfig.from_env(env)
    if config is None:
        return None
    with _stores_lock:
        return _stores.setdefault(config, ObjectStore(config))


# -- own data: content-addressed upload and the worker's cached, hash-checked fetch -------------------------------

def _check_sha(sha256: Any) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise DatasetError(f"data_sha256={str(sha256)[:80]!r} is not allowed; allowed: 64 lowercase hexadecimal "
                           "digits (the SHA-256 of the data file)")
    return sha256


def data_key(sha256: str) -> str:
    return f"{DATA_PREFIX}{_check_sha(sha256)}.npz"


def upload_data(path: str | os.PathLike[str], sha256: str, store: ObjectStore) -> str:
    """Upload prepared data once (key ``hpo-data/<sha256>.npz``); its URI. The file must have that SHA-256."""
    key = data_key(sha256)
    size = Path(path).stat().st_size
    if store.size_of(key) == size:
        log.info("data %s... is already in the bucket; not uploaded again", sha256[:12])
        return store.uri(key)
    actual = sha256_file(path)
    if actual != sha256:
        raise DatasetError(f"hash mismatch: {Path(path).name} has SHA-256 {actual[:12]}..., not the expected "
                           f"{sha256[:12]}...; prepare the data again")
    return store.upload_file(path, key, skip_existing=False)


def cache_folder(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where fetched data is kept: ``explicit``, else $HPO_CACHE_DIR, else the RunPod network volume
    (/runpod-volume/hpo-cache) when one is mounted, else ~/.cache/hpo."""
    if explicit:
        return Path(explicit)
    if os.environ.get("HPO_CACHE_DIR", "").strip():
        return Path(os.environ["HPO_CACHE_DIR"].strip())
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME / "hpo-cache"
    return Path.home() / ".cache" / "hpo"


_verified: dict[str, tuple[str, int, int]] = {}  # path -> (sha256, size, mtime_ns) checked in this process
_fetch_locks: dict[str, threading.Lock] = {}
_fetch_guard = threading.Lock()


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _trusted(path: Path, sha256: str) -> bool:
    """True when ``path`` was verified to have ``sha256`` in this process and has not changed since."""
    seen = _verified.get(str(path))
    try:
        return seen is not None and seen == (sha256, *_stat(path))
    except OSError:
        return False


def _verify(path: Path, sha256: str) -> str:
    """The file's SHA-256; remembered for this process when it is the expected one."""
    actual = sha256_file(path)
    if actual == sha256:
        _verified[str(path)] = (sha256, *_stat(path))
    return actual


def _mismatch(uri: str, sha256: str, actual: str) -> DatasetError:
    return DatasetError(f"hash mismatch: expected {sha256[:12]}..., got {actual[:12]}... for "
                        f"{mask_text(uri)}; the data changed after it was prepared: prepare and upload it again")


def fetch(uri: str, sha256: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local path of the data at ``uri`` (``s3://bucket/key`` or ``file:///abs/path``), checked against
    ``sha256``. An s3:// object is downloaded once to ``<cache>/<sha256>.npz`` (a temporary file, then an atomic
    rename), so workers sharing a network volume share the cache. DatasetError on a hash mismatch (the bad download
    is deleted) or when the data cannot be reached."""
    _check_sha(sha256)
    if isinstance(uri, str) and uri.startswith("file://"):
        path = Path(unquote(urlsplit(uri).path))
        if not path.is_absolute() or not path.is_file():
            raise DatasetError(f"no data file at {mask_text(uri)[:300]}")
        if not _trusted(path, sha256):
            actual = _verify(path, sha256)
            if actual != sha256:
                raise _mismatch(uri, sha256, actual)
        return path
    parse_uri(uri)
    folder = cache_folder(cache_dir)
    target = folder / f"{sha256}.npz"
    with _fetch_guard:
        lock = _fetch_locks.setdefault(sha256, threading.Lock())
    with lock:  # one download per process and hash; other threads wait for it
        if _trusted(target, sha256):
            return target
        if target.is_file():
            if _verify(target, sha256) == sha256:
                return target
            log.warning("cached %s does not match its hash; downloading it again", target)
            target.unlink(missing_ok=True)
        store = default_store()
        if store is None:
            raise DatasetError(f"data_uri {mask_text(uri)} is in object storage, but none is configured here: set "
                               f"{', '.join(ENV_VARS)} (and BUCKET_NAME)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create the data cache {folder}: {exc.strerror or exc}; set HPO_CACHE_DIR "
                               "to a writable folder") from None
        part = folder / f".{sha256}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        try:
            store.download(uri, part)
            actual = sha256_file(part)
            if actual != sha256:
                raise _mismatch(uri, sha256, actual)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        _verified[str(target)] = (sha256, *_stat(target))  # hashed just now, as downloaded
        log.info("fetched %s into %s", mask_text(uri), target)
        return target

