"""One data dir, one server: an OS lock on a file in the data dir, held while it serves.

Two servers on one data dir would both write its SQLite files (and the second one, finding
them locked, would answer every call UNAVAILABLE). The lock is `flock` on `serve.lock`,
which holds the pid of the server that has it. The kernel releases it when that process
ends, however it ends, so there is never a stale lock to clean up. Offline readers (audit
--data-dir, policy diff) open the files read-only and take no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from pathlib import Path

from .errors import ConfigError

#: The data dir's mode (sqlite_files.py makes each database file 0600).
DIR_MODE = 0o700

log = logging.getLogger("consentauthz")


def make_private(data_dir: Path) -> int:
    """The data dir and everything in it this user's only (docs/security.md): the dir
    made 0700 (created so, or tightened), and any file or dir in it that group or others
    could read (a data dir from a release before this, or files copied in) stripped of
    those bits. Returns how many were tightened. Symlinks are left alone, and so is what
    this user may not change (a mounted volume's root owned by another user, as
    Kubernetes' fsGroup makes it): one WARNING names how many such paths stay open."""
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tightened = 0
    kept: list[Path] = []
    for path in (data_dir, *data_dir.rglob("*")):
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # gone meanwhile (a WAL file checkpointed away)
            continue
        if stat.S_ISLNK(mode) or not mode & 0o077:
            continue
        try:
            os.chmod(path, stat.S_IMODE(mode) & ~0o077)
        except PermissionError:
            kept.append(path)
            continue
        tightened += 1
    if tightened:
        log.warning("data dir %s: %d files and dirs were readable by others; made private "
                    "to this user", data_dir, tightened)
    if kept:
        log.warning("data dir %s: %d paths are readable by others and not this user's to "
                    "change (first: %s): give the data dir to the serving user, or make "
                    "them private", data_dir, len(kept), kept[0])
    return tightened

LOCK_FILE = "serve.lock"


class DataDirLock:
    """Held from `acquire` until `release` (or until the process ends)."""

    __slots__ = ("_fd", "path")

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """The data dir's lock, or ConfigError naming the process that has it."""
        path = data_dir / LOCK_FILE
        try:
            # Not truncated on open: the file says who holds the lock until we hold it.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"data dir {data_dir}: cannot open {path}: "
                              f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(f"data dir {data_dir} is in use by another consentauthz "
                              f"server ({holder}): stop it, or give this one its own "
                              "--data-dir") from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"data dir {data_dir}: cannot lock {path}: "
                              f"{exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.ftruncate(fd, 0)  # no pid left behind that could be taken for a live one
        finally:
            os.close(fd)  # closing the last descriptor releases the flock


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says; it writes its pid right after taking it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f"pid {text}"
        time.sleep(0.025)
    return "pid unknown"
