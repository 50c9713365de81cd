"""The embedded consent ledger: one SQLite file, WAL, fsync on every commit.

One partition: one process owns the file, and SQLite serialises its writes anyway. The
`part` column (always 0) keeps the tables the same as PostgreSQL's.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..chain import GENESIS, ChainReport
from ..domain import ConsentEvent, SubjectState
from ..errors import ConsentAuthzError, Unavailable
from ..sqlite_files import open_database
from .codec import event_from_dict
from .ledger import (
    Changes,
    replay,
    verify_entries,
)
from .tables import Connection, LedgerTables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    part INTEGER NOT NULL DEFAULT 0 CHECK (part = 0),
    record_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('consent', 'profile')),
    body TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_subject ON ledger (subject, seq);
CREATE TABLE IF NOT EXISTS ledger_identity (id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The identity is made with the ledger (one statement: two processes opening a new file
-- at once still make one).
INSERT INTO ledger_identity (id) SELECT lower(hex(randomblob(8)))
WHERE NOT EXISTS (SELECT 1 FROM ledger_identity);
CREATE TABLE IF NOT EXISTS subject_state (
    subject TEXT PRIMARY KEY,
    part INTEGER NOT NULL DEFAULT 0 CHECK (part = 0),
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS subject_state_no_delete BEFORE DELETE ON subject_state
BEGIN SELECT RAISE(ABORT, 'projections are only ever replaced, never deleted'); END;
"""


def _add_partition_columns(conn: sqlite3.Connection) -> None:
    """A file from before partitions: its tables get the (constant) partition column."""
    for table in ("ledger", "subject_state"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "part" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN part INTEGER NOT NULL DEFAULT 0 "
                         "CHECK (part = 0)")


def _identity(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT id FROM ledger_identity ORDER BY id LIMIT 1").fetchone()
    if row is None:  # only a file opened read-only from before identities were made
        raise Unavailable("the consent ledger has no identity")
    return str(row[0])


class SqliteLedger(LedgerTables):
    """Thread-safe; one connection serialised by a lock (writes are serial in SQLite anyway)."""

    PLACEHOLDER = "?"

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self._lock = threading.Lock()
        try:
            # The ledger is the system of record: a write returns only once it is on disk.
            self._conn = open_database(path, _SCHEMA, fsync=True, read_only=read_only)
        except sqlite3.Error as exc:
            raise Unavailable(f"consent ledger cannot be opened: {exc}") from exc
        if not read_only:
            with self._tx() as conn:
                _add_partition_columns(conn)
                self._refresh_projections(conn)

    @property
    def partitions(self) -> int:
        return 1

    def _last(self, conn: Connection, part: int) -> tuple[int, str]:
        # Without the partition column: a file from before partitions opened read-only.
        row = conn.execute("SELECT seq, entry_hash FROM ledger ORDER BY seq DESC LIMIT 1"
                           ).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    @contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except ConsentAuthzError:
                raise
            except sqlite3.Error as exc:
                raise Unavailable("consent ledger unavailable") from exc

    def _append_tx(self, part: int | None) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._tx()

    def _retried(self, conn: Connection, keys: Sequence[str]) -> Any:
        marks = ", ".join("?" * len(keys))  # only placeholders, never values
        sql = ("SELECT record_id, seq, request_hash FROM ledger "  # noqa: S608
               f"WHERE idempotency_key IN ({marks}) ORDER BY seq LIMIT 1")
        return conn.execute(sql, list(keys)).fetchone()

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        with self._tx(immediate=False) as conn:
            return self._state(conn, subject, self._last(conn, 0)[0])

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        marks = ", ".join("?" * len(subjects))  # only placeholders, never values
        sql = ("SELECT subject, min(seq) AS first FROM ledger "  # noqa: S608
               f"WHERE subject IN ({marks}) GROUP BY subject ORDER BY first LIMIT 1")
        with self._tx(immediate=False) as conn:
            row = conn.execute(sql, list(subjects)).fetchone()
        return str(row[0]) if row else None

    def meta(self, key: str) -> str | None:
        with self._tx(immediate=False) as conn:
            return self._meta(conn, key)

    def identity(self) -> str:
        with self._tx(immediate=False) as conn:
            return _identity(conn)

    def head(self) -> int:
        with self._tx(immediate=False) as conn:
            return self._last(conn, 0)[0]

    def heads(self) -> tuple[int, ...]:
        return (self.head(),)

    def state_at(self, subject: str, sequence: int) -> SubjectState:
        with self._tx(immediate=False) as conn:
            rows = conn.execute(
                "SELECT seq, kind, body FROM ledger WHERE subject = ? AND seq <= ? ORDER BY seq",
                (subject, sequence)).fetchall()
        return replay(((int(seq), kind, json.loads(body)) for seq, kind, body in rows), sequence)

    def history(self, subject: str, after_sequence: int, limit: int) -> list[ConsentEvent]:
        with self._tx(immediate=False) as conn:
            rows = conn.execute(
                "SELECT body FROM ledger WHERE subject = ? AND kind = 'consent' AND seq > ? "
                "ORDER BY seq LIMIT ?", (subject, after_sequence, limit)).fetchall()
        return [event_from_dict(json.loads(r[0])) for r in rows]

    def tips(self) -> tuple[tuple[int, int, str], ...]:
        with self._tx(immediate=False) as conn:
            return ((0, *self._last(conn, 0)),)

    def verify(self, held: Sequence[tuple[int, int, str]] = ()) -> ChainReport:
        """Recompute the chain, and check the projection still matches the records: the
        projection is what decisions read, so a tampered projection is tampering too."""
        with self._tx(immediate=False) as conn:
            rows = conn.execute(
                "SELECT 0, seq, record_id, subject, kind, body, recorded_at, prev_hash, "
                "entry_hash FROM ledger ORDER BY seq").fetchall()
            projections = dict(conn.execute("SELECT subject, state FROM subject_state"))
        return verify_entries(rows, projections, held=held)

    def changes(self, after: Sequence[int], limit: int) -> Changes:
        with self._tx(immediate=False) as conn:
            identity = _identity(conn)
            head = self._last(conn, 0)[0]
            rows = conn.execute(
                "SELECT seq, subject FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?",
                (after[0], max(limit, 0))).fetchall()
        return Changes(identity, (head,), [(0, int(seq), str(subject)) for seq, subject in rows])

    def exclusive(self, partitions: Iterable[int],
                  lazy: bool = False) -> contextlib.AbstractContextManager[None]:
        # One process owns the file, and the caller already serialises its writes.
        return contextlib.nullcontext()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
