"""How the embedded stores open their SQLite files (shared settings, one place)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

#: The data dir's files hold personal data and keys: this user's only. SQLite gives a
#: database's -wal and -shm files the database file's permissions.
FILE_MODE = 0o600
DIR_MODE = 0o700


def open_database(path: Path, schema: str, *, fsync: bool,
                  read_only: bool = False) -> sqlite3.Connection:
    """WAL, explicit transactions, usable from the server's worker threads (callers hold a
    lock). `fsync=True` syncs every commit (synchronous=FULL); otherwise a commit survives
    a process crash but not a power loss (synchronous=NORMAL). `read_only` opens an
    existing file (an auditor's copy, or a live server's data dir) without changing it."""
    if read_only:
        if not path.is_file():
            raise sqlite3.OperationalError(f"{path} does not exist")
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        return conn
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    # Made (or kept) private before SQLite opens it, so its -wal and -shm files are too.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    with contextlib.suppress(PermissionError):  # not ours: serve's make_private says so
        os.chmod(path, FILE_MODE)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(schema)
    return conn
