"""The embedded decision log: SQLite segment files, append-only, hash-chained.

Durability: WAL with synchronous=NORMAL. A commit is in the operating system's hands
before the decision is answered, so a crash of the server process loses nothing; an
operating-system crash or power loss may lose the last commits since the last WAL sync.
`--decision-log-fsync` (synchronous=FULL) closes that window at a measured cost.

Segments (segments.py has the file names): by default the log is one file forever, as it
always was. With `max_segment_bytes`, a commit that takes the active file past that size
seals it (renamed, read-only) and the next append starts a new one; the chain runs on
across the cut, and `get`, `query` and `verify` read all segments. With `retention_days`,
`apply_retention(now)` deletes whole sealed segments whose newest entry is older than that,
after recording a retention mark (retention.py) that anchors what remains. Decision ids are
unique within a segment by constraint and across segments by construction (UUIDv7).

A read-only log sees the segments present when it was opened.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..domain import DecisionQuery, DecisionRecord
from ..errors import Unavailable
from ..sqlite_files import open_database
from .log import chain_entries
from .record import parse_stored, record_from_dict
from .retention import RetentionMark, anchor, inconsistency, load_marks, save_marks
from .segments import Layout, Sealed, seal_file, sync_directory
from .verify import BrokenEntry, Checkpoint, Problem, StoredEntry, VerifyResult, verify_entries

log = logging.getLogger("consentauthz.decisionlog")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    subject TEXT NOT NULL,
    purpose TEXT NOT NULL,
    data_category TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    caller TEXT NOT NULL,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_subject ON decisions (subject, seq);
CREATE INDEX IF NOT EXISTS decisions_by_purpose ON decisions (purpose, seq);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (time);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision log is append-only'); END;
"""

