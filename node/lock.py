"""An exclusive lock on the data folder, held by the running node.

Two nodes on one database would corrupt each other's sequence numbers; the lock also tells
admin commands whether to talk to a running node (admin socket) or open the database
themselves.  flock dies with the process, so a ``kill -9`` never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "node.lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if we now hold the lock; False if another process does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
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
