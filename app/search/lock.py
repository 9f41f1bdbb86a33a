"""One writer per collection, across processes: an exclusive `flock` on `<collection>/writer.lock`.

A writing server holds the lock of every collection it has open; a batch build holds it for its
whole run. Whoever comes second is refused at once (the builder exits with one line, the server
answers writes with 409) instead of both writing and leaving the store and the index out of step.
The kernel drops the lock when its holder dies, so a killed process never leaves a stale lock.
Read-only replicas take no lock: they never write.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from app.core.errors import CollectionLocked

LOCK_FILE = "writer.lock"


class CollectionLock:
    def __init__(self, folder: Path, holder: str) -> None:
        self.path = folder / LOCK_FILE
        self.holder = holder  # "server" or "builder": said to whoever is refused
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this object holds it now."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        info = json.dumps({"holder": self.holder, "pid": os.getpid(), "since": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except BaseException:  # a full disk: never keep a descriptor (and its lock) nobody releases
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def refusal(self, name: str, advice: str) -> CollectionLocked:
        """The error for someone refused this lock: who holds collection `name`, and what to do."""
        return CollectionLocked(f"index {name!r} is being written by {self.describe_holder()}; {advice}")

    def describe_holder(self) -> str:
        """Who holds it, as its holder wrote (best effort: the file may be mid-write)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        if not info:
            return "another process"
        return f"a {info.get('holder', 'process')} (pid {info.get('pid', '?')})"