_INSERT = ("INSERT INTO decisions (seq, decision_id, time, subject, purpose, data_category, "
           "decision, reason, caller, record, prev_hash, entry_hash) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_COLUMNS = 12
#: Rows per INSERT: 12,000 parameters, under SQLite's default limit of 32,766.
_ROWS_PER_STATEMENT = 1_000
_ROW = "(" + ", ".join("?" * _COLUMNS) + ")"


@functools.lru_cache(maxsize=64)
def _insert(rows: int) -> str:
    """One INSERT of `rows` rows (cached: SQLite's statement cache is keyed by the text)."""
    return _INSERT.removesuffix(_ROW) + ", ".join([_ROW] * rows)


_ALL_UP_TO = ("SELECT seq, decision_id, time, subject, purpose, data_category, decision, "
              "reason, caller, record, prev_hash, entry_hash FROM decisions WHERE seq <= ? "
              "ORDER BY seq")
_INDEXED = ("decision_id", "time", "subject", "purpose", "data_category", "decision",
            "reason", "caller")

#: After a seal attempt fails (a reader has the active file open), appends do not retry it
#: for this long: each attempt costs a WAL checkpoint.
_SEAL_RETRY_SECONDS = 1.0


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


class SqliteDecisionLog:
    def __init__(self, path: Path, fsync: bool = False, read_only: bool = False, *,
                 max_segment_bytes: int | None = None,
                 retention_days: float | None = None) -> None:
        """`path`: an existing directory (the log is `decisions.db` in it) or the active
        file's path (as `data/decisions.db` always was)."""
        if max_segment_bytes is not None and max_segment_bytes < 1:
            raise ValueError("max_segment_bytes must be positive")
        if retention_days is not None and retention_days <= 0:
            raise ValueError("retention_days must be positive")
        self._layout = Layout.at(path)
        self._fsync = fsync
        self._read_only = read_only
        self._max_bytes = max_segment_bytes
        self._retention = timedelta(days=retention_days) if retention_days else None
        self._lock = threading.Lock()
        self._retention_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._readers: dict[Path, sqlite3.Connection] = {}
        self._seal_after = 0.0
        try:
            self._marks = load_marks(self._layout.manifest)
            self._sealed = self._find_segments()
            self._conn = self._open_active()
            self._page_size = (int(self._conn.execute("PRAGMA page_size").fetchone()[0])
                               if self._conn is not None else 0)
            self._last_seq, self._last_hash, self._last_time = self._find_head()
        except (sqlite3.Error, OSError, ValueError) as exc:
            self._close_connections()
            raise Unavailable(f"decision log cannot be opened: {exc}") from exc

    # -- opening --------------------------------------------------------------------------

    def _find_segments(self) -> list[Sealed]:
        first_kept = anchor(self._marks)[0] + 1
        kept = []
        for s in self._layout.sealed():
            if s.last >= first_kept:
                kept.append(s)
            elif not self._read_only:
                # A retention run recorded its mark and stopped before deleting this.
                s.path.unlink(missing_ok=True)
        return kept

    def _open_active(self) -> sqlite3.Connection | None:
        if self._read_only and not self._layout.active.exists() and self._sealed:
            return None  # stopped between sealing and starting the next segment
        return open_database(self._layout.active, _SCHEMA, fsync=self._fsync,
                             read_only=self._read_only)

    def _find_head(self) -> tuple[int, str, datetime | None]:
        for conn, _ in self._newest_first():
            row = conn.execute("SELECT seq, entry_hash, time FROM decisions "
                               "ORDER BY seq DESC LIMIT 1").fetchone()
            if row:
                return int(row[0]), str(row[1]), datetime.fromisoformat(row[2])
        seq, prev = anchor(self._marks)
        return seq, prev, None

    def _reader(self, segment: Sealed) -> sqlite3.Connection:
        conn = self._readers.get(segment.path)
        if conn is None:
            conn = open_database(segment.path, "", fsync=False, read_only=True)
            self._readers[segment.path] = conn
        return conn

    def _newest_first(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """Each segment's connection and the first sequence it can hold."""
        if self._conn is not None:
            yield self._conn, self._sealed[-1].last + 1 if self._sealed else 0
        for s in reversed(self._sealed):
            yield self._reader(s), s.first

    def _writer(self) -> sqlite3.Connection:
        if self._read_only:
            raise Unavailable("decision log is open read-only")
        if self._conn is None:  # a seal failed to start the next segment; try again
            self._conn = open_database(self._layout.active, _SCHEMA, fsync=self._fsync)
        return self._conn

    # -- the DecisionLog contract ---------------------------------------------------------

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        with self._lock:
            entries = chain_entries(records, self._last_seq, self._last_hash)
            if not entries:
                return []
            out = [r for r, _ in entries]
            values: list[object] = []
            for r, text in entries:
                values += (r.sequence, r.decision_id, _iso(r.time), r.subject, r.purpose,
                           r.data_category, r.decision.value, r.reason.value, r.caller, text,
                           r.prev_hash, r.entry_hash)
            try:
                conn = self._writer()
                if len(entries) <= _ROWS_PER_STATEMENT:
                    # One statement is one transaction (all rows or none), and one call
                    # into SQLite instead of three (BEGIN, INSERT, COMMIT): each call lets
                    # go of the GIL and, under load, costs two thread switches.
                    conn.execute(_insert(len(entries)), values)
                else:
                    self._insert_in_chunks(conn, values)
            except sqlite3.Error as exc:
                raise Unavailable("decision log unavailable") from exc
            last = out[-1]
            self._last_seq, self._last_hash, self._last_time = (
                last.sequence, last.entry_hash, last.time)
            self._maybe_seal()
            return out

    @staticmethod
    def _insert_in_chunks(conn: sqlite3.Connection, values: list[object]) -> None:
        step = _ROWS_PER_STATEMENT * _COLUMNS
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(values), step):
                chunk = values[i:i + step]
                conn.execute(_insert(len(chunk) // _COLUMNS), chunk)
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (busy, I/O) leaves the transaction open; every later BEGIN
            # would fail until it is rolled back.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def get(self, decision_id: str) -> DecisionRecord | None:
        with self._lock:
            try:
                for conn, _ in self._newest_first():
                    row = conn.execute("SELECT record, prev_hash, entry_hash FROM decisions "
                                       "WHERE decision_id = ?", (decision_id,)).fetchone()
                    if row:
                        return record_from_dict(parse_stored(*row))
            except sqlite3.Error as exc:
                raise Unavailable("decision log unavailable") from exc
        return None

    def query(self, query: DecisionQuery) -> list[DecisionRecord]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("subject", query.subject), ("purpose", query.purpose),
                              ("data_category", query.data_category),
                              ("reason", query.reason), ("caller", query.caller)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if query.decision is not None:
            where.append("decision = ?")
            args.append(query.decision.value)
        if query.start is not None:
            where.append("time >= ?")
            args.append(_iso(query.start))
        if query.end is not None:
            where.append("time < ?")
            args.append(_iso(query.end))
        if query.before_sequence:
            where.append("seq < ?")
            args.append(query.before_sequence)
        sql = "SELECT record, prev_hash, entry_hash FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        found: list[tuple[str, str, str]] = []
        with self._lock:
            try:
                # Segments hold disjoint, ascending ranges: newest segment first, each
                # newest first, concatenates to the whole log newest first.
                for conn, first in self._newest_first():
                    if query.before_sequence and first >= query.before_sequence:
                        continue
                    rows = conn.execute(sql, [*args, query.limit - len(found)]).fetchall()
                    found += rows
                    if 0 <= query.limit <= len(found):
                        break
            except sqlite3.Error as exc:
                raise Unavailable("decision log unavailable") from exc
        return [record_from_dict(parse_stored(*r)) for r in found]

    def close(self) -> None:
        with self._lock:
            self._close_connections()

    def _close_connections(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for conn in self._readers.values():
            conn.close()
        self._readers.clear()

    # -- rotation -------------------------------------------------------------------------

    def rotate(self) -> bool:
        """Seal the active segment now (if it holds anything); True if it was sealed."""
        with self._lock:
            self._writer()
            try:
                return self._seal()
            except (sqlite3.Error, OSError) as exc:
                raise Unavailable(f"decision log segment cannot be sealed: {exc}") from exc

    def _maybe_seal(self) -> None:
        """After a commit: seal the active segment if it outgrew max_segment_bytes. The
        entries are committed already, so a failure here is logged, never raised."""
        if self._max_bytes is None or self._conn is None:
            return
        if time.monotonic() < self._seal_after:
            return
        try:
            pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
            if pages * self._page_size <= self._max_bytes:
                return
            sealed = self._seal()
        except (sqlite3.Error, OSError):
            log.warning("could not seal the decision-log segment %s", self._layout.active,
                        exc_info=True)
            sealed = False
        if not sealed:
            self._seal_after = time.monotonic() + _SEAL_RETRY_SECONDS

    def _seal(self) -> bool:
        conn = self._conn
        assert conn is not None
        first, last = conn.execute("SELECT min(seq), max(seq) FROM decisions").fetchone()
        if first is None:
            return False
        # Leave WAL mode first: the sealed file must be complete in itself (no -wal beside
        # it) and readable read-only without a shared-memory file. SQLite refuses while
        # another connection has the file open, and renaming it then would strand that
        # reader's WAL, so a busy file stays active until the next attempt.
        conn.execute("PRAGMA busy_timeout=0")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            mode = "" if busy else str(conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0])
        except sqlite3.Error:
            mode = ""
        if mode.lower() != "delete":
            conn.execute("PRAGMA busy_timeout=5000")
            return False
        conn.close()
        self._conn = None
        target = self._layout.sealed_path(int(first), int(last))
        try:
            seal_file(self._layout.active, target)
            self._sealed.append(Sealed(int(first), int(last), target))
        finally:
            self._conn = open_database(self._layout.active, _SCHEMA, fsync=self._fsync)
        return True

    # -- retention ------------------------------------------------------------------------

    def retention_marks(self) -> list[RetentionMark]:
        with self._lock:
            return list(self._marks)

    def apply_retention(self, now: datetime) -> RetentionMark | None:
        """Delete the sealed segments whose newest entry is older than retention_days
        before `now` (oldest first, stopping at the first one still needed: the chain
        may only lose its start). Returns the mark recorded, or None if nothing was due.

        Sealed segments never change, so they are read without holding up appends; only
        recording the mark and deleting the files takes the log's lock."""
        if self._retention is None:
            return None
        cutoff = _iso(now - self._retention)
        with self._retention_lock:  # one run at a time: the expired prefix stays put
            with self._lock:
                self._writer()
                sealed = list(self._sealed)
                last_hash = anchor(self._marks)[1]
            try:
                expired, count, digest, last_hash = _scan_expired(sealed, cutoff, last_hash)
                if not expired:
                    return None
                with self._lock:
                    return self._remove(expired, count, digest, last_hash, now)
            except (sqlite3.Error, OSError) as exc:
                raise Unavailable(f"decision-log retention failed: {exc}") from exc

    def _remove(self, expired: list[Sealed], count: int, digest: str, last_hash: str,
                now: datetime) -> RetentionMark:
        first_kept = expired[-1].last + 1
        if self._prev_hash_of(first_kept, len(expired)) != last_hash:
            raise Unavailable("retention refused: the entries kept do not link to the "
                              "entries it would remove; run verify")
        mark = RetentionMark(first_kept, last_hash, count, digest, now,
                             tuple(s.path.name for s in expired))
        # The mark goes to disk before any segment goes: a crash in between leaves
        # segments the mark already covers, which the next open deletes.
        save_marks(self._layout.manifest, [*self._marks, mark])
        self._marks.append(mark)
        self._sealed = self._sealed[len(expired):]
        for s in expired:
            reader = self._readers.pop(s.path, None)
            if reader is not None:
                reader.close()
            s.path.unlink(missing_ok=True)
        sync_directory(self._layout.active.parent)
        return mark

    def _prev_hash_of(self, sequence: int, segment: int) -> str:
        """The prev_hash of entry `sequence`, which is the first entry of the segment at
        index `segment` (or the next entry the log will write)."""
        conn = (self._reader(self._sealed[segment]) if segment < len(self._sealed)
                else self._conn)
        assert conn is not None
        row = conn.execute("SELECT prev_hash FROM decisions WHERE seq = ?",
                           (sequence,)).fetchone()
        if row:
            return str(row[0])
        return self._last_hash if sequence == self._last_seq + 1 else ""

    # -- verification ---------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The current head, for a third party to keep and hand back to verify()."""
        with self._lock:
            return Checkpoint(self._last_seq, self._last_hash,
                              self._last_seq - anchor(self._marks)[0], self._last_time)

    def verify(self, checkpoints: Sequence[Checkpoint] = ()) -> VerifyResult:
        """Recompute the whole chain from the stored records (see verify.py), across all
        segments, from genesis or the newest retention mark; confirm held checkpoints.

        Reads through its own read-only connections, so appends go on meanwhile; entries
        appended after the call began are not checked."""
        with self._lock:
            marks, head = list(self._marks), self._last_seq
            files = [s.path for s in self._sealed]
            if self._layout.active.exists():
                files.append(self._layout.active)
            conns: list[sqlite3.Connection] = []
            try:
                for f in files:
                    conns.append(open_database(f, "", fsync=False, read_only=True))
            except sqlite3.Error as exc:
                for c in conns:
                    c.close()
                raise Unavailable(f"decision log cannot be read: {exc}") from exc
        try:
            anchor_seq, anchor_hash = anchor(marks)
            problem = inconsistency(marks)
            if problem:
                return VerifyResult(False, 0, anchor_seq, anchor_hash, anchor_seq,
                                    anchor_hash, BrokenEntry(anchor_seq + 1, "",
                                                             Problem.RETENTION, problem))
            return verify_entries(self._stored(conns, head), anchor_sequence=anchor_seq,
                                  anchor_hash=anchor_hash, checkpoints=checkpoints)
        except sqlite3.Error as exc:
            raise Unavailable(f"decision log cannot be read: {exc}") from exc
        finally:
            for c in conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()

    @staticmethod
    def _stored(conns: Sequence[sqlite3.Connection], head: int) -> Iterator[StoredEntry]:
        for conn in conns:
            for row in conn.execute(_ALL_UP_TO, (head,)):
                columns: dict[str, object] = dict(zip(_INDEXED, row[1:9], strict=True))
                columns["prev_hash"], columns["entry_hash"] = row[10], row[11]
                yield StoredEntry(int(row[0]), row[9], columns)


def _scan_expired(sealed: Sequence[Sealed], cutoff: str, last_hash: str
                  ) -> tuple[list[Sealed], int, str, str]:
    """The oldest segments whose newest entry is before `cutoff`, with the count, digest
    and last entry hash of what they hold (see RetentionMark)."""
    expired: list[Sealed] = []
    digest = hashlib.sha256()
    count = 0
    for s in sealed:
        conn = open_database(s.path, "", fsync=False, read_only=True)
        try:
            newest = conn.execute("SELECT max(time) FROM decisions").fetchone()[0]
            if newest is not None and newest >= cutoff:
                break
            for (h,) in conn.execute("SELECT entry_hash FROM decisions ORDER BY seq"):
                digest.update(f"{h}\n".encode("ascii"))
                count, last_hash = count + 1, str(h)
        finally:
            conn.close()
        expired.append(s)
    return expired, count, digest.hexdigest(), last_hash
