"""A real S3-compatible server on loopback for tests and bench/: moto's server in a process of its own.

    with s3_server() as s3:
        env = s3.env()            # BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, BUCKET_NAME
        ...

The server listens on 127.0.0.1 only, on a free port, keeps its objects in memory and is stopped when the block
ends. Any non-empty credentials are accepted by moto; the ones yielded here look like secrets so tests can check that
they never leak; ``refuse_credentials=True`` makes the server refuse them (403), as a wrong secret would be.
:meth:`S3Server.stop` (and :meth:`S3Server.restart`) lets a test make the endpoint unreachable while it runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["S3Server", "s3_server", "free_port", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"]

ACCESS_KEY_ID = "hpotestkeyid"
SECRET_ACCESS_KEY = "s3-SECRET-test-key-5c1e9a"  # noqa: S105 - a throw-away credential of the loopback server
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/moto-api/", timeout=2):  # noqa: S310 - loopback only
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the server is up
    except OSError:
        return False


@dataclass
class S3Server:
    """A running moto server: ``endpoint_url`` (http://127.0.0.1:PORT), credentials, and the default bucket name."""

    port: int
    bucket: str = "hpo"
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = field(default=SECRET_ACCESS_KEY, repr=False)
    start_timeout_s: float = 120.0
    #: True: moto checks every request's credentials against its (empty) IAM, so the yielded keys are refused
    #: (403), as a wrong secret would be
    refuse_credentials: bool = False
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment variables that point hpo (and RunPod's own tools) at this server."""
        return {"BUCKET_ENDPOINT_URL": self.endpoint_url, "BUCKET_ACCESS_KEY_ID": self.access_key_id,
                "BUCKET_SECRET_ACCESS_KEY": self.secret_access_key, "BUCKET_NAME": self.bucket, **extra}

    def start(self) -> S3Server:
        if self.proc is not None and self.proc.poll() is None:
            return self
        env = dict(os.environ)
        env.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        if self.refuse_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while not _answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto's S3 server exited with code {self.proc.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto's S3 server did not answer on {self.endpoint_url} within "
                                   f"{self.start_timeout_s:g} s")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """Stop the server (its objects are gone); the port is closed afterwards."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(timeout=15)

    def restart(self) -> S3Server:
        """A fresh, empty server on the same port."""
        self.stop()
        return self.start()

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API), keeping the server running."""
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - loopback only
            pass


@contextmanager
def s3_server(bucket: str = "hpo", *, start_timeout_s: float = 120.0,
              refuse_credentials: bool = False) -> Iterator[S3Server]:
    """Start moto's S3 server on a free 127.0.0.1 port (retrying with another port if the first was taken in
    between); yields the :class:`S3Server`; stops it on exit."""
    server = None
    for attempt in range(3):
        server = S3Server(port=free_port(), bucket=bucket, start_timeout_s=start_timeout_s,
                          refuse_credentials=refuse_credentials)
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.stop()
