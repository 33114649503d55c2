"""One run folder, one writer: an OS file lock taken before anything else is written to the folder.

The lock is ``RUN_DIR/.hpo.lock`` (``filelock``: ``flock`` on POSIX), so the operating system releases it when the
holder dies, ``kill -9`` included, and the next run takes it over. Who holds it (host, pid, since) is written beside it
in ``.hpo.lock.json`` after the lock is taken, so that a refused run can name the holder.

    with RunLock(run_dir):          # RunLocked (a ConfigError: exit code 2, HTTP 409) when another process holds it
        ...
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

__all__ = ["RunLock", "RunLocked", "LOCK_FILE", "HOLDER_FILE", "holder_of"]

LOCK_FILE = ".hpo.lock"
HOLDER_FILE = ".hpo.lock.json"


class RunLocked(ConfigError):
    """Another live process writes to this run folder."""

    def __init__(self, run_dir: Path, holder: dict[str, Any] | None) -> None:
        self.run_dir = Path(run_dir)
        self.holder = holder or {}
        who = (f"process {self.holder.get('pid', '?')} on host {self.holder.get('host', '?')}"
               f" (since {self.holder.get('since', '?')})") if holder else "another process"
        super().__init__(f"run folder {self.run_dir} is in use by {who}; wait for it to finish, stop it, or pick "
                         "another run_name")


def holder_of(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last recorded holder of a run folder's lock (it may have ended since)."""
    try:
        data = json.loads((Path(run_dir) / HOLDER_FILE).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


class RunLock:
    """Exclusive, non-blocking lock of one run folder (creates the folder if needed). Reentrant within one object."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self._lock: Any = None

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def acquire(self) -> RunLock:
        import filelock

        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.run_dir / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunLocked(self.run_dir, holder_of(self.run_dir)) from None
        self._lock = lock
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = self.run_dir / f"{HOLDER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, self.run_dir / HOLDER_FILE)
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            (self.run_dir / HOLDER_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        self._lock.release()
        self._lock = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
