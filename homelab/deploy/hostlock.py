"""One deploy per host at a time: ``fcntl.flock`` on ``HOMELAB_STATE/hosts/<host>/deploy.lock``.

The holder writes its pid and command into the file, so a second deploy can say who holds it.
The kernel drops the lock when the holder exits, however it exits: no stale locks.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from ..errors import HomelabError
from .paths import HostPaths


class HostBusy(HomelabError):
    pass


class HostLock:
    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self._fd: int | None = None
        self._depth = 0
        self.taken_again = 0
        """How often it was taken again while held: an install or rollback under a deploy's lock."""

    @property
    def path(self) -> Path:
        return self.paths.lock_file

    def acquire(self) -> None:
        if self._fd is not None:  # re-entrant within one process (deploy -> install)
            self._depth += 1
            self.taken_again += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HostBusy(
                f"another deploy of host {self.paths.host!r} is running ({holder}); wait for it to "
                f"finish (lock: {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}: {command}\n".encode(), 0)
        self._fd = fd
        self._depth = 1
        self.taken_again = 0

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_held: dict[str, HostLock] = {}


def deploy_lock(paths: HostPaths) -> HostLock:
    """The process-wide lock object for a host (the doit chain takes it once, install re-enters)."""
    key = str(paths.base)
    if key not in _held:
        _held[key] = HostLock(paths)
    return _held[key]
