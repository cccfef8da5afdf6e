"""One daemon per archive and per incoming folder: an flock on each folder itself.

The kernel drops an flock when its holder dies, even by SIGKILL, so a crash never
leaves a stale lock behind, and no lock file has to live inside the archive.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from dicom_archive.archive.daemonstate import is_locked
from dicom_archive.errors import ArchiveError, DaemonAlreadyRunning

__all__ = ["FolderLock", "is_locked"]


class FolderLock:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    def acquire(self, holder: str = "", wait: float = 1.0) -> None:
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ArchiveError(f"{self.folder}: cannot open the folder ({exc.strerror})") from exc
        # A short retry: `status` probes the lock for an instant.
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise DaemonAlreadyRunning(self.folder, holder) from None
                time.sleep(0.05)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
