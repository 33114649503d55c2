"""A throw-away PostgreSQL 15 cluster for tests and bench/: initdb in a temp folder, a free loopback port, passwords.

As root, initdb/pg_ctl run as the ``postgres`` user (PostgreSQL refuses to run as root). The cluster listens on
127.0.0.1 only, uses scram-sha-256 passwords for TCP, and is stopped (fast) when the fixture ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PASSWORD = "pg-SECRET-pw-7731"
USER = "hpo"
DATABASE = "hpo"


def _bin(name: str) -> str:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian package postgresql; .ci/run installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@contextmanager
def postgres_cluster() -> Iterator[dict[str, str | int]]:
    """Yields {"host", "port", "user", "password", "database", "url"}: a database ``hpo`` owned by user ``hpo``."""
    base = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    pwfile = base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        for p in (sock, pwfile):
            shutil.chown(p, "postgres")
    _as_postgres([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"])
    port = _free_port()
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} -c fsync=off " \
           "-c max_connections=200"
    _as_postgres([_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "60", "start"])
    try:
        psql = [_bin("psql"), "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres", "-v",
                "ON_ERROR_STOP=1", "-c"]
        _as_postgres([*psql, f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"])
        _as_postgres([*psql, f"CREATE DATABASE {DATABASE} OWNER {USER}"])
        url = f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
        yield {"host": "127.0.0.1", "port": port, "user": USER, "password": PASSWORD, "database": DATABASE,
               "url": url}
    finally:
        try:
            _as_postgres([_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"])
        except subprocess.CalledProcessError:
            time.sleep(1)
        shutil.rmtree(base, ignore_errors=True)
