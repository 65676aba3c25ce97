"""An exclusive lock on the data folder, held by the running node.

Two nodes on one database would corrupt each other's sequence numbers; the lock also tells
admin commands whether to talk to a running node (admin socket) or open the database
themselves.  flock dies with the process, so a ``kill -9`` never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "node.lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, patience: float = 0.0) -> bool:
        """True if we now hold the lock; False if another process does.

        ``patience``: keep trying for that long. :func:`node_running` probes by taking the
        lock for an instant, so a node starting while someone asks "is it running?" (the
        CLI, a cluster waiting for it) could find it taken by the question; a starting node
        gives such a probe a moment (measured: a probe holds it for microseconds)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def node_running(data_dir: Path) -> bool:
    if not (data_dir / LOCK_FILE).exists():
        return False
    lock = DataDirLock(data_dir)
    if lock.acquire():
        lock.release()
        return False
    return True
